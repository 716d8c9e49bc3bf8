"""Binary runs (good vs. defective): train one logit, then judge it by the defects it lets through.

``train_binary`` loads a two-class folder (grouped split when the data names
groups), trains with ``BCEWithLogitsLoss`` (class imbalance handled by a
positive weight, a balanced sampler, or not at all; focal loss optional),
scores the validation and test splits, chooses a threshold on validation by
each policy of :mod:`cnnlab.diagnose.thresholds` and reports it on test.

A binary run directory holds what an image run holds (``config.json`` with
``"task": "binary"``, ``metrics.csv``, ``history.json``, ``curves.png``,
``checkpoint.pt``, ``model.safetensors``, ``summary.json``) and:

- ``scores.npz``: validation and test scores (probabilities) and targets, so
  ``evaluate_binary`` can re-choose thresholds without the data;
- ``thresholds.json``: the curves, areas and every policy's numbers;
- ``pr-roc.png``: precision-recall and ROC curves, validation and test, with
  each policy's operating point on test;
- ``confusion-test.png``: the test confusion matrix at the minimum-recall
  threshold.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab._util import CnnlabError, atomic_path, seed_everything, write_json_atomic
from cnnlab.augment import build_augment
from cnnlab.data import ArrayDataset
from cnnlab.data.binary import CONTRASTS, GROUP_COLUMN, BinarySplits, load_binary
from cnnlab.diagnose import fit_verdict
from cnnlab.diagnose.thresholds import PARTS, PolicySettings, ThresholdReport, threshold_report
from cnnlab.models import build_model
from cnnlab.report.figures import save_confusion
from cnnlab.runs.image import CurvesCallback, check_writable
from cnnlab.train import BinaryTask, Callback, Trainer, TrainConfig, predict_logits

log = logging.getLogger(__name__)

IMBALANCE = ("pos_weight", "sampler", "none")
SCORES_FILE = "scores.npz"
THRESHOLDS_FILE = "thresholds.json"


@dataclass
class BinarySpec:
    """What a binary run trains on, how it handles imbalance, and how thresholds are judged.

    ``imbalance``: ``pos_weight`` (the default) multiplies the loss of each
    positive by negatives/positives of the training split; ``sampler``
    draws class-balanced batches (see :class:`BalancedSampler`); ``none``
    trains on the data as it is. ``focal_gamma`` > 0 uses the focal loss.
    ``defect_rate`` is the share of defective parts the line sees; ``None``
    takes the share of positives in the data (all splits together).
    ``contrast="per_image"`` standardises each image on its own
    (:func:`cnnlab.data.binary.per_image_contrast`).
    """

    data: str = "defects"
    positive: str = "defective"
    model: str = "small_cnn"
    model_options: dict[str, Any] = field(default_factory=dict)
    size: int = 64
    channels: int | None = None
    contrast: str = "none"
    augment: str | None = None
    imbalance: str = "pos_weight"
    focal_gamma: float = 0.0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    group_column: str = GROUP_COLUMN
    skip_bad: bool = False
    min_recall: float = 0.99
    min_precision: float = 0.95
    cost_escape: float = 10.0
    cost_false_alarm: float = 1.0
    defect_rate: float | None = None

    def __post_init__(self) -> None:
        if self.imbalance not in IMBALANCE:
            raise CnnlabError(f"--imbalance {self.imbalance!r} is unknown; use one of "
                              f"{', '.join(IMBALANCE)}")
        if self.focal_gamma < 0:
            raise CnnlabError(f"--focal-gamma must be >= 0, got {self.focal_gamma}")
        if self.contrast not in CONTRASTS:
            raise CnnlabError(f"--contrast {self.contrast!r} is unknown; use one of "
                              f"{', '.join(CONTRASTS)}")
        if not (isinstance(self.size, int) and self.size >= 8):
            raise CnnlabError(f"size must be a whole number of pixels >= 8, got {self.size!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BinarySpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class BalancedSampler(Callback):
    """Each epoch, trains on a fresh class-balanced draw of the training images.

    At the start of an epoch the trainer's training tensors are replaced by
    ``N`` images drawn with replacement, half positives and half negatives
    (``N`` = the training split's size), and restored after the epoch's last
    step, so the per-epoch train-subset and validation metrics are measured
    on the real data. The draw keeps ``N``, so the steps per epoch and the
    learning-rate schedule built from them stay as configured; growing the
    epoch to ``2 x negatives`` would not. The draw is seeded by the run seed
    and the epoch number, so a resumed run draws the same images.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.original: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_step = -1

    def on_fit_start(self, trainer: Trainer) -> None:
        self.original = (trainer.train_inputs, trainer.train_targets)
        targets = trainer.train_targets.reshape(-1).cpu()
        self.positives = torch.nonzero(targets > 0.5).flatten()
        self.negatives = torch.nonzero(targets <= 0.5).flatten()
        if len(self.positives) == 0 or len(self.negatives) == 0:
            raise CnnlabError("the balanced sampler needs positives and negatives in the "
                              "training split")

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        count = len(self.original[0])
        half = count // 2
        positive = self.positives[torch.randint(len(self.positives), (half,),
                                                generator=generator)]
        negative = self.negatives[torch.randint(len(self.negatives), (count - half,),
                                                generator=generator)]
        index = torch.cat([positive, negative]).to(self.original[0].device)
        trainer.train_inputs = self.original[0][index]
        trainer.train_targets = self.original[1][index]
        self.last_step = trainer.global_step + trainer.steps_per_epoch

    def on_step_end(self, trainer: Trainer, step: int, loss: torch.Tensor) -> None:
        if step == self.last_step:
            self.restore(trainer)

    def on_fit_end(self, trainer: Trainer, result) -> None:
        self.restore(trainer)

    def restore(self, trainer: Trainer) -> None:
        if self.original is not None:
            trainer.train_inputs, trainer.train_targets = self.original


def build_binary_model(spec: BinarySpec, in_channels: int) -> torch.nn.Module:
    """The spec's model with one output logit."""
    options = dict(spec.model_options)
    options["num_classes"] = 1
    options.setdefault("in_channels", in_channels)
    if spec.model == "lenet5":
        options.setdefault("input_size", spec.size)
    return build_model(spec.model, **options)


def binary_task(spec: BinarySpec, train: ArrayDataset) -> tuple[BinaryTask, float | None]:
    """The loss for the spec, and the positive weight used (negatives/positives of train)."""
    positives = float(train.targets.sum())
    negatives = float(len(train)) - positives
    pos_weight = negatives / positives if spec.imbalance == "pos_weight" else None
    return BinaryTask(pos_weight=pos_weight, focal_gamma=spec.focal_gamma), pos_weight


def train_binary(
    data: str = "defects",
    positive: str = "defective",
    out: str | Path | None = None,
    *,
    model: str = "small_cnn",
    model_options: dict[str, Any] | None = None,
    size: int = 64,
    channels: int | None = None,
    contrast: str = "none",
    augment: str | None = None,
    imbalance: str = "pos_weight",
    focal_gamma: float = 0.0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    min_recall: float = 0.99,
    min_precision: float = 0.95,
    cost_escape: float = 10.0,
    cost_false_alarm: float = 1.0,
    defect_rate: float | None = None,
    skip_bad: bool = False,
    config: TrainConfig | None = None,
    epochs: int | None = None,
    callbacks: Sequence[Callback] = (),
    live_curves: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Train a good-vs-defective classifier and judge it by escapes and false alarms.

    ``data`` is a dataset name (``defects``) or a folder with two class
    folders (or a root with ``images/`` and ``labels.csv``); ``positive``
    names the class to catch. Images are resized to ``size`` x ``size``.
    Imbalance defaults to ``pos_weight`` (negatives/positives of the
    training split); ``sampler`` draws balanced epochs; ``none`` does
    neither. ``config`` holds the optimisation settings (default
    ``TrainConfig(epochs=10, batch_size=64)``); ``epochs`` overrides its
    epochs. Thresholds are chosen on validation and reported on test for
    every policy (see :func:`cnnlab.diagnose.thresholds.threshold_report`).
    ``live_curves`` redraws ``curves.png`` after every epoch (a second or
    two each on a busy CPU); the final figure is drawn either way.

    Returns the summary (also written to ``out/summary.json``): test
    PR-AUC (average precision) and ROC-AUC, the policy table, the split and
    the training record.

    Example::

        summary = train_binary("defects", "defective", "runs/defects", epochs=8,
                               min_recall=0.99)
        summary["policies"]["min_recall"]["escapes_per_parts"]
    """
    spec = BinarySpec(data=str(data), positive=positive, model=model,
                      model_options=dict(model_options or {}), size=size, channels=channels,
                      contrast=contrast, augment=augment, imbalance=imbalance,
                      focal_gamma=focal_gamma,
                      val_fraction=val_fraction, test_fraction=test_fraction, skip_bad=skip_bad,
                      min_recall=min_recall, min_precision=min_precision,
                      cost_escape=cost_escape, cost_false_alarm=cost_false_alarm,
                      defect_rate=defect_rate)
    config = config or TrainConfig(epochs=10, batch_size=64)
    if epochs is not None:
        config = TrainConfig.from_dict({**config.to_dict(), "epochs": epochs})
    return train_binary_spec(spec, config, out, callbacks=callbacks, live_curves=live_curves,
                             progress=progress)


def train_binary_spec(spec: BinarySpec, config: TrainConfig, out: str | Path | None, *,
                      resume: bool = False, callbacks: Sequence[Callback] = (),
                      live_curves: bool = True, progress: bool = False) -> dict[str, Any]:
    """:func:`train_binary` for a ready :class:`BinarySpec` and :class:`TrainConfig`.

    With ``resume=True`` the spec and training config are read back from
    ``out/config.json`` (only ``device`` and ``threads`` are taken from
    ``config``) and training continues from ``out/checkpoint.pt``.
    """
    run_dir = Path(out) if out is not None else None
    if resume:
        if run_dir is None:
            raise CnnlabError("resume needs the run directory to continue")
        stored = read_binary_config(run_dir)
        spec = BinarySpec.from_dict(stored["binary"])
        config = TrainConfig.from_dict({**stored["train"], "device": config.device,
                                        "threads": config.threads})
    if run_dir is not None:
        check_writable(run_dir)
    _settings(spec, 0.5)  # refuses bad targets and costs before an hour of training

    started = time.perf_counter()
    splits = load_binary(spec.data, spec.positive, size=spec.size, channels=spec.channels,
                         val_fraction=spec.val_fraction, test_fraction=spec.test_fraction,
                         seed=config.seed, group_column=spec.group_column,
                         contrast=spec.contrast, skip_bad=spec.skip_bad, progress=progress)
    log.info("split %s: %s", spec.data, splits.split_note)
    seed_everything(config.seed)  # the initial weights depend on the seed alone
    model = build_binary_model(spec, int(splits.train.inputs.shape[1]))
    task, pos_weight = binary_task(spec, splits.train)
    extra: list[Callback] = []
    if spec.imbalance == "sampler":
        extra.append(BalancedSampler(seed=config.seed))
    if run_dir is not None and live_curves:
        extra.append(CurvesCallback(run_dir / "curves.png", _title(spec)))
    trainer = Trainer(model, config, train=splits.train, val=splits.val,
                      augment=build_augment(spec.augment, seed=config.seed), task=task,
                      run_dir=run_dir, callbacks=[*extra, *callbacks],
                      extra_config=_stored_config(spec, splits, pos_weight))
    result = trainer.fit(resume=resume)

    scores = {name: _probabilities(trainer, getattr(splits, name)) for name in ("val", "test")}
    rate, rate_source = _defect_rate(spec, splits.positive_rate)
    report = threshold_report(splits.val.targets, scores["val"], splits.test.targets,
                              scores["test"], _settings(spec, rate),
                              defect_rate_source=rate_source)
    summary = dict(result.summary)
    summary.update(_report_summary(report, splits.describe(), splits.test.targets.numpy(),
                                   scores["test"], splits.test.meta["kinds"]))
    summary["total_seconds"] = time.perf_counter() - started
    summary["pos_weight"] = pos_weight
    summary["fit_verdict"] = fit_verdict(result.history, chance_accuracy=max(
        splits.positive_rate, 1 - splits.positive_rate)).to_dict()
    if run_dir is not None:
        _write_scores(run_dir, splits, scores)
        _finish_run_dir(run_dir, trainer, report, summary)
    return summary


def evaluate_binary(
    run_dir: str | Path,
    *,
    min_recall: float | None = None,
    min_precision: float | None = None,
    cost_escape: float | None = None,
    cost_false_alarm: float | None = None,
    defect_rate: float | None = None,
    rescore: bool = False,
    device: str = "auto",
    write_figures: bool = True,
) -> dict[str, Any]:
    """Re-choose every policy's threshold for a finished binary run, with new targets if given.

    Targets and costs default to those the run was trained with. Scores come
    from the run's ``scores.npz``; ``rescore=True`` (or a run without that
    file) loads the model and the data again and scores them afresh. Writes
    ``pr-roc.png`` and ``confusion-test.png`` (unless ``write_figures`` is
    false) and returns the table as a JSON-ready dict.
    """
    run_dir = Path(run_dir)
    config = read_binary_config(run_dir)
    stored = BinarySpec.from_dict(config["binary"])
    overrides = {"min_recall": min_recall, "min_precision": min_precision,
                 "cost_escape": cost_escape, "cost_false_alarm": cost_false_alarm,
                 "defect_rate": defect_rate}
    spec = BinarySpec.from_dict({**stored.to_dict(),
                                 **{k: v for k, v in overrides.items() if v is not None}})
    if rescore or not (run_dir / SCORES_FILE).exists():
        arrays = _rescore(run_dir, config, device)
    else:
        with np.load(run_dir / SCORES_FILE, allow_pickle=False) as stored_arrays:
            arrays = {key: stored_arrays[key] for key in stored_arrays.files}
    rate, rate_source = _defect_rate(spec, float(config["split"]["positive_rate"]))
    report = threshold_report(arrays["val_targets"], arrays["val_scores"],
                              arrays["test_targets"], arrays["test_scores"],
                              _settings(spec, rate), defect_rate_source=rate_source)
    kinds = arrays.get("test_kinds")
    result = {"run": str(run_dir), **_report_summary(
        report, config["split"], arrays["test_targets"], arrays["test_scores"],
        None if kinds is None else kinds.tolist())}
    if write_figures:
        result["figures"] = _write_figures(run_dir, report, config["data"]["classes"])
    return result


def read_binary_config(run_dir: str | Path) -> dict[str, Any]:
    """A binary run's ``config.json``, with a clear error for anything else."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise CnnlabError(f"{run_dir} is not a cnnlab run (no config.json); pass a run "
                          "directory written by cnnlab train --task binary")
    config = json.loads(path.read_text())
    if config.get("task") != "binary":
        raise CnnlabError(f"{run_dir} is a {config.get('task', 'classify')!r} run, not a "
                          "binary one; use cnnlab evaluate without binary options")
    return config


