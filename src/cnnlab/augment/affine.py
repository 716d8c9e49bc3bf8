"""Batched, per-sample random affine augmentation on the device, with Keras semantics.

Each batch gets one random affine matrix per image (rotation, shift, shear,
zoom, horizontal flip composed into a single 2x3 matrix) and one
``grid_sample`` call, so the cost is a single resampling pass whatever the
number of transforms, and there is no per-image Python.

Why not kornia's RandomAffine: kornia draws from torch's global random state,
while cnnlab needs a generator owned by the augmenter (the same seed gives
the same batches, untouched by anything else drawing random numbers), and the
``keras`` preset must sample its parameters exactly as Keras'
``ImageDataGenerator`` does (independent zoom per axis, zoom as the inverse
scale of the content, shear as an angle in degrees, 'nearest' fill).
"""

from __future__ import annotations


from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from cnnlab._util import CnnlabError

FILL_MODES = {"nearest": "border", "constant": "zeros", "reflect": "reflection"}


@dataclass(frozen=True)
class AffineSpec:
    """Ranges of the random transforms; every range is symmetric around "no change".

    Units: ``rotation_degrees`` in degrees; ``width_shift`` and
    ``height_shift`` as fractions of the image size; ``shift_pixels`` as whole
    pixels (the crop-with-padding transform; integer shifts keep pixels
    exact); ``shear_degrees`` in degrees (Keras' ``shear_range``);
    ``zoom`` as Keras' ``zoom_range`` (each axis draws z in [1-zoom, 1+zoom]
    and the content is scaled by 1/z, so z > 1 zooms out).
    """

    rotation_degrees: float = 0.0
    width_shift: float = 0.0
    height_shift: float = 0.0
    shift_pixels: int = 0
    shear_degrees: float = 0.0
    zoom: float = 0.0
    horizontal_flip: bool = False
    fill: str = "nearest"

    def is_identity(self) -> bool:
        return not (self.rotation_degrees or self.width_shift or self.height_shift
                    or self.shift_pixels or self.shear_degrees or self.zoom
                    or self.horizontal_flip)


