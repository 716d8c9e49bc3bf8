"""Classical baselines (scikit-learn) that each CNN in the beyond-images studies must beat.

- Text: TF-IDF of word 1-2-grams and character 2-5-grams, logistic regression.
- Speech: MFCC statistics (mean and standard deviation over time of the
  first 20 MFCCs, computed from the same log-mel spectrogram the CNN sees
  via an orthonormal DCT-II) with logistic regression or an RBF SVM.
- Tables: scikit-learn's HistGradientBoostingClassifier with native
  categorical splits on the same preprocessed columns.

Each returns an unfitted scikit-learn estimator (or, for MFCCs, features),
so a study fits it on exactly the rows its CNN trained on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch

from cnnlab._util import CnnlabError
from cnnlab.data.audio import DEFAULT_MEL, LogMel, MelConfig
from cnnlab.data.text import tokenize


@contextmanager
def limited_threads():
    """Run scikit-learn/SciPy code with as many BLAS/OpenMP threads as torch uses.

    Torch's count follows ``CNNLAB_THREADS``, but OpenBLAS and OpenMP keep
    their own. On a busy 2-core machine their spin-waiting threads made a
    small logistic regression 17 times slower (22 s against 1.3 s with one
    thread), so every baseline fit in the studies runs inside this.
    """
    from threadpoolctl import threadpool_limits

    env = os.environ.get("CNNLAB_THREADS")
    threads = int(env) if env else torch.get_num_threads()
    with threadpool_limits(limits=max(1, threads)):
        yield


def tfidf_logistic_regression(*, C: float = 4.0, seed: int = 0, char_ngrams: bool = True):
    """TF-IDF (word 1-2-grams + char_wb 2-5-grams, sublinear tf) -> logistic regression.

    Words come from :func:`cnnlab.data.text.tokenize`, the CNN's own
    tokeniser, so both models see the same tokens. The vocabularies are
    learned in ``fit``, i.e. from the training texts only. ``C`` is the
    inverse L2 strength; 4 was the best of 1, 2, 4, 8 on a validation split
    carved from the training part of MR's first fold (never on a test fold).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    parts = [("words", TfidfVectorizer(tokenizer=tokenize, token_pattern=None, lowercase=False,
                                       ngram_range=(1, 2), sublinear_tf=True))]
    if char_ngrams:
        parts.append(("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5),
                                               lowercase=True, sublinear_tf=True, min_df=2)))
    return Pipeline([
        ("tfidf", FeatureUnion(parts)),
        ("classify", LogisticRegression(C=C, max_iter=3000, random_state=seed)),
    ])


def dct_matrix(n_mfcc: int, n_mels: int) -> torch.Tensor:
    """Orthonormal DCT-II ``[n_mfcc, n_mels]``: row k is ``cos(pi * k * (m + 0.5) / n_mels)``,
    scaled by ``sqrt(1 / n_mels)`` for k = 0 and ``sqrt(2 / n_mels)`` otherwise (as
    ``scipy.fft.dct(..., type=2, norm="ortho")``)."""
    if not 1 <= n_mfcc <= n_mels:
        raise CnnlabError(f"n_mfcc must be in 1..n_mels={n_mels}, got {n_mfcc}")
    k = torch.arange(n_mfcc, dtype=torch.float64)[:, None]
    m = torch.arange(n_mels, dtype=torch.float64)[None, :]
    basis = torch.cos(torch.pi * k * (m + 0.5) / n_mels) * (2.0 / n_mels) ** 0.5
    basis[0] /= 2.0 ** 0.5
    return basis.float()


@torch.no_grad()
def mfcc_statistics(waveforms: torch.Tensor, mel: MelConfig = DEFAULT_MEL, n_mfcc: int = 20,
                    batch_size: int = 256) -> np.ndarray:
    """Per-clip MFCC means and standard deviations: ``[N, 2 * n_mfcc]`` float32.

    MFCCs are the DCT of the log-mel spectrogram over the mel axis. Frames
    whose loudest band is within 10 dB of the log floor - the zero padding
    that makes clips one length, and frames that only graze the clip's edge
    - are left out of the statistics, so a short clip is not summarised
    mostly by its padding.
    """
    front_end = LogMel(mel)
    basis = dct_matrix(n_mfcc, mel.n_mels)
    floor = float(np.log(mel.log_floor))
    rows = []
    for start in range(0, len(waveforms), batch_size):
        log_mel = front_end(waveforms[start:start + batch_size].float())  # [B, n_mels, T]
        mfcc = torch.einsum("km,bmt->bkt", basis, log_mel)  # [B, n_mfcc, T]
        voiced = (log_mel.amax(dim=1) > floor + np.log(10.0)).float()  # [B, T]; 10 dB
        # A clip of total silence keeps all frames rather than none.
        voiced = torch.where(voiced.sum(1, keepdim=True) > 0, voiced, torch.ones_like(voiced))
        weight = voiced[:, None, :] / voiced.sum(dim=1)[:, None, None]
        mean = (mfcc * weight).sum(dim=2)
        std = (((mfcc - mean[:, :, None]) ** 2 * weight).sum(dim=2)).sqrt()
        rows.append(torch.cat([mean, std], dim=1))
    return torch.cat(rows).numpy().astype(np.float32)


def mfcc_classifier(kind: str = "logistic", *, seed: int = 0):
    """Standardise MFCC statistics, then logistic regression (``C=1``) or an RBF SVM (``C=10``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if kind == "logistic":
        model = LogisticRegression(C=1.0, max_iter=5000, random_state=seed)
    elif kind == "svm":
        model = SVC(C=10.0, kernel="rbf", gamma="scale", random_state=seed)
    else:
        raise CnnlabError(f"MFCC classifier {kind!r} is unknown; use 'logistic' or 'svm'")
    return Pipeline([("scale", StandardScaler()), ("classify", model)])


def gradient_boosting(categorical: Sequence[bool], *, seed: int = 0, max_iter: int = 200,
                      learning_rate: float = 0.05):
    """HistGradientBoostingClassifier with native categorical splits where ``categorical``.

    Feed it :meth:`EncodedTable.packed` rows: category codes are small
    non-negative integers, as the estimator requires; code 0 (unknown) is
    an ordinary category to it. Early stopping is off so that the number of
    trees is the same for every split size.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    mask = np.asarray(categorical, dtype=bool)
    return HistGradientBoostingClassifier(
        categorical_features=mask if mask.any() else None, max_iter=max_iter,
        learning_rate=learning_rate, early_stopping=False, random_state=seed,
    )
