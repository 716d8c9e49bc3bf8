"""Audio data: reading labelled WAV files, fixed-length batches, log-mel spectrograms.

Readers return an :class:`AudioCorpus` (file paths, labels, per-file metadata);
:func:`load_waveforms` decodes them once into a ``[N, samples]`` float tensor
of fixed length, and :class:`LogMel` turns a batch of waveforms into log-mel
spectrograms on the device. The spectrogram is computed here with
``torch.stft`` and our own mel filter bank rather than torchaudio, because
torchaudio must match the exact torch build and is not installed; the
filter bank is the textbook one (below) and the tests check both the STFT
and the filter bank against an independent computation.

Mel filter bank (:func:`mel_filter_bank`): the HTK mel scale
``mel = 2595 * log10(1 + hz / 700)``; ``n_mels + 2`` points equally spaced in
mel between ``f_min`` and ``f_max``; filter ``m`` is a triangle rising from
point ``m`` to 1 at point ``m + 1`` and falling to 0 at point ``m + 2``,
evaluated at the FFT bin frequencies ``k * sample_rate / n_fft``, then scaled
by ``2 / (f[m + 2] - f[m])`` so that every filter has the same area (Slaney's
normalisation: a wide high-frequency filter does not collect more energy
just for being wide). This equals ``librosa.filters.mel(..., htk=True,
norm="slaney")``.

Readers:

- :func:`read_fsdd` - the Free Spoken Digit Dataset (``{digit}_{speaker}_{index}.wav``);
- :func:`read_audio_folder` - a user's folder, labels taken from file names by a regex;
- :func:`read_audio_csv` - a user's CSV of ``path,label`` rows.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab._util import CnnlabError
from cnnlab.data._resolve import find_dataset

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
FSDD_PATTERN = r"(?P<digit>\d)_(?P<speaker>[a-z]+)_(?P<index>\d+)\.wav"


@dataclass
class AudioCorpus:
    """Labelled audio files: ``labels[i]`` indexes ``classes`` for ``paths[i]``.

    ``metadata[i]`` holds what the file name or CSV row said about file i
    (for FSDD: digit, speaker, index), used to build leak-free splits.
    """

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    source: str = ""
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> AudioCorpus:
        indices = [int(i) for i in indices]
        return AudioCorpus(
            paths=[self.paths[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            classes=list(self.classes),
            source=self.source,
            metadata=[self.metadata[i] for i in indices] if self.metadata else [],
        )

    def class_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(index, 0) for index, name in enumerate(self.classes)}


# ------------------------------------------------------------------ reading


def read_wav(path: str | os.PathLike, *, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode one audio file to a mono float32 array in [-1, 1]: ``(samples, sample_rate)``.

    Reads WAV (and whatever else libsndfile reads, e.g. FLAC) with
    ``soundfile``. Several channels are averaged to mono. If ``sample_rate``
    is given and differs from the file's, the audio is resampled with a
    polyphase filter (scipy). A WAV whose header promises more audio than
    the file holds (a truncated copy or download) is an error rather than
    a silently shorter clip; so is a file with no samples.
    """
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"audio file {path} does not exist")
    _check_wav_complete(path)
    try:
        samples, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise CnnlabError(f"cannot decode audio file {path}: {error}. Is it a WAV/FLAC file? "
                          "Remove or re-export it.") from error
    if samples.shape[0] == 0:
        raise CnnlabError(f"audio file {path} holds no samples")
    mono = samples.mean(axis=1)
    if sample_rate is not None and sample_rate != file_rate:
        from scipy.signal import resample_poly

        divisor = math.gcd(sample_rate, file_rate)
        mono = resample_poly(mono, sample_rate // divisor, file_rate // divisor).astype(np.float32)
        file_rate = sample_rate
    return np.ascontiguousarray(mono, dtype=np.float32), int(file_rate)


def _check_wav_complete(path: Path) -> None:
    """Raise if a RIFF/WAVE file's data chunk claims more bytes than the file has.

    libsndfile reads a truncated WAV without complaint and returns fewer
    frames, so a damaged file would pass as a short clip. Walking the chunk
    headers (12 + 8 bytes each) costs one small read per file.
    """
    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return  # not a RIFF WAVE file: leave it to libsndfile
        order = "<" if head[:4] == b"RIFF" else ">"
        offset = 12
        while offset + 8 <= file_size:
            handle.seek(offset)
            chunk_id, size = struct.unpack(order + "4sI", handle.read(8))
            if chunk_id == b"data":
                if size in (0, 0xFFFFFFFF):
                    return  # streaming writers leave the size unset
                present = file_size - offset - 8
                if size > present:
                    raise CnnlabError(
                        f"audio file {path} is truncated: its header declares {size} bytes of "
                        f"audio but only {present} are present. Re-copy or re-export the file, "
                        "or remove it."
                    )
                return
            offset += 8 + size + (size & 1)
    raise CnnlabError(f"audio file {path} is truncated or damaged: no 'data' chunk found "
                      f"in its {file_size} bytes. Re-copy or re-export the file, or remove it.")


def read_fsdd(root: str | os.PathLike = "fsdd", *, label: str = "speaker") -> AudioCorpus:
    """The Free Spoken Digit Dataset: 3,000 recordings, 6 speakers x 10 digits x 50.

    ``root`` is the dataset folder (with ``recordings/``) or a name for
    :func:`cnnlab.data.find_dataset`. ``label`` is ``"speaker"`` (6 classes,
    sorted names) or ``"digit"`` (``"0"`` ... ``"9"``). Each file's digit,
    speaker and index go to ``metadata``; :func:`fsdd_split` uses the index.
    """
    if label not in ("speaker", "digit"):
        raise CnnlabError(f"FSDD label must be 'speaker' or 'digit', got {label!r}")
    folder = find_dataset(root)
    recordings = folder / "recordings" if (folder / "recordings").is_dir() else folder
    return read_audio_folder(recordings, pattern=FSDD_PATTERN, label_group=label,
                             strict=True)


def fsdd_split(corpus: AudioCorpus, *, test_indices: range = range(5)
               ) -> tuple[AudioCorpus, AudioCorpus]:
    """The official FSDD split: recordings with index 0-4 are test, 5-49 train.

    Every speaker and digit is in both parts, and no recording is in both:
    the right split for speaker identification on seen speakers.
    """
    if not corpus.metadata or "index" not in corpus.metadata[0]:
        raise CnnlabError("fsdd_split needs FSDD metadata (read the corpus with read_fsdd)")
    test = [i for i, meta in enumerate(corpus.metadata) if int(meta["index"]) in test_indices]
    train = [i for i, meta in enumerate(corpus.metadata) if int(meta["index"]) not in test_indices]
    return corpus.subset(train), corpus.subset(test)


def read_audio_folder(
    folder: str | os.PathLike,
    *,
    pattern: str = r"(?P<label>[^_/]+)_.*",
    label_group: str = "label",
    classes: list[str] | None = None,
    recursive: bool = True,
    strict: bool = False,
) -> AudioCorpus:
    """A user's folder of audio files, each file's label taken from its name by a regex.

    ``pattern`` must match the whole file name (not the folder) and contain
    the named group ``label_group``; every named group goes to the file's
    metadata. The default takes the text before the first underscore, e.g.
    ``dog_017.wav`` -> ``dog``. Files that do not match are skipped with a
    warning, or are an error when ``strict``. Classes are the sorted labels
    unless ``classes`` fixes them. Example for FSDD-style names::

        read_audio_folder("clips", pattern=r"(?P<digit>\\d)_(?P<label>[a-z]+)_\\d+\\.wav")
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CnnlabError(f"audio folder {folder} does not exist or is not a folder")
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise CnnlabError(f"file-name pattern {pattern!r} is not a valid regex: {error}") from None
    if label_group not in regex.groupindex:
        raise CnnlabError(f"file-name pattern {pattern!r} has no named group "
                          f"(?P<{label_group}>...) for the label")
    files = sorted(folder.rglob("*") if recursive else folder.iterdir())
    files = [file for file in files if file.is_file() and file.suffix.lower() in AUDIO_SUFFIXES]
    if not files:
        raise CnnlabError(f"{folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
    paths, raw_labels, metadata, unmatched = [], [], [], []
    for file in files:
        match = regex.fullmatch(file.name)
        if match is None:
            unmatched.append(file.name)
            continue
        paths.append(file)
        raw_labels.append(match.group(label_group))
        metadata.append(dict(match.groupdict()))
    if unmatched:
        message = (f"{len(unmatched)} of {len(files)} audio files in {folder} do not match "
                   f"{pattern!r}, e.g. {unmatched[0]!r}")
        if strict or not paths:
            raise CnnlabError(message + "; rename them or change the pattern")
        log.warning("%s; skipping them", message)
    return _labelled_corpus(paths, raw_labels, metadata, classes, str(folder))


def read_audio_csv(
    csv_path: str | os.PathLike,
    *,
    path_column: str = "path",
    label_column: str = "label",
    classes: list[str] | None = None,
) -> AudioCorpus:
    """A user's CSV listing audio files and their labels (header row required).

    Relative paths are taken from the CSV's own folder. A missing column, a
    row with the wrong number of fields, an empty label or a file that does
    not exist raises :class:`CnnlabError` naming the CSV line.
    """
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise CnnlabError(f"cannot read label CSV {csv_path}: {error}") from error
    reader = csv.reader(text.splitlines())
    header = [name.strip() for name in next(reader, [])]
    for column in (path_column, label_column):
        if column not in header:
            raise CnnlabError(f"{csv_path}: no column {column!r}; the header has {header}. "
                              "Pass path_column=/label_column= to name the right ones.")
    path_at, label_at = header.index(path_column), header.index(label_column)
    paths, raw_labels, metadata = [], [], []
    for row in reader:
        number = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CnnlabError(f"{csv_path}, line {number}: {len(row)} fields where the header "
                              f"has {len(header)}")
        file, label = Path(row[path_at].strip()), row[label_at].strip()
        if not label:
            raise CnnlabError(f"{csv_path}, line {number}: empty label")
        if not file.is_absolute():
            file = csv_path.parent / file
        if not file.is_file():
            raise CnnlabError(f"{csv_path}, line {number}: audio file {file} does not exist")
        paths.append(file)
        raw_labels.append(label)
        metadata.append({name: row[i] for i, name in enumerate(header)})
    if not paths:
        raise CnnlabError(f"{csv_path} lists no audio files")
    return _labelled_corpus(paths, raw_labels, metadata, classes, str(csv_path))


def _labelled_corpus(paths, raw_labels, metadata, classes, source) -> AudioCorpus:
    if classes is None:
        classes = sorted(set(raw_labels))
    else:
        unknown = sorted(set(raw_labels) - set(classes))
        if unknown:
            raise CnnlabError(f"{source}: labels {unknown} are not among the classes {classes}")
    corpus = AudioCorpus(paths, [classes.index(label) for label in raw_labels], list(classes),
                         source=source, metadata=metadata)
    if len(corpus.classes) < 2:
        raise CnnlabError(f"{source}: only one class ({corpus.classes}); a classifier needs two "
                          "or more")
    return corpus


def load_waveforms(
    corpus: AudioCorpus, *, sample_rate: int, seconds: float, progress: bool = False
):
    """Decode every file of ``corpus`` to a ``[N, round(seconds * sample_rate)]`` float32 tensor.

    Each clip is centred in the fixed window: a shorter clip gets equal
    silence on both sides, a longer one loses equal parts at both ends.
    Centring leaves room for a random time shift either way during training.
    """
    length = round(seconds * sample_rate)
    if length <= 0:
        raise CnnlabError(f"clip length must be positive, got {seconds} s")
    out = torch.zeros((len(corpus), length), dtype=torch.float32)
    paths = corpus.paths
    iterator = _progress(paths, "decoding audio") if progress else paths
    for row, path in enumerate(iterator):
        samples, _ = read_wav(path, sample_rate=sample_rate)
        out[row] = torch.from_numpy(center_fit(samples, length))
    return out


def center_fit(samples: np.ndarray, length: int) -> np.ndarray:
    """``samples`` centred in a window of ``length``, zero-padded or cropped at both ends."""
    if len(samples) >= length:
        start = (len(samples) - length) // 2
        return samples[start : start + length]
    out = np.zeros(length, dtype=np.float32)
    start = (length - len(samples)) // 2
    out[start : start + len(samples)] = samples
    return out


def _progress(items, description):
    from rich.progress import track

    return track(items, description=description, transient=True)


# ------------------------------------------------------------- spectrograms


@dataclass(frozen=True)
class MelConfig:
    """Log-mel spectrogram settings; times are in samples at ``sample_rate``.

    Defaults suit 8 kHz speech: 32 ms FFT frames (256 samples) hopping by
    10 ms (80 samples), 40 mel bands from 20 Hz to the Nyquist frequency,
    and the natural log of the band power with a floor of 1e-6 (about
    -60 dB below a full-scale sine's band power) so silence stays finite.
    """

    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 80
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float | None = None
    log_floor: float = 1e-6

    def __post_init__(self) -> None:
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0 <= self.f_min < f_max <= nyquist:
            raise CnnlabError(f"mel range must satisfy 0 <= f_min < f_max <= {nyquist} Hz, got "
                              f"f_min={self.f_min}, f_max={self.f_max}")
        if self.n_fft < 2 or self.hop_length < 1 or self.n_mels < 1:
            raise CnnlabError(f"bad spectrogram sizes: {asdict(self)}")

    @property
    def upper_hz(self) -> float:
        return self.sample_rate / 2 if self.f_max is None else float(self.f_max)

    def frames(self, samples: int) -> int:
        """Number of spectrogram frames for a clip of ``samples`` (centred frames)."""
        return 1 + samples // self.hop_length


DEFAULT_MEL = MelConfig()
"""The settings the speech study uses (8 kHz, 40 bands); frozen, so safe as a default."""


def hz_to_mel(hz):
    """HTK mel scale: ``2595 * log10(1 + hz / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filter_bank(config: MelConfig):
    """The ``[n_mels, n_fft // 2 + 1]`` float32 matrix mapping a power spectrum to mel bands.

    See the module docstring for the exact construction (HTK scale,
    triangles, Slaney area normalisation).
    """
    bins = config.n_fft // 2 + 1
    bin_hz = np.linspace(0.0, config.sample_rate / 2, bins)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(config.f_min), hz_to_mel(config.upper_hz),
                                     config.n_mels + 2))
    widths = np.diff(edges_hz)  # [n_mels + 1]
    # distance of every bin from every edge: [n_mels + 2, bins]
    offsets = edges_hz[:, None] - bin_hz[None, :]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    empty = np.flatnonzero(weights.max(axis=1) == 0)
    if len(empty):
        log.warning("mel bands %s fall between FFT bins and are always zero; use fewer mel bands "
                    "or a larger n_fft", empty.tolist())
    return torch.from_numpy(weights.astype(np.float32))


class LogMel(torch.nn.Module):
    """Waveforms ``[B, samples]`` -> log-mel spectrograms ``[B, n_mels, frames]``.

    A Hann window (periodic) of ``n_fft`` samples; frames are centred on
    ``t * hop_length`` with zero padding at the clip's ends (as librosa's
    default), so ``frames = 1 + samples // hop_length``. Power spectrum,
    mel filter bank, ``log(band_power + log_floor)``. No learnable
    parameters; the window and filter bank are buffers, so the module
    moves to the device with the model.
    """

    def __init__(self, config: MelConfig = DEFAULT_MEL) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.n_fft, periodic=True),
                             persistent=False)
        self.register_buffer("filters", mel_filter_bank(config), persistent=False)

    def forward(self, waveforms):
        if waveforms.dim() != 2:
            raise ValueError(f"LogMel expects [batch, samples], got shape {tuple(waveforms.shape)}")
        spectrum = torch.stft(
            waveforms.float(), n_fft=self.config.n_fft, hop_length=self.config.hop_length,
            window=self.window, center=True, pad_mode="constant", return_complex=True,
        )  # [B, n_fft // 2 + 1, frames]
        power = spectrum.real.square() + spectrum.imag.square()
        band_power = torch.matmul(self.filters, power)  # [B, n_mels, frames]
        return torch.log(band_power + self.config.log_floor)


