"""What the report renders: a lab's study entries plus the lab's provenance.

The report layer sits below the lab, so it never sees a ``Study`` object. The
lab hands down plain data: each study's result as the dictionary that
``StudyResult.to_dict()`` returns (title, question, setup, tables, figures,
findings, numbers), wrapped in a :class:`StudyEntry` that says how the run
went. The same dictionaries are written to ``results.json``, so the HTML,
the Markdown and the JSON all come from one source.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("ok", "failed", "pending")
"""``ok``: the study returned a result; ``failed``: it raised (``error`` says what);
``pending``: not run yet (only in the report written part-way through a lab)."""


@dataclass
class StudyEntry:
    """One study in a lab report.

    ``result`` is the study's ``StudyResult.to_dict()`` (``None`` unless
    ``status == "ok"``); its figure paths are relative to ``folder`` or
    absolute. ``folder`` is the study's output folder, relative to the report
    folder (``studies/<name>``). ``cached`` is true when the result was reused
    from an earlier lab; ``wall_seconds`` is then the time that earlier run took, and
    ``versions`` the library versions it ran with.
    """

    name: str
    title: str
    question: str
    status: str
    budget_seconds: float | None = None
    wall_seconds: float = 0.0
    cached: bool = False
    folder: str = ""
    result: dict[str, Any] | None = None
    error: str = ""
    traceback: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")

    @property
    def over_budget(self) -> bool:
        return bool(self.budget_seconds) and self.wall_seconds > float(self.budget_seconds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Provenance:
    """Where the numbers came from: code, command, machine, time and data.

    ``data_sources`` maps a dataset name to its description (at least
    ``checksum``; usually also ``path``, ``files``, ``bytes`` and the studies
    that read it). ``machine`` holds CPU model, cores, memory, GPUs and OS
    (see :func:`cnnlab.report.provenance.machine_info`).
    """

    cnnlab_version: str
    command: str
    profile: str
    seed: int
    device: str = "auto"
    started_at: str = ""
    finished_at: str = ""
    wall_seconds: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    data_sources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabResult:
    """A finished (or part-finished) lab: its studies in run order and its provenance.

    ``out_dir`` is the report folder; ``files`` maps ``index.html``,
    ``report.md`` and ``results.json`` to their paths once written.
    """

    studies: list[StudyEntry]
    provenance: Provenance
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[StudyEntry]:
        return [entry for entry in self.studies if entry.status == "failed"]

    @property
    def ok(self) -> bool:
        """True when every study finished (none failed, none pending)."""
        return all(entry.status == "ok" for entry in self.studies)

    @property
    def exit_code(self) -> int:
        """The CLI's exit status: 0 when every study finished, 1 otherwise."""
        return 0 if self.ok else 1

    def study(self, name: str) -> StudyEntry:
        for entry in self.studies:
            if entry.name == name:
                return entry
        raise KeyError(name)
