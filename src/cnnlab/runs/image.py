"""Image classification runs: ``cnnlab train`` and ``cnnlab evaluate`` for image data.

A run directory holds:

- ``config.json``: the resolved spec and training config (enough to rebuild the model);
- ``metrics.csv`` and ``history.json``: one row per epoch;
- ``curves.png``: accuracy and loss, train (un-augmented subset) and validation;
- ``summary.json``: test metrics, fit verdict, wall time, throughput, peak memory,
  library versions and seed;
- ``checkpoint.pt`` (resume) and ``model.safetensors`` (the trained weights).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnlab._util import CnnlabError, seed_everything, write_json_atomic
from cnnlab.augment import build_augment
from cnnlab.data import ArrayDataset, limit, load_images, split_validation
from cnnlab.diagnose import fit_verdict
from cnnlab.models import build_model
from cnnlab.report.figures import save_confusion, save_curves
from cnnlab.train import Callback, RunResult, Trainer, TrainConfig, evaluate, predict_logits
from cnnlab.train.distributed import is_main_process

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """What to train on what: everything except the optimisation hyperparameters.

    ``validation`` is carved from the training split (a count or a fraction);
    ``limit`` trains on a deterministic stratified subset of the training
    split (taken before the validation split) for quick trials.
    """

    model: str = "lenet5"
    model_options: dict[str, Any] = field(default_factory=dict)
    data: str = "cifar10"
    augment: str | None = None
    limit: int | None = None
    validation: float | int = 0.1
    resize: int | None = None
    skip_bad: bool = False
    evaluate_test: bool = True
    fit_subset_note: str = "train accuracy is measured on a fixed un-augmented subset"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Datasets:
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset | None


def load_datasets(spec: RunSpec, seed: int, progress: bool = False) -> Datasets:
    """Train/validation/test splits for a spec; normalisation statistics from the train part."""
    full = load_images(spec.data, "train", size=spec.resize, skip_bad=spec.skip_bad,
                       progress=progress)
    full = limit(full, spec.limit, seed=seed)
    train, val = split_validation(full, spec.validation, seed=seed)
    train = train.with_statistics()
    val.mean, val.std = train.mean, train.std
    test = None
    if spec.evaluate_test:
        try:
            test = load_images(spec.data, "test", size=spec.resize, skip_bad=spec.skip_bad,
                               progress=progress)
        except CnnlabError as error:
            log.warning("no test split evaluated: %s", error)
        if test is not None and not has_test_split(spec.data):
            test = None  # a single folder of classes has no separate test split
        if test is not None:
            test.mean, test.std = train.mean, train.std
    return Datasets(train, val, test)


def has_test_split(name_or_path: str) -> bool:
    """Whether a dataset has its own test split (``.npz``, CIFAR pickles, or a ``test/`` folder)."""
    from cnnlab.data import find_dataset
    from cnnlab.data.images import _find_cifar_batches

    root = find_dataset(name_or_path)
    if root.suffix == ".npz" or _find_cifar_batches(root) is not None:
        return True
    return (root / "test").is_dir()


def _model_for(spec: RunSpec, data: ArrayDataset) -> torch.nn.Module:
    options = dict(spec.model_options)
    options.setdefault("num_classes", len(data.classes))
    options.setdefault("in_channels", int(data.inputs.shape[1]))
    if spec.model == "lenet5":
        options.setdefault("input_size", int(data.inputs.shape[-1]))
    return build_model(spec.model, **options)


class CurvesCallback(Callback):
    """Redraws ``curves.png`` during a run, so a long run can be watched.

    Drawing takes a few hundred milliseconds, more than a whole epoch of a
    tiny run, so it happens at most every ``every_seconds``; the run's end
    always draws the final figure.
    """

    def __init__(self, path: Path, title: str, every_seconds: float = 20.0) -> None:
        self.path, self.title, self.every_seconds = path, title, every_seconds
        self.last_drawn = time.perf_counter()

    def on_epoch_end(self, trainer, epoch, row) -> None:
        if time.perf_counter() - self.last_drawn >= self.every_seconds:
            save_curves(trainer.history, self.path, title=self.title, train="fit")
            self.last_drawn = time.perf_counter()


def check_writable(run_dir: Path) -> None:
    """Fail before training, not after an hour, when the run directory cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"\0" * 1024 * 1024)  # 1 MiB: also catches a nearly full disk
        probe.unlink()
    except OSError as error:
        raise CnnlabError(f"cannot write to the run directory {run_dir} ({error.strerror}); "
                          "choose another --out or free some space") from None


