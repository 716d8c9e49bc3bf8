"""Models and baselines for text, audio and tables: shapes, invariances, independent checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.data.audio import MelConfig
from cnnlab.models import build_model
from cnnlab.models.audio_cnn import AudioCNN
from cnnlab.models.baselines import (
    dct_matrix,
    gradient_boosting,
    mfcc_statistics,
    tfidf_logistic_regression,
)
from cnnlab.models.tabular import TabularCNN1d, TabularMLP
from cnnlab.models.text_cnn import TextCNN, max_norm_


def test_text_cnn_has_kims_shape_and_parameter_count():
    model = build_model("text_cnn", vocab_size=1000, num_classes=2)
    logits = model(torch.randint(2, 1000, (4, 30)))
    assert logits.shape == (4, 2)
    convolutions = sum(300 * 100 * w + 100 for w in (3, 4, 5))
    assert sum(p.numel() for p in model.parameters()) == 1000 * 300 + convolutions + 300 * 2 + 2


def test_text_cnn_prediction_does_not_depend_on_padding_or_batch_mates():
    torch.manual_seed(0)
    model = TextCNN(50, 3, embedding_dim=8, maps=4).eval()
    ids = torch.randint(2, 50, (3, 12))
    ids[0, 4:] = 0
    ids[1, 1:] = 0  # a one-word sentence, shorter than every filter
    logits = model(ids)
    padded = torch.cat([ids, torch.zeros(3, 30, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded), logits)
    torch.testing.assert_close(model(ids[1:2]), logits[1:2])


def test_max_norm_caps_rows_and_leaves_small_rows_alone():
    linear = torch.nn.Linear(4, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[3.0, 4.0, 0, 0], [0.1, 0, 0, 0]]))
    max_norm_(linear, 3.0)
    torch.testing.assert_close(linear.weight.norm(dim=1), torch.tensor([3.0, 0.1]))


def test_audio_cnn_takes_waveforms_and_returns_logits():
    model = AudioCNN(6, MelConfig(n_mels=16), channels=(4, 8, 8, 8))
    assert model(torch.randn(3, 8000)).shape == (3, 6)
    assert model.spectrogram(torch.randn(3, 8000)).shape == (3, 1, 16, 101)
    with pytest.raises(CnnlabError, match="n_mels >= 8"):
        AudioCNN(6, MelConfig(n_mels=4))


def test_tabular_models_split_numerics_and_codes():
    packed = torch.tensor([[0.5, -1.0, 1, 0], [0.0, 2.0, 2, 3]])  # 2 numerics, 2 columns of codes
    mlp = TabularMLP(2, [3, 4], num_classes=2)
    cnn = TabularCNN1d(2, [3, 4], num_classes=2)
    assert mlp(packed).shape == (2, 2) and cnn(packed).shape == (2, 2)
    vector = cnn.row_vector(packed)
    # numerics, one-hot of 3 (code 1), one-hot of 4 (code 0 = unknown)
    assert vector[0].tolist() == [0.5, -1.0, 0, 1, 0, 1, 0, 0, 0]
    reordered = TabularCNN1d(2, [3, 4], num_classes=2, column_order=list(range(8, -1, -1)))
    assert reordered.row_vector(packed)[0].tolist() == vector[0].flip(0).tolist()
    with pytest.raises(CnnlabError, match="permutation"):
        TabularCNN1d(2, [3, 4], num_classes=2, column_order=[0, 0, 1])


def test_dct_matches_scipy_orthonormal_dct():
    from scipy.fft import dct

    values = np.random.default_rng(0).standard_normal(40)
    np.testing.assert_allclose(dct_matrix(13, 40).double().numpy() @ values,
                               dct(values, type=2, norm="ortho")[:13], atol=1e-5)


def test_mfcc_statistics_ignore_padding_silence():
    torch.manual_seed(0)
    clip = 0.3 * torch.randn(1, 2000)
    padded = torch.zeros(1, 8000)
    padded[:, 3000:5000] = clip
    short, long = mfcc_statistics(clip), mfcc_statistics(padded)
    assert short.shape == (1, 40)
    # the same voiced frames bar a few at the clip's edges
    np.testing.assert_allclose(short[0, :20], long[0, :20], rtol=0.05, atol=0.3)


def test_baselines_fit_and_predict():
    texts = ["good film", "great acting", "bad plot", "awful film"] * 5
    labels = [1, 1, 0, 0] * 5
    model = tfidf_logistic_regression().fit(texts, labels)
    assert model.predict(["good acting"]).tolist() == [1]

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.standard_normal(200), rng.integers(0, 3, 200)])
    y = (X[:, 1] == 2).astype(int)
    boosting = gradient_boosting([False, True], max_iter=20).fit(X, y)
    assert (boosting.predict(X) == y).mean() > 0.95
