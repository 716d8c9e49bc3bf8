"""Audio data: WAV reading and its errors, readers, log-mel against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnnlab._util import CnnlabError
from cnnlab.data.audio import (
    LogMel,
    MelConfig,
    TimeShiftNoise,
    center_fit,
    fsdd_split,
    load_waveforms,
    mel_filter_bank,
    read_audio_csv,
    read_audio_folder,
    read_fsdd,
    read_wav,
)

from .conftest import write_tone


def _reference_filter_bank(sample_rate, n_fft, n_mels, f_min, f_max):
    """The mel filter bank written out from its definition, one weight at a time."""
    def mel(hz):
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    low, high = mel(f_min), mel(f_max)
    edges = [hz(low + (high - low) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    bank = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sample_rate / n_fft
            if left < f <= centre:
                weight = (f - left) / (centre - left)
            elif centre < f < right:
                weight = (right - f) / (right - centre)
            else:
                weight = 0.0
            bank[m, k] = weight * 2.0 / (right - left)
    return bank


def _reference_log_mel(signal, config):
    """Centred frames with zero padding, periodic Hann window, |rfft|^2, mel, log (NumPy)."""
    n_fft, hop = config.n_fft, config.hop_length
    padded = np.concatenate([np.zeros(n_fft // 2), signal, np.zeros(n_fft // 2)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = 1 + len(signal) // hop
    power = np.stack([np.abs(np.fft.rfft(padded[t * hop:t * hop + n_fft] * window)) ** 2
                      for t in range(frames)], axis=1)
    bank = _reference_filter_bank(config.sample_rate, n_fft, config.n_mels, config.f_min,
                                  config.upper_hz)
    return np.log(bank @ power + config.log_floor)


@pytest.mark.parametrize("config", [
    MelConfig(),
    MelConfig(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, f_min=0.0, f_max=7600.0),
])
def test_mel_filter_bank_matches_its_definition(config):
    expected = _reference_filter_bank(config.sample_rate, config.n_fft, config.n_mels,
                                      config.f_min, config.upper_hz)
    np.testing.assert_allclose(mel_filter_bank(config).numpy(), expected, rtol=1e-5, atol=1e-9)


def test_mel_filter_bank_matches_librosa():
    librosa = pytest.importorskip("librosa", reason="librosa is an optional cross-check")
    config = MelConfig()
    expected = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft,
                                   n_mels=config.n_mels, fmin=config.f_min,
                                   fmax=config.upper_hz, htk=True, norm="slaney")
    np.testing.assert_allclose(mel_filter_bank(config).numpy(), expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("samples", [8000, 4321, 257])
def test_log_mel_shape_and_values_match_a_numpy_computation(samples):
    config = MelConfig()
    rng = np.random.default_rng(samples)
    t = np.arange(samples) / config.sample_rate
    signal = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(samples)
    result = LogMel(config)(torch.tensor(signal[None, :], dtype=torch.float32))[0].numpy()

    assert result.shape == (config.n_mels, config.frames(samples))
    # float32 STFT against float64 NumPy; log values of order 1-10
    np.testing.assert_allclose(result, _reference_log_mel(signal, config), rtol=1e-3, atol=2e-3)


def test_log_mel_puts_a_tone_in_the_right_band():
    config = MelConfig()
    t = np.arange(8000) / 8000
    tone = torch.tensor(np.sin(2 * np.pi * 1000 * t)[None, :], dtype=torch.float32)
    band_energy = LogMel(config)(tone)[0].mean(dim=1)
    centres = _reference_filter_bank(8000, 256, 40, 20.0, 4000.0).argmax(axis=1) * 8000 / 256
    assert abs(centres[int(band_energy.argmax())] - 1000) < 100


def test_read_wav_decodes_mono_float(tmp_path):
    path = write_tone(tmp_path / "a.wav", 440, seconds=0.25)
    samples, rate = read_wav(path)
    assert rate == 8000 and samples.dtype == np.float32 and samples.shape == (2000,)
    resampled, rate = read_wav(path, sample_rate=16000)
    assert rate == 16000 and len(resampled) == 4000


def test_truncated_wav_is_an_error_naming_the_file(tmp_path):
    whole = write_tone(tmp_path / "whole.wav", 440).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CnnlabError, match=r"cut\.wav is truncated: its header declares \d+ "
                                          r"bytes of audio but only \d+"):
        read_wav(cut)


@pytest.mark.parametrize("content, message", [
    (b"not audio at all" * 4, r"cannot decode audio file .*junk\.wav"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", r"junk\.wav is truncated or damaged: no 'data' chunk"),
])
def test_unreadable_audio_is_an_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "junk.wav"
    path.write_bytes(content)
    with pytest.raises(CnnlabError, match=message):
        read_wav(path)


def test_missing_audio_file_is_an_error(tmp_path):
    with pytest.raises(CnnlabError, match=r"nope\.wav does not exist"):
        read_wav(tmp_path / "nope.wav")


def test_folder_reader_takes_labels_from_file_names(tone_folder):
    corpus = read_audio_folder(tone_folder)
    assert corpus.classes == ["high", "low"]
    assert corpus.class_counts() == {"high": 10, "low": 10}

    (tone_folder / "stray.wav").write_bytes((tone_folder / "low_0.wav").read_bytes())
    with pytest.raises(CnnlabError, match=r"1 of 21 audio files .* do not match"):
        read_audio_folder(tone_folder, pattern=r"(?P<label>[a-z]+)_\d+\.wav", strict=True)
    with pytest.raises(CnnlabError, match=r"no named group \(\?P<label>"):
        read_audio_folder(tone_folder, pattern=r"([a-z]+)_\d+\.wav")


def test_csv_reader_resolves_relative_paths_and_reports_bad_rows(tone_folder):
    good = tone_folder / "labels.csv"
    good.write_text("path,label\nlow_0.wav,quiet\nhigh_0.wav,loud\n")
    corpus = read_audio_csv(good)
    assert corpus.classes == ["loud", "quiet"] and corpus.paths[0] == tone_folder / "low_0.wav"

    bad = tone_folder / "bad.csv"
    bad.write_text("path,label\nlow_0.wav,quiet\nmissing.wav,loud\n")
    with pytest.raises(CnnlabError, match=r"bad\.csv, line 3: audio file .*missing\.wav"):
        read_audio_csv(bad)
    bad.write_text("path,label\nlow_0.wav,quiet,extra\n")
    with pytest.raises(CnnlabError, match=r"line 2: 3 fields"):
        read_audio_csv(bad)
    bad.write_text("file,label\nlow_0.wav,quiet\n")
    with pytest.raises(CnnlabError, match=r"no column 'path'"):
        read_audio_csv(bad)


def test_load_waveforms_centres_clips_in_a_fixed_window(tone_folder):
    corpus = read_audio_folder(tone_folder)
    waves = load_waveforms(corpus, sample_rate=8000, seconds=0.5)
    assert waves.shape == (20, 4000)
    assert waves[0, :700].abs().max() == 0 and waves[0, 800:3200].abs().max() > 0.3
    np.testing.assert_array_equal(center_fit(np.arange(10, dtype=np.float32), 4), [3, 4, 5, 6])


def test_time_shift_noise_moves_clips_and_fills_with_silence():
    torch.manual_seed(0)
    clips = torch.zeros(64, 1000)
    clips[:, 400:600] = 1.0
    shift_only = TimeShiftNoise(1000, max_shift_seconds=0.1, snr_db=(300.0, 300.0))
    out, targets = shift_only(clips, torch.arange(64))
    starts = (out > 0.5).float().argmax(dim=1)
    assert starts.min() >= 300 and starts.max() <= 500 and len(set(starts.tolist())) > 10
    assert torch.allclose((out > 0.5).sum(dim=1), torch.tensor(200))  # nothing lost or wrapped
    assert torch.equal(targets, torch.arange(64))


def test_time_shift_noise_adds_noise_at_the_asked_snr():
    torch.manual_seed(0)
    clips = torch.sin(torch.arange(4000) * 0.05).repeat(32, 1) * torch.linspace(0.1, 1, 32)[:, None]
    noisy, _ = TimeShiftNoise(1000, max_shift_seconds=0.0, snr_db=(20.0, 20.0))(clips, None)
    noise = noisy - clips
    snr_db = 10 * torch.log10(clips.square().mean(dim=1) / noise.square().mean(dim=1))
    assert (snr_db - 20.0).abs().max() < 0.5  # relative to each clip's own level


def test_fsdd_official_split_keeps_speakers_on_both_sides(shared_data):
    corpus = read_fsdd(shared_data("fsdd"), label="speaker")
    train, test = fsdd_split(corpus)
    assert (len(train), len(test)) == (2700, 300)
    assert set(test.class_counts().values()) == {50}
    assert not {p.name for p in train.paths} & {p.name for p in test.paths}
