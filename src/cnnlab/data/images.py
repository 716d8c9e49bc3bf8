"""Image datasets: class folders, CIFAR-10 in its original or JPEG form, and .npz arrays.

The first read of a folder decodes every image once into a uint8 array that
is cached on disk, keyed by the folder's listing (names, sizes and
modification times) and the decode options; a changed, added or removed file
gives a new key, so a stale cache is never read. Later runs load the cache
in about a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cnnlab._util import CnnlabError, atomic_path, write_json_atomic
from cnnlab.data._resolve import cache_dir, find_dataset
from cnnlab.data.arrays import ArrayDataset

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
CACHE_FORMAT = 2  # bump when the cached layout or decoding changes

# The original CIFAR-10 release (python pickles) and its published MD5 checksum.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

# Channel statistics of the CIFAR-10 training set, used when a run does not measure its own.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def load_images(
    name_or_path: str | os.PathLike,
    split: str = "train",
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    download: bool = False,
    use_cache: bool = True,
    progress: bool = True,
) -> ArrayDataset:
    """Load one split of an image dataset into memory as uint8 tensors.

    ``name_or_path`` is a dataset name (``cifar10``) or a path to: a folder
    with ``train/`` and ``test/`` class folders; a folder of class folders
    (then ``split`` is ignored); torchvision's ``cifar-10-batches-py``; or an
    ``.npz`` file with ``x_train``/``y_train``/``x_test``/``y_test`` arrays.

    ``size`` resizes every image (needed when sizes differ); ``channels``
    converts to 1 (grayscale) or 3 (RGB); by default the channel count is
    taken from the first image and grayscale images in a colour folder are
    converted to RGB (and RGBA drops alpha). ``skip_bad=True`` skips
    unreadable files and records them in ``dataset.meta["skipped"]`` instead
    of stopping.

    Example: ``train = load_images("cifar10", "train")``.
    """
    try:
        root = find_dataset(name_or_path)
    except CnnlabError:
        if not (download and str(name_or_path) == "cifar10"):
            raise
        root = download_cifar10(cache_dir() / "datasets")
    if root.suffix == ".npz":
        return _load_npz(root, split)
    batches = _find_cifar_batches(root)
    if batches is not None:
        return _load_cifar_batches(batches, split)
    folder = root / split if (root / split).is_dir() else root
    return load_image_folder(folder, size=size, channels=channels, skip_bad=skip_bad,
                             use_cache=use_cache, progress=progress)


def list_image_folder(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names) and (file, class index) pairs.

    Files are found recursively inside each class folder, symlinks are not
    followed into loops, hidden files are ignored. Raises a clear error for a
    folder without class folders or a class folder without images.
    """
    if not folder.is_dir():
        raise CnnlabError(f"{folder} is not a folder; pass a folder of class folders")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise CnnlabError(
            f"{folder} has no class folders; expected {folder}/<class>/<image files>"
        )
    files: list[tuple[Path, int]] = []
    for index, class_dir in enumerate(class_dirs):
        found = sorted(
            p for p in _walk_files(class_dir)
            if not p.name.startswith(".")
        )
        if not found:
            raise CnnlabError(
                f"class folder {class_dir} is empty; remove it or add images of class "
                f"{class_dir.name!r}"
            )
        files.extend((p, index) for p in found)
    return [d.name for d in class_dirs], files


def _walk_files(top: Path) -> list[Path]:
    # os.walk does not follow directory symlinks by default, so a symlink loop cannot recurse.
    result = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        result.extend(Path(dirpath) / name for name in filenames)
    return result


def load_image_folder(
    folder: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    skip_bad: bool = False,
    use_cache: bool = True,
    progress: bool = True,
) -> ArrayDataset:
    """Decode a folder of class folders into an :class:`ArrayDataset` (cached on disk)."""
    folder = Path(folder)
    classes, files = list_image_folder(folder)
    key = _cache_key(folder, files, size, channels, skip_bad)
    cache = cache_dir() / "images" / key
    if use_cache and (cache / "done.json").exists():
        return _read_cache(cache, classes, folder)

    images, labels, skipped = _decode_all(files, size, channels, skip_bad, progress, folder)
    dataset = ArrayDataset(
        inputs=torch.from_numpy(images), targets=torch.from_numpy(labels), classes=classes,
        source=str(folder), meta={"skipped": skipped},
    )
    if use_cache:
        _write_cache(cache, images, labels, classes, skipped)
    return dataset


