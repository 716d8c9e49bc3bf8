"""Provenance: the machine a lab ran on and checksums of the data it read.

A dataset checksum hashes the *contents* of every file (with its relative
path and size) so the same data copied elsewhere gives the same checksum,
and any changed byte gives another one. Hashing CIFAR-10's 60,000 JPEGs
(about 240 MB) takes seconds, so the answer is cached, keyed by the folder's
listing (paths, sizes, modification times): a second call only lists the
folder. The trap: an edit that keeps a file's size and restores its mtime is
not noticed until the cache is removed (``cache=False`` rehashes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cnnlab._util import CnnlabError, write_json_atomic

log = logging.getLogger(__name__)

CHECKSUM_ALGORITHM = "sha256"


def dataset_checksum(path: str | os.PathLike, *, cache: bool = True) -> str:
    """Checksum of a dataset folder (or a single file), as ``"sha256:<hex>"``.

    The checksum covers every file under ``path``: its path relative to
    ``path``, its size and a SHA-256 of its contents. Hidden files are
    included; symbolic links to files are followed. With ``cache=True`` the
    result is stored under the cnnlab cache (``$CNNLAB_CACHE/checksums``) and
    reused while the folder's listing (paths, sizes, mtimes) is unchanged.

    Example: ``dataset_checksum(find_dataset("cifar10"))``.
    """
    return data_source(path, cache=cache)["checksum"]


def data_source(path: str | os.PathLike, *, cache: bool = True) -> dict[str, Any]:
    """Describe a dataset for provenance: ``{"path", "files", "bytes", "checksum"}``.

    A study puts these in its setup, e.g.
    ``setup["data_checksums"] = {"cifar10": data_source(root)}``; the report
    gathers them into its data sources table. See :func:`dataset_checksum`.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CnnlabError(f"cannot checksum {str(root)!r}: no such file or folder")
    root = root.resolve()
    listing = _listing(root)
    total_bytes = sum(size for _, size, _ in listing)
    key = _listing_key(root, listing)

    cache_file = _cache_file(key) if cache else None
    if cache_file is not None and cache_file.exists():
        try:
            stored = json.loads(cache_file.read_text())
            return {"path": str(root), "files": len(listing), "bytes": total_bytes,
                    "checksum": stored["checksum"]}
        except (OSError, ValueError, KeyError):
            log.debug("ignoring unreadable checksum cache %s", cache_file)

    checksum = _contents_checksum(root, listing)
    if cache_file is not None:
        try:
            write_json_atomic(cache_file, {"path": str(root), "checksum": checksum,
                                           "files": len(listing), "bytes": total_bytes})
        except OSError as error:  # a read-only cache costs speed, not correctness
            log.debug("cannot cache checksum in %s: %s", cache_file, error)
    return {"path": str(root), "files": len(listing), "bytes": total_bytes, "checksum": checksum}


def _listing(root: Path) -> list[tuple[str, int, int]]:
    """(relative posix path, size, mtime_ns) of every file, sorted by path."""
    if root.is_file():
        stat = root.stat()
        return [(root.name, stat.st_size, stat.st_mtime_ns)]
    files: list[tuple[str, int, int]] = []
    # os.scandir reuses the directory read's stat data, much faster than Path.rglob + stat.
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_dir():
                    stack.append((Path(entry.path), rel + "/"))
                elif entry.is_file():
                    stat = entry.stat()
                    files.append((rel, stat.st_size, stat.st_mtime_ns))
    files.sort()
    return files


def _listing_key(root: Path, listing: list[tuple[str, int, int]]) -> str:
    digest = hashlib.sha256(str(root).encode())
    for rel, size, mtime_ns in listing:
        digest.update(f"\n{rel}\0{size}\0{mtime_ns}".encode())
    return digest.hexdigest()


def _contents_checksum(root: Path, listing: list[tuple[str, int, int]]) -> str:
    # The manifest reads like `sha256sum` output plus sizes; its hash is the checksum.
    manifest = hashlib.sha256()
    for rel, size, _ in listing:
        file_path = root if root.is_file() else root / rel
        with open(file_path, "rb") as handle:
            file_digest = hashlib.file_digest(handle, CHECKSUM_ALGORITHM).hexdigest()
        manifest.update(f"{file_digest}  {size}  {rel}\n".encode())
    return f"{CHECKSUM_ALGORITHM}:{manifest.hexdigest()}"


def _cache_file(key: str) -> Path:
    from cnnlab.data import cache_dir  # imported late: the report needs it only here

    return cache_dir() / "checksums" / f"{key[:32]}.json"


def machine_info() -> dict[str, Any]:
    """The machine, for provenance: OS, CPU model and cores, memory, GPUs, torch threads."""
    info: dict[str, Any] = {
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpu_cores_usable"] = len(os.sched_getaffinity(0))
    memory_bytes = _memory_bytes()
    if memory_bytes:
        info["memory_gib"] = round(memory_bytes / 2**30, 1)
    try:
        import torch
    except ImportError:
        return info
    info["torch_threads"] = torch.get_num_threads()
    info["gpus"] = [
        {"name": torch.cuda.get_device_name(index),
         "memory_gib": round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1)}
        for index in range(torch.cuda.device_count())
    ] if torch.cuda.is_available() else []
    if info["gpus"]:
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def gather_data_sources(studies: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, dict]:
    """Merge each study's ``setup["data_checksums"]`` into one table keyed by dataset.

    ``studies`` yields ``(study name, setup)``. A study may give a checksum
    string or a :func:`data_source` dictionary per dataset. Two studies that
    name the same dataset share a row; if their checksums differ, each keeps
    its own row (``"name (study)"``) so the disagreement is visible.
    """
    sources: dict[str, dict[str, Any]] = {}
    for study_name, setup in studies:
        given = setup.get("data_checksums") or {}
        if not isinstance(given, dict):
            log.warning("study %s: setup['data_checksums'] is %s, not a dict; ignored",
                        study_name, type(given).__name__)
            continue
        for dataset, description in given.items():
            row = dict(description) if isinstance(description, dict) else {
                "checksum": str(description)}
            key = str(dataset)
            known = sources.get(key)
            if known is not None and known.get("checksum") != row.get("checksum"):
                key = f"{dataset} ({study_name})"
                known = sources.get(key)
            if known is None:
                sources[key] = {**row, "studies": [study_name]}
            else:
                for field_name, value in row.items():  # one study may say more than another
                    known.setdefault(field_name, value)
                if study_name not in known["studies"]:
                    known["studies"].append(study_name)
    return sources
