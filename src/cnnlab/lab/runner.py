"""The lab: run the registered studies in order and write one report.

Each study runs in its own folder ``<out>/studies/<name>`` with a
:class:`StudyContext`. A study that raises is recorded as failed, with its
error in the report, and the lab goes on with the others. A finished study
leaves ``result.json`` in its folder; the next lab with the same profile,
seed, cnnlab version and study source reuses it, so an interrupted lab picks
up where it stopped (``fresh=True`` runs everything again). Finer-grained
resumption, run by run, happens inside studies through ``ctx.run_cached``.
The report is rewritten after every study, so it can be opened mid-lab.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cnnlab import __version__
from cnnlab._util import (
    CnnlabError,
    library_versions,
    resolve_device,
    seed_everything,
    write_json_atomic,
)
from cnnlab.data import recording_datasets
from cnnlab.lab.study import PROFILES, Study, StudyContext, StudyResult, studies
from cnnlab.report import LabResult, Provenance, StudyEntry, machine_info, write_report
from cnnlab.report.provenance import data_source, gather_data_sources
from cnnlab.report.render import format_seconds

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"

__all__ = ["LabResult", "default_profile", "list_studies", "run_lab", "select_studies"]


def default_profile() -> str:
    """``full`` where a CUDA GPU is visible, else ``cpu``."""
    import torch

    return "full" if torch.cuda.is_available() else "cpu"


def list_studies(catalog: Mapping[str, Study] | None = None) -> list[dict[str, Any]]:
    """The studies in run order: name, title, question and budget seconds per profile."""
    catalog = studies() if catalog is None else catalog
    return [{"name": study.name, "title": study.title, "question": study.question,
             "budget_seconds": dict(study.budget_seconds)} for study in catalog.values()]


def select_studies(names: Sequence[str] | None,
                   catalog: Mapping[str, Study] | None = None) -> list[Study]:
    """The studies to run, in the catalog's order; unknown names raise with close matches."""
    catalog = studies() if catalog is None else catalog
    if not catalog:
        raise CnnlabError("no studies are registered: the study modules listed in "
                          "cnnlab/lab/_all.py are missing")
    if not names:
        return list(catalog.values())
    unknown = [name for name in names if name not in catalog]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(catalog), n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}?" if close else "no close match"
            hints.append(f"{name!r} ({hint})")
        raise CnnlabError(f"unknown study {', '.join(hints)}. Known studies: "
                          f"{', '.join(catalog)}. `cnnlab lab --list` describes them.")
    wanted = set(names)
    return [study for name, study in catalog.items() if name in wanted]