def load_binary_model(run_dir: str | Path, device: str = "cpu"
                      ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a binary run's model and load ``model.safetensors``; returns ``(model, config)``."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    config = read_binary_config(run_dir)
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        raise CnnlabError(f"{run_dir} has no model.safetensors; the run did not finish")
    spec = BinarySpec.from_dict(config["binary"])
    model = build_binary_model(spec, int(config["binary_input"]["channels"]))
    model.load_state_dict(load_file(str(weights), device=device))
    return model.to(device), config


def policy_table_text(result: dict[str, Any]) -> str:
    """The policy table of ``train_binary`` / ``evaluate_binary`` as fixed-column text."""
    test, validation = result["test"], result["validation"]
    settings, parts = result["settings"], result["settings"]["parts"]
    lines = [
        f"test: {test['positives'] + test['negatives']} images ({test['positives']} positive), "
        f"PR-AUC (average precision) {test['average_precision']:.3f}, "
        f"ROC-AUC {test['roc_auc']:.3f}",
        f"validation: {validation['positives'] + validation['negatives']} images "
        f"({validation['positives']} positive), PR-AUC {validation['average_precision']:.3f}, "
        f"ROC-AUC {validation['roc_auc']:.3f}",
        f"split: {result['split']['split_note']}",
        f"per {parts:,} parts at defect rate {settings['defect_rate']:.4f} "
        f"({result['defect_rate_source']}); thresholds chosen on validation, counted on test",
        "",
        f"{'policy':<14}{'threshold':>10}{'precision':>10}{'recall':>8}{'specif.':>8}"
        f"{'escapes':>9}{'discards':>9}  target",
    ]
    notes = []
    for name, policy in result["policies"].items():
        t = policy["test"]
        target = ""
        if policy["met_on_test"] is not None:
            target = "met on test" if policy["met_on_test"] else "MISSED on test"
        lines.append(f"{name:<14}{policy['threshold']:>10.4f}{t['precision']:>10.3f}"
                     f"{t['recall']:>8.3f}{t['specificity']:>8.3f}"
                     f"{policy['escapes_per_parts']:>9.1f}{policy['discards_per_parts']:>9.1f}"
                     f"  {target}")
        note = f"  {name}: {policy['rule']}" + (f"; {policy['note']}" if policy["note"] else "")
        missed = policy.get("test_missed_by_kind")
        if missed:
            note += "; test positives missed by kind: " + ", ".join(
                f"{kind} {count}" for kind, count in missed.items())
        notes.append(note)
    lines += ["", "escapes: defective parts passed; discards: good parts thrown away", *notes]
    return "\n".join(lines)


# ---- helpers ---------------------------------------------------------------------------------

def _settings(spec: BinarySpec, rate: float) -> PolicySettings:
    return PolicySettings(defect_rate=rate, min_recall=spec.min_recall,
                          min_precision=spec.min_precision, cost_escape=spec.cost_escape,
                          cost_false_alarm=spec.cost_false_alarm)


def _defect_rate(spec: BinarySpec, data_rate: float) -> tuple[float, str]:
    if spec.defect_rate is not None:
        return spec.defect_rate, "given"
    return data_rate, (f"the share of {spec.positive!r} images in the data; pass defect_rate "
                       "for the rate of the real line")


@torch.no_grad()
def _probabilities(trainer: Trainer, data: ArrayDataset) -> np.ndarray:
    logits = predict_logits(trainer.model, data, device=trainer.device, mean=trainer.mean,
                            std=trainer.std)
    return torch.sigmoid(logits.reshape(-1).double()).numpy()


def _stored_config(spec: BinarySpec, splits: BinarySplits, pos_weight: float | None
                   ) -> dict[str, Any]:
    # "run" mirrors RunSpec's fields, so tools that read image runs can rebuild the model.
    options = {**spec.model_options, "num_classes": 1,
               "in_channels": int(splits.train.inputs.shape[1])}
    return {"task": "binary", "binary": spec.to_dict(),
            "binary_input": {"channels": int(splits.train.inputs.shape[1]), "size": spec.size,
                             "pos_weight": pos_weight},
            "split": splits.describe(),
            "run": {"model": spec.model, "model_options": options, "data": spec.data,
                    "augment": spec.augment, "limit": None, "validation": spec.val_fraction,
                    "resize": spec.size, "skip_bad": spec.skip_bad, "evaluate_test": True}}


def _report_summary(report: ThresholdReport, split: dict[str, Any], test_targets: np.ndarray,
                    test_scores: np.ndarray, test_kinds: list[str] | None) -> dict[str, Any]:
    """The report without curve points, each policy with its missed test positives by kind."""
    brief = report.to_dict(curves=False)
    policies = {p["name"]: p for p in brief["policies"]}
    if test_kinds is not None:
        # Which kinds of defect escape tells more than how many: one kind may always escape.
        positive = np.asarray(test_targets).reshape(-1) == 1
        kinds = np.asarray(test_kinds)[positive]
        scores = np.asarray(test_scores).reshape(-1)[positive]
        for policy in policies.values():
            missed = kinds[scores < policy["threshold"]]
            names, counts = np.unique(missed, return_counts=True)
            policy["test_missed_by_kind"] = {str(n): int(c) for n, c in zip(names, counts)}
    return {"task": "binary", "settings": brief["settings"],
            "defect_rate_source": brief["defect_rate_source"], "split": split,
            "validation": brief["validation"], "test": brief["test"], "policies": policies}


def _write_scores(run_dir: Path, splits: BinarySplits, scores: dict[str, np.ndarray]) -> None:
    with atomic_path(run_dir / SCORES_FILE) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, val_scores=scores["val"], test_scores=scores["test"],
                     test_kinds=np.asarray(splits.test.meta["kinds"], dtype=str),
                     val_targets=splits.val.targets.numpy().astype(np.int64),
                     test_targets=splits.test.targets.numpy().astype(np.int64))


