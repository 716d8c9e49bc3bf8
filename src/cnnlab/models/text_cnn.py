"""Kim (2014) sentence CNN, the "CNN-rand" variant: embeddings learned from scratch.

token ids [B, L] -> embeddings [B, E, L] -> for each width w in (3, 4, 5):
conv1d(E -> 100, w) + ReLU -> max over time [B, 100] -> concatenate [B, 300]
-> dropout 0.5 -> linear -> class logits.

Max-over-time pooling keeps, for each feature map, its strongest response
anywhere in the sentence: the model detects n-gram patterns regardless of
position, and sentences of any length map to the same vector size.
Kim also caps the L2 norm of each class's weight vector at 3 after every
update; :class:`MaxNormCallback` in the study does that with the trainer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.models.registry import register_model

PAD_ID = 0


class TextCNN(nn.Module):
    """Parallel 1-D convolutions over word embeddings with max-over-time pooling.

    ``vocab_size`` counts the ``<pad>`` (id 0, embedded as zeros and never
    updated) and ``<unk>`` ids. Embeddings start uniform in [-0.25, 0.25]
    as in Kim's code. Each batch is cut to its longest sentence plus the
    widest filter's width - 1 of padding (dynamic padding: on MR that
    roughly halves the work of padding to the corpus maximum), and windows
    that start in the padding are masked, so a sentence's prediction does
    not depend on which other sentences share its batch.
    """

    def __init__(self, vocab_size: int, num_classes: int, embedding_dim: int = 300,
                 widths: Sequence[int] = (3, 4, 5), maps: int = 100, dropout: float = 0.5
                 ) -> None:
        super().__init__()
        if vocab_size < 3:
            raise CnnlabError(f"vocab_size must count <pad>, <unk> and at least one word, "
                              f"got {vocab_size}")
        if not widths or min(widths) < 1:
            raise CnnlabError(f"convolution widths must be positive, got {list(widths)}")
        self.widths = tuple(int(w) for w in widths)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        nn.init.uniform_(self.embedding.weight, -0.25, 0.25)
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, maps, width) for width in self.widths)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(maps * len(self.widths), num_classes)

    def features(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The pooled sentence vector ``[B, maps * len(widths)]``."""
        if token_ids.dim() != 2:
            raise ValueError(f"TextCNN expects token ids [batch, length], got "
                             f"{tuple(token_ids.shape)}")
        token_ids = token_ids.long()
        lengths = (token_ids != PAD_ID).sum(dim=1)  # [B]; padding is at the end
        # Keep the longest sentence plus widest-1 padding columns, so every sentence
        # has the same trailing windows whatever else is in the batch.
        columns = int(lengths.max().item()) + max(self.widths) - 1
        token_ids = token_ids[:, :columns]
        if token_ids.shape[1] < columns:
            token_ids = nn.functional.pad(token_ids, (0, columns - token_ids.shape[1]),
                                          value=PAD_ID)
        x = self.embedding(token_ids).transpose(1, 2)  # [B, E, L]
        pooled = []
        for conv in self.convs:
            response = torch.relu(conv(x))  # [B, maps, L - w + 1]
            # A window counts if it starts on a real token; windows wholly in the
            # padding are zeroed (ReLU's floor), so they never win the max.
            starts = torch.arange(response.shape[2], device=x.device)
            valid = starts[None, :] < lengths[:, None]  # [B, L - w + 1]
            pooled.append((response * valid[:, None, :]).amax(dim=2))  # [B, maps]
        return torch.cat(pooled, dim=1)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(token_ids)))


@register_model("text_cnn")
def text_cnn(vocab_size: int, num_classes: int = 2, embedding_dim: int = 300,
             widths: Sequence[int] = (3, 4, 5), maps: int = 100, dropout: float = 0.5
             ) -> TextCNN:
    """Kim (2014) CNN-rand: widths 3, 4, 5 with 100 maps each, dropout 0.5."""
    return TextCNN(vocab_size, num_classes, embedding_dim, widths, maps, dropout)


@register_model("text_cnn_tiny")
def text_cnn_tiny(vocab_size: int, num_classes: int = 2) -> TextCNN:
    """A tiny variant for tests: 16-dim embeddings, 8 maps per width."""
    return TextCNN(vocab_size, num_classes, embedding_dim=16, maps=8)


def max_norm_(linear: nn.Linear, max_norm: float = 3.0) -> None:
    """Rescale each output row of ``linear.weight`` whose L2 norm exceeds ``max_norm``."""
    with torch.no_grad():
        linear.weight.copy_(torch.renorm(linear.weight, p=2, dim=0, maxnorm=max_norm))
