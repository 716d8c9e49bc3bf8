"""A picture of what augmentation does: originals, then several augmented draws of each."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab.augment.affine import PRESETS, AffineAugment


def preview_grid(images: torch.Tensor, preset: str, rows: int = 4, seed: int = 0
                 ) -> torch.Tensor:
    """uint8 [(rows + 1) * N, C, H, W]: the originals, then ``rows`` augmented copies."""
    augment = AffineAugment(PRESETS[preset], seed=seed)
    floats = images.float() / 255.0
    out = [images]
    for _ in range(rows):
        augmented, _ = augment(floats, None)
        out.append((augmented.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(out)


def write_preview(data: str, path: str | Path, preset: str = "keras", images: int = 8,
                  rows: int = 4, seed: int = 0) -> Path:
    from cnnlab.data import load_images
    from cnnlab.data.arrays import stratified_indices

    dataset = load_images(data, "train", progress=False)
    picked = stratified_indices(dataset.targets, images, seed)
    grid = preview_grid(dataset.inputs[picked], preset, rows, seed)
    # Figures are drawn with matplotlib directly: the augment layer must not import report.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows + 1, images, figsize=(images * 1.1, (rows + 1) * 1.2))
    for index, axis in enumerate(axes.flat):
        axis.imshow(grid[index].permute(1, 2, 0).squeeze(-1).numpy(),
                    cmap="gray" if grid.shape[1] == 1 else None)
        axis.set_axis_off()
        if index < images:
            axis.set_title(dataset.classes[int(dataset.targets[picked[index]])], fontsize=7)
    fig.suptitle(f"top row: originals; below: {rows} draws of preset {preset!r}", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
