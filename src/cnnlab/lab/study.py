"""What a study is: a named program that returns tables, figures and findings.

Each study module registers itself with :func:`register`. A study receives a
:class:`StudyContext` (where to write, which data, which budget profile) and
returns a :class:`StudyResult`. The report layer renders results; a study
never formats HTML itself. Findings are strings built from the measured
numbers (f-strings over the results), never fixed conclusions.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnlab._util import CnnlabError, write_json_atomic

log = logging.getLogger(__name__)

PROFILES = ("smoke", "cpu", "full")
"""``smoke``: seconds, for tests; ``cpu``: sized for a 2-core machine; ``full``: usual recipes."""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    title: str
    path: str  # a PNG, relative to the study's output folder or absolute
    caption: str = ""


@dataclass
class StudyResult:
    name: str
    title: str
    question: str
    setup: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyResult:
        data = dict(data)
        data["tables"] = [Table(**t) for t in data.get("tables", [])]
        data["figures"] = [Figure(**f) for f in data.get("figures", [])]
        return cls(**data)


@dataclass
class StudyContext:
    """Where and how a study runs.

    ``out_dir`` is the study's own folder; ``run_cached`` stores each finished
    run there so an interrupted lab resumes and a second lab reuses it.
    """

    out_dir: Path
    profile: str = "cpu"
    seed: int = 0
    data_root: Path | None = None
    device: str = "auto"
    progress: bool = True
    fresh: bool = False

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise CnnlabError(f"profile {self.profile!r} is unknown; use one of {PROFILES}")
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def pick(self, smoke: Any, cpu: Any, full: Any) -> Any:
        """Choose a budget value by profile, e.g. ``ctx.pick(smoke=1, cpu=8, full=30)``."""
        return {"smoke": smoke, "cpu": cpu, "full": full}[self.profile]

    def run_dir(self, name: str) -> Path:
        path = self.out_dir / "runs" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run_cached(
        self, name: str, config: dict[str, Any], run: Callable[[Path], dict[str, Any]]
    ) -> dict[str, Any]:
        """Run ``run(run_dir)`` once per (name, config); later calls return the stored result.

        The result must be JSON-serialisable. It is written atomically after
        the run finishes, so a run killed half-way is simply run again.
        """
        key = hashlib.sha256(
            json.dumps({"name": name, "config": config, "profile": self.profile}, sort_keys=True,
                       default=str).encode()
        ).hexdigest()[:16]
        run_dir = self.run_dir(name)
        done = run_dir / "result.json"
        if done.exists() and not self.fresh:
            stored = json.loads(done.read_text())
            if stored.get("key") == key:
                log.info("reusing finished run %s", name)
                return stored["result"]
        result = run(run_dir)
        write_json_atomic(done, {"key": key, "config": config, "result": result})
        return result


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    question: str
    budget_seconds: dict[str, int]  # by profile: the time the study is sized for
    run: Callable[[StudyContext], StudyResult]


_REGISTRY: dict[str, Study] = {}


def register(study: Study) -> Study:
    if study.name in _REGISTRY:
        raise ValueError(f"study {study.name!r} registered twice")
    _REGISTRY[study.name] = study
    return study


def studies() -> dict[str, Study]:
    """All registered studies, in the order the lab runs them."""
    from cnnlab.lab import _all  # noqa: F401  (imports every study module)

    return dict(_REGISTRY)
