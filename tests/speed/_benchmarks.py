"""The scripts in ``benchmarks/`` imported as modules, for the tests of their pure parts."""

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_module(name: str) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` as a module, for a module-scoped fixture to ``yield from``.

    The scripts are not a package; the module is registered in ``sys.modules``
    while in use (dataclasses look their module up by name) and removed after.
    """
    spec = importlib.util.spec_from_file_location(f"cnnlab_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