def run_lab(
    names: Sequence[str] | None = None,
    out_dir: str | os.PathLike = "lab-report",
    profile: str | None = None,
    fresh: bool = False,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    device: str = "auto",
    *,
    command: str | None = None,
    catalog: Mapping[str, Study] | None = None,
) -> LabResult:
    """Run studies and write ``index.html``, ``report.md`` and ``results.json`` to ``out_dir``.

    ``names`` picks studies (default: all, in the order of ``cnnlab/lab/_all.py``).
    ``profile`` sizes them: ``smoke`` (seconds, for tests), ``cpu`` (the
    default without a GPU) or ``full`` (the default with CUDA). A study that
    finished in an earlier lab with the same profile, seed, cnnlab version
    and study source is reused unless ``fresh``. A failing study is recorded
    and the others still run: check ``result.ok`` or ``result.exit_code``.
    ``command`` is the command line stated in the provenance; ``catalog``
    replaces the registered studies (for tests and custom labs).

    Example: ``run_lab(["gradients"], out_dir="report", profile="smoke")``.
    """
    selected = select_studies(names, catalog)
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise CnnlabError(f"profile {profile!r} is unknown; use one of {', '.join(PROFILES)}")
    resolved_device = resolve_device(device)  # a bad --device fails here, not per study
    if data_root is not None and not Path(data_root).is_dir():
        raise CnnlabError(f"--data-root {str(data_root)!r} is not a folder; pass the folder "
                          "that holds the datasets (e.g. the one with cifar10-jpeg/)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = _Announcer(progress)

    started = time.perf_counter()
    provenance = Provenance(
        cnnlab_version=__version__,
        command=command or _python_call(names, out, profile, fresh, seed, data_root, device),
        profile=profile,
        seed=seed,
        device=f"{resolved_device} ({device})" if device == "auto" else device,
        started_at=_now(),
        machine=machine_info(),
        versions=library_versions(),
    )
    entries = [StudyEntry(name=study.name, title=study.title, question=study.question,
                          status="pending", budget_seconds=study.budget_seconds.get(profile),
                          folder=f"studies/{study.name}") for study in selected]
    lab = LabResult(studies=entries, provenance=provenance, out_dir=out)
    total_budget = sum(entry.budget_seconds or 0 for entry in entries)
    say(f"cnnlab lab: {_count(len(selected), 'study', 'studies')}, profile {profile}, budget "
        f"{format_seconds(total_budget)}, report in {out}")

    for index, (study, entry) in enumerate(zip(selected, entries, strict=True), 1):
        say(f"[{index}/{len(selected)}] {study.name}: {study.title} "
            f"(budget {format_seconds(entry.budget_seconds)})")
        context = StudyContext(out_dir=out / entry.folder, profile=profile, seed=seed,
                               data_root=Path(data_root) if data_root else None, device=device,
                               progress=progress, fresh=fresh)
        _run_one(study, entry, context)
        say(f"    {_outcome_text(entry)}")
        _finish(lab, started)

    say(f"cnnlab lab: {sum(e.status == 'ok' for e in entries)} of {len(entries)} studies ok "
        f"in {format_seconds(provenance.wall_seconds)}; report: {lab.files['index.html']}")
    return lab


def _run_one(study: Study, entry: StudyEntry, context: StudyContext) -> None:
    """Run (or reuse) one study and fill in its entry; exceptions become a failed entry."""
    result_file = context.out_dir / RESULT_FILE
    stamp = _cache_stamp(study, context)
    if not context.fresh:
        stored = _load_cached(result_file, stamp)
        if stored is not None:
            entry.status, entry.cached = "ok", True
            entry.result = stored["result"]
            entry.wall_seconds = float(stored["wall_seconds"])
            entry.versions = stored.get("versions", {})
            log.debug("study %s: reusing the result finished at %s", study.name,
                     stored.get("finished_at", "?"))
            return

    # Each study starts from the same seed, so its numbers do not depend on what ran before.
    seed_everything(context.seed)
    started = time.perf_counter()
    try:
        with recording_datasets() as datasets_read:
            result = study.run(context)
        if not isinstance(result, StudyResult):
            raise TypeError(f"study {study.name} returned {type(result).__name__}, "
                            "expected a StudyResult")
        entry.wall_seconds = time.perf_counter() - started
        result.wall_seconds = entry.wall_seconds
        if datasets_read and "data_checksums" not in result.setup:
            result.setup["data_checksums"] = _checksums(datasets_read)
        entry.result = result.to_dict()
        entry.versions = library_versions()
        write_json_atomic(result_file, {**stamp, "finished_at": _now(),
                                        "wall_seconds": entry.wall_seconds,
                                        "versions": entry.versions, "result": entry.result})
        entry.status = "ok"
    except Exception as error:  # noqa: BLE001  (one study's failure must not stop the lab)
        entry.wall_seconds = time.perf_counter() - started
        entry.status, entry.result = "failed", None
        entry.error = f"{type(error).__name__}: {error}"
        entry.traceback = traceback.format_exc()
        # The announcer reports the failure; the traceback goes to the report and the debug log.
        log.debug("study %s failed:\n%s", study.name, entry.traceback)
        if result_file.exists():  # a stale result must not be reused next time
            result_file.unlink()


def _checksums(datasets: dict[str, Path]) -> dict[str, Any]:
    """Provenance rows for the datasets a study read (hashed once, then cached by listing)."""
    rows = {}
    for name, path in datasets.items():
        try:
            rows[name] = data_source(path)
        except (OSError, CnnlabError) as error:  # provenance must not fail a finished study
            log.warning("cannot checksum %s (%s): %s", name, path, error)
            rows[name] = {"path": str(path), "checksum": f"unavailable: {error}"}
    return rows


def _cache_stamp(study: Study, context: StudyContext) -> dict[str, Any]:
    """What must match for a stored study result to be reused."""
    return {"study": study.name, "profile": context.profile, "seed": context.seed,
            "cnnlab_version": __version__, "source_sha256": _source_digest(study)}


def _source_digest(study: Study) -> str:
    # An edited study must not be answered from its old result, even at the same version.
    try:
        source = inspect.getsource(inspect.getmodule(study.run) or study.run)
    except (OSError, TypeError):
        return ""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _load_cached(result_file: Path, stamp: dict[str, Any]) -> dict[str, Any] | None:
    import json

    if not result_file.exists():
        return None
    try:
        stored = json.loads(result_file.read_text())
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable %s (%s); the study runs again", result_file, error)
        return None
    changed = [key for key, value in stamp.items() if stored.get(key) != value]
    if changed or "result" not in stored:
        log.info("study %s: stored result differs in %s; running it again", stamp["study"],
                 ", ".join(changed) or "content")
        return None
    return stored


def _finish(lab: LabResult, started: float) -> None:
    """Update the provenance and (re)write the report."""
    provenance = lab.provenance
    provenance.finished_at = _now()
    provenance.wall_seconds = time.perf_counter() - started
    provenance.data_sources = gather_data_sources(
        (entry.name, (entry.result or {}).get("setup", {})) for entry in lab.studies)
    write_report(lab)


def _outcome_text(entry: StudyEntry) -> str:
    budget = entry.budget_seconds
    share = f" ({100 * entry.wall_seconds / budget:.0f}% of budget)" if budget else ""
    if entry.status == "failed":
        first_line = entry.error.splitlines()[0] if entry.error else "(no message)"
        return f"FAILED after {format_seconds(entry.wall_seconds)}: {first_line}"
    if entry.cached:
        return f"reused the earlier result (it took {format_seconds(entry.wall_seconds)})"
    over = "; OVER BUDGET" if entry.over_budget else ""
    return f"done in {format_seconds(entry.wall_seconds)}{share}{over}"


def _python_call(names, out, profile, fresh, seed, data_root, device) -> str:
    arguments = [f"names={list(names)!r}" if names else "", f"out_dir={str(out)!r}",
                 f"profile={profile!r}", "fresh=True" if fresh else "", f"seed={seed}",
                 f"data_root={str(data_root)!r}" if data_root else "",
                 f"device={device!r}" if device != "auto" else ""]
    return f"run_lab({', '.join(a for a in arguments if a)}) in {Path(sys.argv[0]).name}"


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


class _Announcer:
    """One line per step: on the terminal (rich, stderr) with progress, else to the log."""

    def __init__(self, progress: bool) -> None:
        self.console: Callable[[str], None] | None = None
        if progress:
            from rich.console import Console

            console = Console(stderr=True, highlight=False)
            self.console = lambda text: console.print(text, markup=False, soft_wrap=True)

    def __call__(self, text: str) -> None:
        if self.console is not None:
            self.console(text)
        else:
            log.info("%s", text)