def _rescore(run_dir: Path, config: dict[str, Any], device: str) -> dict[str, np.ndarray]:
    """Scores from the saved model on the run's own split (same data, size, seed)."""
    from cnnlab._util import resolve_device

    target = resolve_device(device)
    model, _ = load_binary_model(run_dir, str(target))
    spec = BinarySpec.from_dict(config["binary"])
    splits = load_binary(spec.data, spec.positive, size=spec.size, channels=spec.channels,
                         val_fraction=spec.val_fraction, test_fraction=spec.test_fraction,
                         seed=config["train"]["seed"], group_column=spec.group_column,
                         contrast=spec.contrast, skip_bad=spec.skip_bad)
    arrays = {}
    for name in ("val", "test"):
        part = getattr(splits, name)
        logits = predict_logits(model, part, device=target)
        arrays[f"{name}_scores"] = torch.sigmoid(logits.reshape(-1).double()).numpy()
        arrays[f"{name}_targets"] = part.targets.numpy().astype(np.int64)
    arrays["test_kinds"] = np.asarray(splits.test.meta["kinds"], dtype=str)
    return arrays


def _finish_run_dir(run_dir: Path, trainer: Trainer, report: ThresholdReport,
                    summary: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from cnnlab.report.figures import save_curves

    with atomic_path(run_dir / "model.safetensors") as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, str(tmp))
    spec = BinarySpec.from_dict(json.loads((run_dir / "config.json").read_text())["binary"])
    save_curves(trainer.history, run_dir / "curves.png", title=_title(spec), train="fit")
    write_json_atomic(run_dir / THRESHOLDS_FILE, report.to_dict(curves=True))
    summary["figures"] = _write_figures(run_dir, report, trainer.train_data.classes)
    write_json_atomic(run_dir / "summary.json", summary)


