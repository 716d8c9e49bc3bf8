"""Where datasets are found: explicit path, then $CNNLAB_DATA, then the cache.

Every reader in the data layer goes through :func:`find_dataset`, so the
resolution order and its error message are the same for every dataset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cnnlab._util import CnnlabError

# Folder names under $CNNLAB_DATA (the layout of the shared offline data).
KNOWN_DATASETS: dict[str, str] = {
    "cifar10": "cifar10-jpeg",
    "fsdd": "audio-fsdd",
    "defects": "defect-magnetic-tile",
    "seg-membrane": "seg-membrane",
    "churn": "tabular-churn",
    "text-mr": "text-mr",
    "text-trec": "text-trec",
}


# Open recordings (see :func:`recording_datasets`), innermost last.
_RECORDINGS: list[dict[str, Path]] = []


@contextmanager
def recording_datasets() -> Iterator[dict[str, Path]]:
    """Collect every dataset :func:`find_dataset` finds inside the block.

    Yields a dictionary that fills as datasets are found: dataset name (or,
    for a path, its folder name) -> resolved folder. The lab runs each study
    inside one, so the report can list and checksum the data every study read
    without each study having to declare it.
    """
    found: dict[str, Path] = {}
    _RECORDINGS.append(found)
    try:
        yield found
    finally:
        _RECORDINGS.remove(found)


def _record(name: str, path: Path) -> Path:
    resolved = path.resolve()
    for found in _RECORDINGS:
        if resolved not in found.values():  # one row per folder, under the first name used
            found.setdefault(name, resolved)
    return path


def cache_dir() -> Path:
    """The cache folder: $CNNLAB_CACHE, else $XDG_CACHE_HOME/cnnlab, else ~/.cache/cnnlab."""
    env = os.environ.get("CNNLAB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnlab"


def data_root() -> Path | None:
    env = os.environ.get("CNNLAB_DATA")
    return Path(env) if env else None


def find_dataset(name_or_path: str | os.PathLike, *, explicit_root: str | os.PathLike | None = None
                 ) -> Path:
    """Find a dataset folder by path or by name.

    Order: ``name_or_path`` as an existing path; ``explicit_root/<folder>``;
    ``$CNNLAB_DATA/<folder>``; ``<cache>/datasets/<folder>``. ``<folder>`` is the
    known folder name for a dataset name (``cifar10`` -> ``cifar10-jpeg``) or
    the name itself. Raises :class:`CnnlabError` listing every place tried.
    Downloading (where a network exists) is done by the caller on failure.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        return _record(candidate.resolve().name, candidate)
    name = str(name_or_path)
    folder = KNOWN_DATASETS.get(name, name)
    tried: list[str] = [f"{candidate} (as a path)"]
    roots: list[tuple[str, Path | None]] = [
        ("--data-root", Path(explicit_root) if explicit_root else None),
        ("$CNNLAB_DATA", data_root()),
        ("cache", cache_dir() / "datasets"),
    ]
    for label, root in roots:
        if root is None:
            tried.append(f"{label}: not set")
            continue
        path = root / folder
        if path.exists():
            return _record(name, path)
        tried.append(f"{label}: {path} (missing)")
    known = ", ".join(sorted(KNOWN_DATASETS))
    raise CnnlabError(
        f"dataset {name!r} not found. Looked in:\n  " + "\n  ".join(tried)
        + f"\nPass a path to the data, or set CNNLAB_DATA to the folder that holds {folder!r}."
        + f" Known dataset names: {known}."
    )
