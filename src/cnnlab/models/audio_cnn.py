"""A small 2-D CNN over log-mel spectrograms (mel bands x time), fed with waveforms.

waveforms [B, samples] -> LogMel [B, n_mels, frames] -> per-band BatchNorm
-> 4 blocks of conv3x3 + BN + ReLU (the first three followed by 2x2 max
pooling): channels 16, 32, 64, 64 -> mean over time -> [B, 64 * n_mels/8]
-> dropout -> linear.

The spectrogram is computed inside the model so that augmentation can work
on the waveform (a time shift, additive noise) where it means something
physical, and so that a saved model takes raw audio. Pooling over time
(not frequency) at the end reflects what a speaker is: a voice's spectral
shape, wherever in the clip it is heard; the frequency axis is kept.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.data.audio import DEFAULT_MEL, LogMel, MelConfig
from cnnlab.models.registry import register_model


def _block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class AudioCNN(nn.Module):
    """Log-mel front end plus a 4-block 2-D CNN; see the module docstring."""

    def __init__(self, num_classes: int, mel: MelConfig = DEFAULT_MEL,
                 channels: tuple[int, int, int, int] = (16, 32, 64, 64), dropout: float = 0.3
                 ) -> None:
        super().__init__()
        if mel.n_mels < 8:
            raise CnnlabError(f"AudioCNN pools the mel axis by 8; use n_mels >= 8, got "
                              f"{mel.n_mels}")
        self.front_end = LogMel(mel)
        # Log band powers differ by tens of units between bands; a per-band BatchNorm
        # learns that offset and scale from the training batches.
        self.band_norm = nn.BatchNorm1d(mel.n_mels)
        c1, c2, c3, c4 = channels
        self.features = nn.Sequential(
            _block(1, c1, pool=True), _block(c1, c2, pool=True), _block(c2, c3, pool=True),
            _block(c3, c4, pool=False),
        )
        bands_left = mel.n_mels // 8
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c4 * bands_left, num_classes)

    def spectrogram(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel input ``[B, 1, n_mels, frames]`` the convolutions see."""
        return self.band_norm(self.front_end(waveforms)).unsqueeze(1)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = self.features(self.spectrogram(waveforms))  # [B, C, n_mels / 8, frames / 8]
        x = x.mean(dim=3).flatten(1)  # [B, C * n_mels / 8]
        return self.classifier(self.dropout(x))


@register_model("audio_cnn")
def audio_cnn(num_classes: int = 6, sample_rate: int = 8000, n_mels: int = 40,
              dropout: float = 0.3) -> AudioCNN:
    """The speech study's CNN: 40 log-mel bands at 8 kHz, channels 16-32-64-64."""
    return AudioCNN(num_classes, MelConfig(sample_rate=sample_rate, n_mels=n_mels),
                    dropout=dropout)


@register_model("audio_cnn_tiny")
def audio_cnn_tiny(num_classes: int = 6, sample_rate: int = 8000) -> AudioCNN:
    """A tiny variant for tests: 16 mel bands, 4-8-8-8 channels."""
    return AudioCNN(num_classes, MelConfig(sample_rate=sample_rate, n_mels=16),
                    channels=(4, 8, 8, 8))
