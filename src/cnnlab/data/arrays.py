"""In-memory datasets: whole splits held as tensors, batched by indexing.

Images are kept as uint8 [N, C, H, W] (a quarter of float32's memory) and
converted to float on the device batch by batch, so there is no per-image
Python on the hot path and no DataLoader worker process is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from cnnlab._util import CnnlabError


@dataclass
class ArrayDataset:
    """A dataset split held in memory.

    ``inputs`` are uint8 images [N, C, H, W] or any tensor whose first axis is
    the sample (token ids, spectrograms, table rows). ``mean``/``std`` are the
    per-channel statistics used to normalise uint8 images after scaling to
    [0, 1]; ``None`` means no normalisation.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    classes: list[str]
    source: str = ""
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise CnnlabError(
                f"dataset {self.source or '<arrays>'}: {len(self.inputs)} inputs but "
                f"{len(self.targets)} targets; each input needs exactly one target"
            )

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def is_image(self) -> bool:
        return self.inputs.dtype == torch.uint8 and self.inputs.dim() == 4

    def take(self, indices: torch.Tensor) -> ArrayDataset:
        """A new dataset with the samples at ``indices`` (statistics are kept)."""
        return replace(self, inputs=self.inputs[indices], targets=self.targets[indices])

    def class_counts(self) -> list[int]:
        if self.targets.dim() != 1:
            return []
        return torch.bincount(self.targets.long(), minlength=len(self.classes)).tolist()

    def with_statistics(self) -> ArrayDataset:
        """Return a copy whose mean/std are measured on these images (per channel, in [0, 1])."""
        if not self.is_image:
            return self
        mean, std = channel_statistics(self.inputs)
        return replace(self, mean=mean, std=std)


def channel_statistics(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1]."""
    C = images.shape[1]
    total = torch.zeros(C, dtype=torch.float64)
    total_sq = torch.zeros(C, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64) / 255.0  # [n, C, H, W]
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


def stratified_indices(targets: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` indices drawn evenly across classes, deterministic for a seed.

    Classes get ``count // n_classes`` samples each (the remainder goes to the
    first classes); a class with too few samples gives all it has.
    """
    generator = torch.Generator().manual_seed(seed)
    targets = targets.long()
    classes = torch.unique(targets)
    per_class = count // len(classes)
    extra = count - per_class * len(classes)
    chosen = []
    for position, label in enumerate(classes.tolist()):
        members = torch.nonzero(targets == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        chosen.append(members[: per_class + (1 if position < extra else 0)])
    picked = torch.cat(chosen)
    return picked[torch.randperm(len(picked), generator=generator)]


def split_validation(dataset: ArrayDataset, validation: int | float, seed: int = 0
                     ) -> tuple[ArrayDataset, ArrayDataset]:
    """Carve a stratified held-out validation split from ``dataset``.

    ``validation`` is a count (``5000``) or a fraction (``0.1``). The same seed
    always gives the same split; the remaining samples keep their order.
    """
    n = len(dataset)
    count = int(round(validation * n)) if isinstance(validation, float) else int(validation)
    if not 0 < count < n:
        raise CnnlabError(
            f"validation split of {validation!r} leaves no training or no validation samples "
            f"from {n}; use a count between 1 and {n - 1} or a fraction between 0 and 1"
        )
    if dataset.targets.dim() == 1 and not dataset.targets.is_floating_point():
        val_idx = stratified_indices(dataset.targets, count, seed)
    else:
        val_idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count]
    mask = torch.ones(n, dtype=torch.bool)
    mask[val_idx] = False
    train_idx = torch.nonzero(mask).flatten()
    return dataset.take(train_idx), dataset.take(val_idx.sort().values)


def limit(dataset: ArrayDataset, count: int | None, seed: int = 0) -> ArrayDataset:
    """A deterministic stratified subset of ``count`` samples (all of them for ``None``)."""
    if count is None or count >= len(dataset):
        return dataset
    if count < 1:
        raise CnnlabError(f"--limit must be a positive number of samples, got {count}")
    if dataset.targets.dim() == 1 and not dataset.targets.is_floating_point():
        return dataset.take(stratified_indices(dataset.targets, count, seed).sort().values)
    return dataset.take(torch.arange(count))
