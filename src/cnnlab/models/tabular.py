"""Networks for tables: an MLP with categorical embeddings, and a 1-D CNN over the columns.

Both take the packed matrix of :meth:`cnnlab.data.tabular.EncodedTable.packed`:
``[B, n_numeric + n_categorical]`` floats, standardised numerics first, then
integer category codes (0 = unknown).

:class:`TabularMLP` embeds each categorical column in its own small table
(``min(16, (size + 1) // 2)`` dims) and runs an MLP on the numerics plus all
embeddings: every column may interact with every other from the first layer.

:class:`TabularCNN1d` is the counterpoint: it turns a row into one long
vector (numerics, then one-hot categories) and slides width-3 filters along
it. Convolution assumes that neighbouring positions form local patterns and
that the same pattern means the same thing anywhere along the axis - true
of pixels and audio frames, arbitrary for columns, whose order is just the
file's. ``column_order`` permutes that vector, so a study can measure how
much the result depends on an order that carries no meaning.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.models.registry import register_model


def _split(packed: torch.Tensor, n_numeric: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``[B, n_numeric + n_categorical]`` -> numerics (float) and codes (long)."""
    return packed[:, :n_numeric].float(), packed[:, n_numeric:].round().long()


def embedding_size(categories: int) -> int:
    """Embedding width for a column with ``categories`` codes (unknown included)."""
    return max(1, min(16, (categories + 1) // 2))


class TabularMLP(nn.Module):
    """Numerics + per-column categorical embeddings -> MLP (Linear, ReLU, dropout) -> logits."""

    def __init__(self, n_numeric: int, category_sizes: Sequence[int], num_classes: int,
                 hidden: Sequence[int] = (128, 64), dropout: float = 0.2) -> None:
        super().__init__()
        if n_numeric < 0 or (n_numeric == 0 and not category_sizes):
            raise CnnlabError("a tabular model needs at least one numeric or categorical column")
        self.n_numeric = n_numeric
        self.embeddings = nn.ModuleList(nn.Embedding(size, embedding_size(size))
                                        for size in category_sizes)
        width = n_numeric + sum(embedding_size(size) for size in category_sizes)
        layers: list[nn.Module] = []
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = units
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        numeric, codes = _split(packed, self.n_numeric)
        parts = [numeric] + [table(codes[:, j]) for j, table in enumerate(self.embeddings)]
        return self.classifier(self.body(torch.cat(parts, dim=1)))


class TabularCNN1d(nn.Module):
    """A 1-D CNN sliding along the row vector ``[numerics, one-hot categories]``.

    [B, 1, F] -> conv(1->16, 3) ReLU -> conv(16->32, 3) ReLU -> max-pool 2
    -> conv(32->32, 3) ReLU -> flatten -> dropout -> linear(64) ReLU -> linear.
    ``F = n_numeric + sum(category_sizes)``; ``column_order`` (a permutation of
    range(F)) reorders the vector before the convolutions.
    """

    def __init__(self, n_numeric: int, category_sizes: Sequence[int], num_classes: int,
                 channels: tuple[int, int] = (16, 32), dropout: float = 0.2,
                 column_order: Sequence[int] | None = None) -> None:
        super().__init__()
        self.n_numeric = n_numeric
        self.category_sizes = [int(size) for size in category_sizes]
        width = n_numeric + sum(self.category_sizes)
        if width < 2:
            raise CnnlabError(f"a 1-D CNN over columns needs a row vector of 2 or more "
                              f"entries, got {width}")
        if column_order is not None:
            if sorted(column_order) != list(range(width)):
                raise CnnlabError(f"column_order must be a permutation of range({width})")
            self.register_buffer("column_order", torch.tensor(list(column_order)),
                                 persistent=True)
        else:
            self.column_order = None
        offsets = torch.tensor([0, *self.category_sizes[:-1]]).cumsum(0) if category_sizes \
            else torch.zeros(0, dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv1d(1, c1, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv1d(c1, c2, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool1d(2),
            nn.Conv1d(c2, c2, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * (width // 2), 64),
            nn.ReLU(inplace=True), nn.Linear(64, num_classes),
        )
        self.width = width

    def row_vector(self, packed: torch.Tensor) -> torch.Tensor:
        """``[B, F]``: numerics, then every categorical column one-hot (unknown = slot 0)."""
        numeric, codes = _split(packed, self.n_numeric)
        B = packed.shape[0]
        one_hot = torch.zeros((B, sum(self.category_sizes)), device=packed.device)
        if self.category_sizes:
            sizes = torch.tensor(self.category_sizes, device=packed.device)
            codes = codes.clamp(min=0).minimum(sizes - 1)  # out-of-range -> last slot, not a crash
            one_hot.scatter_(1, codes + self.offsets, 1.0)
        vector = torch.cat([numeric, one_hot], dim=1)
        if self.column_order is not None:
            vector = vector[:, self.column_order]
        return vector

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        x = self.row_vector(packed).unsqueeze(1)  # [B, 1, F]
        return self.head(self.features(x))


@register_model("tabular_mlp")
def tabular_mlp(n_numeric: int, category_sizes: Sequence[int] = (), num_classes: int = 2,
                dropout: float = 0.2) -> TabularMLP:
    """MLP 128-64 with an embedding per categorical column."""
    return TabularMLP(n_numeric, category_sizes, num_classes, dropout=dropout)


@register_model("tabular_cnn1d")
def tabular_cnn1d(n_numeric: int, category_sizes: Sequence[int] = (), num_classes: int = 2,
                  dropout: float = 0.2, column_order: Sequence[int] | None = None
                  ) -> TabularCNN1d:
    """1-D CNN (16-32-32 channels, width 3) over the one-hot row vector."""
    return TabularCNN1d(n_numeric, category_sizes, num_classes, dropout=dropout,
                        column_order=column_order)