def _cache_key(folder: Path, files: list[tuple[Path, int]], size, channels, skip_bad) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT, str(size), channels, skip_bad]).encode())
    for path, label in files:
        stat = path.stat()
        relative = path.relative_to(folder).as_posix()
        digest.update(f"{relative}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _read_cache(cache: Path, classes: list[str], folder: Path) -> ArrayDataset:
    meta = json.loads((cache / "done.json").read_text())
    images = np.load(cache / "images.npy", mmap_mode=None)
    labels = np.load(cache / "labels.npy")
    log.info("loaded %d cached images of %s from %s", len(images), folder, cache)
    return ArrayDataset(
        inputs=torch.from_numpy(images), targets=torch.from_numpy(labels), classes=classes,
        source=str(folder), meta={"skipped": meta.get("skipped", []), "cache": str(cache)},
    )


def _write_cache(cache: Path, images: np.ndarray, labels: np.ndarray, classes, skipped) -> None:
    # done.json is written last: a cache killed half-way has no done.json and is rebuilt.
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache / "images.npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, images)
    with atomic_path(cache / "labels.npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, labels)
    write_json_atomic(cache / "done.json", {"classes": classes, "count": len(labels),
                                            "skipped": skipped})


def _decode_all(files, size, channels, skip_bad, progress, folder):
    from PIL import Image

    target_size = (size, size) if isinstance(size, int) else size
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[dict] = []
    first_shape = None
    with _progress_bar(progress, f"decoding {folder}", len(files)) as advance:
        for path, label in files:
            try:
                array = _decode_one(Image, path, target_size, channels)
            except CnnlabError as error:
                if not skip_bad:
                    raise CnnlabError(f"{error} Pass --skip-bad to skip such files.") from None
                skipped.append({"file": str(path), "reason": str(error)})
                log.warning("skipping %s: %s", path, error)
                advance()
                continue
            if channels is None and first_shape is None:
                channels = array.shape[0]
            if first_shape is None:
                first_shape = array.shape
            elif array.shape != first_shape:
                raise CnnlabError(
                    f"{path} is {array.shape[2]}x{array.shape[1]} with {array.shape[0]} channels"
                    f" but earlier images are {first_shape[2]}x{first_shape[1]} with "
                    f"{first_shape[0]}; pass a size (--resize N) to resize every image"
                )
            arrays.append(array)
            labels.append(label)
            advance()
    if not arrays:
        raise CnnlabError(f"no readable images in {folder}")
    return np.stack(arrays), np.asarray(labels, dtype=np.int64), skipped


def _decode_one(Image, path: Path, size, channels) -> np.ndarray:
    """Decode one file to a uint8 [C, H, W] array, converting mode and size as asked."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise CnnlabError(f"{path} is not an image file (suffix {path.suffix!r}).")
    try:
        if path.stat().st_size == 0:
            raise CnnlabError(f"{path} is an empty (zero-byte) file.")
        with Image.open(path) as image:
            image.load()  # forces the full decode: truncated files fail here, not later
            image = _convert_mode(image, channels)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except CnnlabError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise CnnlabError(f"{path} could not be decoded as an image ({error}).") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _convert_mode(image, channels: int | None):
    # 16-bit grayscale ("I;16", "I") is scaled to 8 bits instead of being clipped.
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        from PIL import Image

        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), "L")
    if channels == 1:
        return image.convert("L")
    if channels == 3 or channels is None:
        # Grayscale, palette, RGBA and CMYK images become RGB: a documented conversion.
        return image.convert("RGB") if image.mode != "RGB" else image
    raise CnnlabError(f"channels must be 1 or 3, got {channels}")


class _progress_bar:
    """A rich progress bar that is a no-op when ``enabled`` is false."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.enabled, self.description, self.total = enabled, description, total

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self.progress = Progress(transient=True)
        self.progress.__enter__()
        task = self.progress.add_task(self.description, total=self.total)
        return lambda: self.progress.advance(task)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)


def _find_cifar_batches(root: Path) -> Path | None:
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").exists() and (candidate / "test_batch").exists():
            return candidate
    return None


def _load_cifar_batches(folder: Path, split: str) -> ArrayDataset:
    # The original CIFAR-10 release is a set of Python pickles of plain arrays; this is the
    # only pickle cnnlab reads, and only from the dataset folder a user points it to.
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[b"labels"])
    meta = pickle.loads((folder / "batches.meta").read_bytes())
    classes = [c.decode() if isinstance(c, bytes) else c for c in meta["label_names"]]
    return ArrayDataset(torch.from_numpy(np.concatenate(images)),
                        torch.tensor(labels, dtype=torch.int64), classes, source=str(folder))


def _load_npz(path: Path, split: str) -> ArrayDataset:
    with np.load(path, allow_pickle=False) as arrays:
        key_x, key_y = f"x_{split}", f"y_{split}"
        if key_x not in arrays or key_y not in arrays:
            raise CnnlabError(
                f"{path} has arrays {sorted(arrays.files)}; expected {key_x!r} and {key_y!r}"
            )
        images = arrays[key_x]
        labels = arrays[key_y].reshape(-1).astype(np.int64)
        classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise CnnlabError(
            f"{path}: {key_x} must be uint8 images [N,H,W,C] or [N,C,H,W], got "
            f"{images.dtype} with shape {images.shape}"
        )
    if images.ndim == 3:
        images = images[:, None]
    elif images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # Keras layout [N, H, W, C] -> [N, C, H, W]
    classes = classes or [str(i) for i in range(int(labels.max()) + 1)]
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(images)),
                        torch.from_numpy(labels), classes, source=str(path))


def download_cifar10(root: Path) -> Path:
    """Download the original CIFAR-10 release into ``root`` and verify its MD5 checksum.

    Uses torchvision's downloader, which checks the checksum and extracts the
    archive. On a machine without a network this fails with a clear message.
    """
    from torchvision.datasets.utils import download_url

    root.mkdir(parents=True, exist_ok=True)
    try:
        download_url(CIFAR10_URL, str(root), md5=CIFAR10_MD5)  # verifies the checksum
    except Exception as error:  # network errors come in many types
        raise CnnlabError(
            f"could not download CIFAR-10 from {CIFAR10_URL} ({error}). Without a network, "
            "point CNNLAB_DATA at a folder holding cifar10-jpeg/ or cifar-10-batches-py/."
        ) from error
    safe_extract(root / Path(CIFAR10_URL).name, root)
    return root / "cifar-10-batches-py"


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a tar archive, refusing members that would land outside ``target``.

    Uses the standard library's ``data`` filter, which rejects absolute paths,
    ``..`` components, links pointing outside and device files.
    """
    import tarfile

    try:
        with tarfile.open(archive) as bundle:
            bundle.extractall(target, filter="data")
    except tarfile.FilterError as error:
        raise CnnlabError(f"{archive} was not extracted: it holds an unsafe member "
                          f"({error}); the archive may be malicious") from None
    except tarfile.TarError as error:
        raise CnnlabError(f"{archive} is not a readable archive ({error})") from None