class AffineAugment:
    """A seeded batch augmenter: ``augment(images, targets) -> (images, targets)``.

    ``images`` are float [B, C, H, W] on any device; targets pass through.
    Example::

        augment = AffineAugment(PRESETS["keras"], seed=0)
        images, labels = augment(images, labels)
    """

    def __init__(self, spec: AffineSpec, seed: int = 0) -> None:
        if spec.fill not in FILL_MODES:
            raise CnnlabError(f"fill {spec.fill!r} is unknown; use one of {sorted(FILL_MODES)}")
        self.spec = spec
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None = None):
        if self.spec.is_identity():
            return images, targets
        B, C, H, W = images.shape
        theta = self.sample_matrices(B, H, W).to(device=images.device, dtype=images.dtype)
        grid = sampling_grid(theta, H, W)  # [B, H, W, 2]
        # Integer pixel shifts (crop-with-padding) are exact with nearest sampling.
        mode = "nearest" if self._only_pixel_shifts() else "bilinear"
        out = F.grid_sample(images, grid, mode=mode, padding_mode=FILL_MODES[self.spec.fill],
                            align_corners=False)
        return out, targets

    def _only_pixel_shifts(self) -> bool:
        s = self.spec
        return not (s.rotation_degrees or s.width_shift or s.height_shift or s.shear_degrees
                    or s.zoom)

    def sample_matrices(self, batch: int, height: int, width: int) -> torch.Tensor:
        """One 2x3 matrix per image mapping output to input coordinates in [-1, 1] units.

        Composition follows Keras' ``apply_affine_transform``: for each output
        pixel, the input position is rotation @ shift @ shear @ zoom applied to
        the output position (all about the image centre), then the flip.
        """
        s, g = self.spec, self.generator

        def uniform(limit: float) -> torch.Tensor:
            return (torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1) * limit

        angle = torch.deg2rad(uniform(s.rotation_degrees))
        # Shifts in normalised units: a fraction f of the width is 2f in [-1, 1] coordinates.
        shift_x = uniform(s.width_shift) * 2
        shift_y = uniform(s.height_shift) * 2
        if s.shift_pixels:
            steps = 2 * s.shift_pixels + 1
            shift_x = shift_x + (torch.randint(steps, (batch,), generator=g) - s.shift_pixels
                                 ).double() * 2 / width
            shift_y = shift_y + (torch.randint(steps, (batch,), generator=g) - s.shift_pixels
                                 ).double() * 2 / height
        shear = torch.deg2rad(uniform(s.shear_degrees))
        zoom_x = 1 + uniform(s.zoom)
        zoom_y = 1 + uniform(s.zoom)
        flip = (torch.rand(batch, generator=g) < 0.5) if s.horizontal_flip else \
            torch.zeros(batch, dtype=torch.bool)

        eye = torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1)
        rotation = eye.clone()
        rotation[:, 0, 0], rotation[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
        rotation[:, 1, 0], rotation[:, 1, 1] = torch.sin(angle), torch.cos(angle)
        shift = eye.clone()
        shift[:, 0, 2], shift[:, 1, 2] = shift_x, shift_y
        shearing = eye.clone()
        shearing[:, 0, 1], shearing[:, 1, 1] = -torch.sin(shear), torch.cos(shear)
        zooming = eye.clone()
        zooming[:, 0, 0], zooming[:, 1, 1] = zoom_x, zoom_y
        flipping = eye.clone()
        flipping[:, 0, 0] = torch.where(flip, -1.0, 1.0).double()
        matrix = rotation @ shift @ shearing @ zooming @ flipping
        # Square pixels: rotation in normalised coordinates needs the aspect ratio.
        if height != width:
            aspect = torch.diag(torch.tensor([width / height, 1.0, 1.0], dtype=torch.float64))
            matrix = torch.linalg.inv(aspect) @ matrix @ aspect
        return matrix[:, :2, :].float()


def sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, [B, C, height, width], align_corners=False)``, computed faster.

    ``affine_grid`` multiplies a [B, H*W, 3] grid of pixel centres by each
    2x3 matrix in one batched matrix product, a shape the CPU's BLAS handles
    poorly: 1.3 ms for a batch of 128 32x32 images on one thread, most of the
    augmentation's cost. The grid is affine in x and y, so three broadcast
    multiply-adds give the same numbers (to float rounding) in 0.1 ms
    (``tests/augment/test_affine.py`` checks the two against each other).
    """
    # Pixel centres in [-1, 1] with align_corners=False: (2i + 1) / size - 1.
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta[:, :, :, None, None]  # [B, 2, 3, 1, 1]
    grid = t[:, :, 0] * xs + t[:, :, 1] * ys[:, None] + t[:, :, 2]  # [B, 2, H, W]
    return grid.permute(0, 2, 3, 1)


PRESETS: dict[str, AffineSpec] = {
    "none": AffineSpec(),
    "flip": AffineSpec(horizontal_flip=True),
    # Pad by 4 and crop back to size, plus flips: the usual CIFAR-10 recipe.
    "crop": AffineSpec(shift_pixels=4, horizontal_flip=True, fill="constant"),
    # Keras ImageDataGenerator(rotation_range=30, width_shift_range=0.1, height_shift_range=0.1,
    # shear_range=0.1, zoom_range=0.1, horizontal_flip=True), fill_mode='nearest' (its default).
    "keras": AffineSpec(rotation_degrees=30, width_shift=0.1, height_shift=0.1,
                        shear_degrees=0.1, zoom=0.1, horizontal_flip=True, fill="nearest"),
    "rotate": AffineSpec(rotation_degrees=30),
    "shift": AffineSpec(width_shift=0.1, height_shift=0.1),
    "shear": AffineSpec(shear_degrees=20),
    "zoom": AffineSpec(zoom=0.2),
}


def build_augment(name: str | None, seed: int = 0) -> AffineAugment | None:
    """The augmenter for a preset name; ``None`` or ``"none"`` gives no augmentation."""
    if name in (None, "none"):
        return None
    if name not in PRESETS:
        raise CnnlabError(f"--augment {name!r} is unknown; use one of {', '.join(PRESETS)}")
    return AffineAugment(PRESETS[name], seed=seed)


def describe(name: str) -> dict:
    return asdict(PRESETS[name])