def _title(spec: BinarySpec) -> str:
    return (f"{spec.model} on {Path(spec.data).name} ({spec.positive} vs rest), "
            f"imbalance: {spec.imbalance}")


def _write_figures(run_dir: Path, report: ThresholdReport, classes: list[str]) -> dict[str, str]:
    recall_policy = report.policy("min_recall")
    confusion = save_confusion(
        np.asarray(recall_policy.test["matrix"]), classes, run_dir / "confusion-test.png",
        title=f"test at the min-recall threshold {recall_policy.threshold:.3g}")
    curves = save_pr_roc(report, run_dir / "pr-roc.png")
    return {"pr_roc": str(curves), "confusion": str(confusion)}


def save_pr_roc(report: ThresholdReport, path: str | Path, title: str = "") -> Path:
    """Precision-recall and ROC curves (validation dashed, test solid) with policy points on test.

    Drawn here rather than in the report layer's figure helpers because the
    points come from a :class:`ThresholdReport`; it uses the same Agg canvas
    and atomic write.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.8), dpi=100, layout="constrained")
    pr_axes, roc_axes = figure.subplots(1, 2)
    for label, curves, style in (("validation", report.validation_curves, "--"),
                                 ("test", report.test_curves, "-")):
        pr, roc = curves["pr"], curves["roc"]
        pr_axes.step(pr["recall"], pr["precision"], where="post", linestyle=style,
                     label=f"{label} (AP {curves['average_precision']:.3f})")
        roc_axes.plot(roc["fpr"], roc["tpr"], linestyle=style,
                      label=f"{label} (AUC {curves['roc_auc']:.3f})")
    pr_axes.axhline(report.test_curves["positive_rate"], color="grey", linewidth=0.8,
                    linestyle=":", label="chance (positive share of test)")
    roc_axes.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    markers = "osD^v"
    for index, policy in enumerate(report.policies):
        test = policy.test
        name = f"{policy.name} (t={policy.threshold:.3g})"
        pr_axes.plot(test["recall"], test["precision"], markers[index % 5], color="black",
                     markerfacecolor="none", label=name)
        roc_axes.plot(1 - test["specificity"], test["recall"], markers[index % 5],
                      color="black", markerfacecolor="none", label=name)
    pr_axes.set(xlabel="recall (share of defects caught)", ylabel="precision",
                xlim=(0, 1.02), ylim=(0, 1.02), title="precision-recall")
    roc_axes.set(xlabel="false-alarm rate (1 - specificity)", ylabel="recall",
                 xlim=(-0.02, 1), ylim=(0, 1.02), title="ROC")
    for axes in (pr_axes, roc_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small", loc="lower left" if axes is pr_axes else "lower right")
    if title:
        figure.suptitle(title.replace("$", r"\$"))
    FigureCanvasAgg(figure)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path