def train_run(spec: RunSpec, config: TrainConfig, out: str | Path | None, *,
              resume: bool = False, callbacks: Sequence[Callback] = (),
              progress: bool = False) -> RunResult:
    """Train one image classifier and leave a complete run directory at ``out``.

    With ``resume=True`` the spec and config are read back from ``out`` and
    training continues from its checkpoint. Returns the trainer's result with
    ``summary`` extended by test metrics and the fit verdict.
    """
    run_dir = Path(out) if out is not None else None
    if resume:
        if run_dir is None or not (run_dir / "config.json").exists():
            raise CnnlabError(f"--resume {run_dir}: no config.json there; is it a cnnlab run?")
        stored = json.loads((run_dir / "config.json").read_text())
        spec = RunSpec(**stored["run"])
        train_options = stored["train"]
        train_options.update({k: v for k, v in config.to_dict().items()
                              if k in ("device", "threads")})
        config = TrainConfig.from_dict(train_options)
    writes_files = run_dir is not None and is_main_process()
    if writes_files:
        check_writable(run_dir)

    started = time.perf_counter()
    data = load_datasets(spec, config.seed, progress)
    seed_everything(config.seed)  # the initial weights depend on the seed alone
    model = _model_for(spec, data.train)
    augment = build_augment(spec.augment, seed=config.seed)
    augment_check = check_run_augment(augment, data.train, spec.augment)
    extra_callbacks = [CurvesCallback(run_dir / "curves.png", _title(spec))] if writes_files \
        else []
    trainer = Trainer(model, config, train=data.train, val=data.val, augment=augment,
                      run_dir=run_dir, callbacks=[*extra_callbacks, *callbacks],
                      extra_config={"run": spec.to_dict()})
    result = trainer.fit(resume=resume)

    summary = dict(result.summary)
    summary["total_seconds"] = time.perf_counter() - started
    summary["fit_verdict"] = fit_verdict(result.history,
                                         chance_accuracy=1 / len(data.train.classes)).to_dict()
    if data.test is not None:
        summary["test"] = evaluate(trainer.model, data.test, trainer.task,
                                   device=trainer.device)
    summary["skipped_files"] = data.train.meta.get("skipped", [])
    if augment_check is not None:
        summary["augment_check"] = augment_check
    result.summary = summary
    if writes_files:
        _finish_run_dir(run_dir, trainer, result)
    return result


# ---- augmentation sanity check (cnnlab.augment.sanity) ------------------------------------
AUGMENT_CHECK_IMAGES = 256  # a sample batch: enough to see a preset that changes nothing


def check_run_augment(augment, train: ArrayDataset, name: str | None) -> dict[str, Any] | None:
    """Warn before training when the augmenter leaves a sample of training images unchanged.

    Returns the check as a dict for ``summary.json`` (None without augmentation). The
    augmenter's random state is restored, so the run's batches are the same as unchecked.
    """
    if augment is None or not train.is_image:
        return None
    from cnnlab.augment.sanity import check_preset

    return check_preset(augment, train.inputs[:AUGMENT_CHECK_IMAGES], name=name).to_dict()


def _title(spec: RunSpec) -> str:
    augment = spec.augment or "none"
    return f"{spec.model} on {Path(spec.data).name}, augmentation: {augment}"


def _finish_run_dir(run_dir: Path, trainer: Trainer, result: RunResult) -> None:
    from safetensors.torch import save_file

    from cnnlab._util import atomic_path

    with atomic_path(run_dir / "model.safetensors") as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, str(tmp))
    save_curves(result.history, run_dir / "curves.png", title=_title(
        RunSpec(**json.loads((run_dir / "config.json").read_text())["run"])), train="fit")
    if result.summary.get("skipped_files"):
        write_json_atomic(run_dir / "skipped.json", result.summary["skipped_files"])
    write_json_atomic(run_dir / "summary.json", result.summary)


def load_run_model(run_dir: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a run's model from ``config.json`` and load its weights.

    The weights come from ``model.safetensors``, or from the checkpoint when the
    run stopped before finishing.

    Returns ``(model, config)``. Weights are read safely (safetensors, or
    ``weights_only=True`` for the checkpoint).
    """
    from safetensors.torch import load_file

    from cnnlab.train import load_checkpoint_file

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise CnnlabError(f"{run_dir} is not a cnnlab run (no config.json); pass a run directory "
                          "written by cnnlab train")
    config = json.loads(config_path.read_text())
    spec = RunSpec(**config["run"])
    data = config["data"]
    options = dict(spec.model_options)
    options.setdefault("num_classes", len(data["classes"]))
    if (run_dir / "model.safetensors").exists():
        state = load_file(str(run_dir / "model.safetensors"), device=device)
    elif (run_dir / "checkpoint.pt").exists():
        state = load_checkpoint_file(run_dir / "checkpoint.pt", device)["model"]
    else:
        raise CnnlabError(f"{run_dir} has no model.safetensors or checkpoint.pt; the run did not "
                          "finish an epoch")
    for key, value in state.items():
        if value.dim() == 4:  # the first convolution tells the input channels
            options.setdefault("in_channels", int(value.shape[1]))
            break
    if spec.model == "lenet5" and spec.resize:
        options.setdefault("input_size", spec.resize)
    model = build_model(spec.model, **options)
    model.load_state_dict(state)
    return model.to(device), config


def evaluate_run(run_dir: str | Path, split: str = "test", device: str = "auto",
                 write_figures: bool = True) -> dict[str, Any]:
    """Evaluate a finished run on a split: loss, accuracy, per-class accuracy, confusion matrix."""
    from cnnlab._util import resolve_device

    run_dir = Path(run_dir)
    target = resolve_device(device)
    model, config = load_run_model(run_dir, str(target))
    spec = RunSpec(**config["run"])
    data = load_images(spec.data, split, size=spec.resize, progress=False)
    data.mean = tuple(config["data"]["mean"]) if config["data"]["mean"] else None
    data.std = tuple(config["data"]["std"]) if config["data"]["std"] else None
    metrics = evaluate(model, data, device=target)
    predictions = predict_logits(model, data, device=target).argmax(dim=1)
    classes = data.classes
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.long)
    confusion.index_put_((data.targets.long(), predictions), torch.ones_like(predictions),
                         accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(dim=1).clamp_min(1).float()).tolist()
    result = {"run": str(run_dir), "split": split, "samples": len(data), **metrics,
              "per_class_accuracy": dict(zip(classes, per_class)),
              "confusion": confusion.tolist(), "classes": classes}
    if write_figures:
        save_confusion(confusion.numpy(), classes, run_dir / f"confusion-{split}.png",
                       title=f"confusion on {split}")
        result["confusion_figure"] = str(run_dir / f"confusion-{split}.png")
    return result