def log_mel(waveforms, config: MelConfig = DEFAULT_MEL):
    """Functional form of :class:`LogMel` for a ``[B, samples]`` tensor (on its device)."""
    return LogMel(config).to(waveforms.device)(waveforms)


# -------------------------------------------------------------- augmentation


class TimeShiftNoise:
    """Batched waveform augmentation: a random circular-free time shift, then white noise.

    Each clip in ``[B, samples]`` moves by a whole number of samples drawn
    uniformly from ``[-max_shift_seconds, +max_shift_seconds]`` (what
    slides out is dropped, what comes in is silence), then gets Gaussian
    noise at a signal-to-noise ratio drawn uniformly in ``snr_db`` (relative
    to the clip's own RMS, so a quiet speaker is not drowned). Works on the
    batch's device with no Python loop over clips; a callable
    ``(inputs, targets) -> (inputs, targets)`` as the trainer expects.
    """

    def __init__(self, sample_rate: int, *, max_shift_seconds: float = 0.1,
                 snr_db: tuple[float, float] = (10.0, 40.0), generator=None) -> None:
        if max_shift_seconds < 0 or snr_db[0] > snr_db[1]:
            raise CnnlabError(f"bad augmentation settings: shift {max_shift_seconds} s, "
                              f"SNR range {snr_db} dB")
        self.max_shift = round(max_shift_seconds * sample_rate)
        self.snr_db = snr_db
        self.generator = generator

    def __call__(self, inputs, targets):
        B, T = inputs.shape
        device = inputs.device
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (B, 1), device=device,
                               generator=self.generator)
        source = torch.arange(T, device=device)[None, :] - shifts  # [B, T]
        inside = (source >= 0) & (source < T)
        shifted = torch.gather(inputs, 1, source.clamp(0, T - 1)) * inside

        low, high = self.snr_db
        snr = low + (high - low) * torch.rand((B, 1), device=device, generator=self.generator)
        signal_rms = shifted.square().mean(dim=1, keepdim=True).sqrt().clamp_min(1e-6)
        noise_rms = signal_rms / (10.0 ** (snr / 20.0))
        noise = torch.randn(inputs.shape, device=device, generator=self.generator)
        return shifted + noise * noise_rms, targets
