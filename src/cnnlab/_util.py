"""Small helpers shared by every layer: atomic files, devices, seeds, threads.

This module sits below all layers and imports nothing from cnnlab.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


class CnnlabError(Exception):
    """An error a user can fix: the message names the input and what to do."""


def run_script(main: Callable[[], Any]) -> None:
    """Run a script's ``main``; a :class:`CnnlabError` exits 2 with its message, no traceback.

    For the scripts in ``benchmarks/``, which are not behind the ``cnnlab``
    command's own error handling.
    """
    try:
        main()
    except CnnlabError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    A reader never sees a half-written file: the rename is atomic on POSIX,
    and a crash or kill before it leaves the old file (if any) untouched and
    only a stray ``.tmp`` file behind, which the next write replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one integer."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto"):
    """Return a torch.device: ``auto`` picks CUDA, then MPS, then the CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise CnnlabError(
            f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnlabError(f"--device {name!r} asked for CUDA but no CUDA GPU is visible; use cpu")
    return device


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads and return the count in force.

    ``None`` means: ``$CNNLAB_THREADS`` if set, else one thread per core that
    other processes leave idle (see :func:`default_threads`). On a busy 2-core
    machine two OpenMP threads that must wait for each other run up to ten
    times slower than one thread, while one thread degrades gracefully, so the
    default backs off under load.
    """
    import torch

    if threads is None:
        env = os.environ.get("CNNLAB_THREADS")
        threads = int(env) if env else default_threads()
    if threads < 1:
        raise CnnlabError(f"threads must be >= 1, got {threads}")
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# (monotonic seconds, this process's CPU seconds) samples, oldest first; the first is taken
# when this module is imported, which every cnnlab entry point does before any work.
_CPU_SAMPLES: list[tuple[float, float]] = []
_LOAD_WINDOW = 60.0  # seconds: the span the kernel's 1-minute load average mostly covers


def _process_cpu_seconds() -> float:
    """User plus system CPU seconds of every thread of this process (children excluded)."""
    times = os.times()
    return times.user + times.system


def own_busy_cores() -> float:
    """How many cores this process kept busy over about the last minute.

    The kernel's load average counts this process's own threads too, so a
    long job (a lab running one training after another) that read it raw
    would see its own previous run as "other work" and back off to one
    thread on an otherwise idle machine. The rate is this process's CPU
    seconds per wall second since the recorded sample nearest to a minute
    ago (or since import, in a younger process).
    """
    now, cpu = time.monotonic(), _process_cpu_seconds()
    if not _CPU_SAMPLES:
        _CPU_SAMPLES.append((now, cpu))
        return 0.0
    # The sample whose age is closest to the load average's window.
    then, cpu_then = min(_CPU_SAMPLES, key=lambda sample: abs(now - sample[0] - _LOAD_WINDOW))
    _CPU_SAMPLES.append((now, cpu))
    # Keep the oldest sample and those a later call could still pick.
    recent = [sample for sample in _CPU_SAMPLES[1:] if now - sample[0] <= 2 * _LOAD_WINDOW]
    _CPU_SAMPLES[:] = _CPU_SAMPLES[:1] + recent
    elapsed = now - then
    return (cpu - cpu_then) / elapsed if elapsed >= 1.0 else 0.0


def default_threads() -> int:
    """Cores that other processes leave idle, at least 1.

    Other processes' demand is the 1-minute load average minus what this
    process itself contributed to it (:func:`own_busy_cores`).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    others = max(0.0, load - own_busy_cores())
    return max(1, min(cores, cores - round(others)))


# glibc's mallopt parameters (malloc.h) and the values cnnlab sets for CPU training.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 64 << 20
_TRIM_THRESHOLD_BYTES = 256 << 20
_allocator_tuned: bool | None = None


def tune_allocator() -> bool:
    """Keep freed memory for reuse instead of returning it to the OS (glibc only).

    A CPU training step allocates and frees the same few megabytes of
    temporaries every batch. glibc's default heuristics (a dynamic mmap
    threshold, and trimming the heap whenever its free top exceeds twice that
    threshold) hand that memory back to the kernel and fault it in again on
    the next batch: with batched augmentation, whose temporaries are larger,
    this cost LeNet-5 up to a third of its epoch on the 2-core machine
    (``benchmarks/bench_train.py``; minor page faults halved with this on).
    Fixing the mmap threshold at 64 MiB and the trim threshold at 256 MiB
    keeps up to 256 MiB of freed heap in the process.

    Process-wide and done once; skipped where the C library is not glibc, when
    the user already tunes malloc (``GLIBC_TUNABLES``/``MALLOC_*`` set), or with
    ``CNNLAB_MALLOC_TUNING=0``. Returns whether the settings are in force.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("CNNLAB_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(
            name.startswith("MALLOC_") for name in os.environ):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
                            and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
    return _allocator_tuned


def peak_memory_bytes(device=None) -> int:
    """Peak memory of this process: CUDA's allocator peak on a GPU, max RSS on the CPU."""
    import resource

    import torch

    if device is not None and getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # ru_maxrss is in kilobytes on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on, for provenance."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("cnnlab", "torch", "torchvision", "kornia", "numpy", "scikit-learn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


own_busy_cores()  # the first sample: this process's CPU time when cnnlab was imported
