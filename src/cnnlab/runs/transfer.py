"""Transfer-learning runs: a pretrained backbone, a new head, and a cache of frozen features.

``train_transfer`` leaves the same run directory as an image-classification
run (config.json, metrics.csv, history.json, curves.png, summary.json,
checkpoint.pt, model.safetensors), so ``cnnlab evaluate RUN`` works on it:
config.json's ``run`` section names the registered ``transfer`` model and
its options, and a ``transfer`` section records the transfer spec, where
the weights came from, their hash and whether features were cached.

With a frozen backbone and no augmentation the backbone computes each
image's pooled features exactly once (:class:`FeatureCache`, in memory and
on disk), and the head trains on those features through the ordinary
:class:`~cnnlab.train.Trainer`: ten epochs of a linear head then cost about
one pass of the backbone instead of ten. ``checkpoint.pt`` then holds the
head alone; ``model.safetensors`` always holds the whole model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from cnnlab._util import (
    CnnlabError,
    atomic_path,
    resolve_device,
    seed_everything,
    write_json_atomic,
)
from cnnlab.augment import build_augment
from cnnlab.data import ArrayDataset, cache_dir, find_dataset, load_images
from cnnlab.diagnose import fit_verdict
from cnnlab.models.backbones import TransferModel, build_transfer_model
from cnnlab.report.figures import save_curves
from cnnlab.runs.image import CurvesCallback, Datasets, RunSpec, check_writable, load_datasets
from cnnlab.train import Callback, RunResult, TrainConfig, Trainer, evaluate

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached layout or the pooling changes


@dataclass
class TransferSpec:
    """What to transfer from and to: everything except the optimisation hyperparameters.

    - ``backbone``: ``resnet18``/``resnet34``/``resnet50``/... or
      ``fast_resnet``; ``None`` takes it from a cnnlab run in ``weights``.
    - ``weights``: ``"imagenet"`` (torchvision's default weights from the
      torch hub cache), a ``.safetensors``/``.pt`` file, a cnnlab run
      directory, or ``"none"``.
    - ``resize``: the backbone's input size; images are resized on the
      device per batch (224 is the classic ImageNet recipe; smaller is
      cheaper). ``load_size`` resizes when the files are read (needed only
      for folders of mixed sizes).
    - ``layer``: the feature layer (torchvision name or Keras alias such
      as ``conv3_block4_out``); ``None`` is the final feature map.
    - ``head``: ``"linear"`` or ``"mlp"`` (256 ReLU units, ``dropout``).
    - ``freeze``: the backbone does not learn, batch-norm statistics included;
      ``fine_tune_from``: train from this stage on (``layer3``) with
      ``backbone_lr`` (default: a tenth of the head's learning rate); neither:
      fine-tune the whole backbone at ``backbone_lr``.
    - ``cache_features``: ``None`` caches wherever it applies (frozen, no
      augmentation); ``True`` insists (an error where it cannot apply);
      ``False`` never caches. ``feature_cache``: the folder for cached
      features (default: the cnnlab cache's ``features/``), or ``"memory"``.
    """

    backbone: str | None = "resnet18"
    weights: str | None = "imagenet"
    data: str = "cifar10"
    resize: int | None = None
    layer: str | None = None
    head: str = "linear"
    freeze: bool = False
    fine_tune_from: str | None = None
    backbone_lr: float | None = None
    cache_features: bool | None = None
    feature_cache: str | None = None
    hidden_units: int = 256
    dropout: float = 0.5
    backbone_options: dict[str, Any] = field(default_factory=dict)
    augment: str | None = None
    limit: int | None = None
    validation: float | int = 0.1
    load_size: int | None = None
    skip_bad: bool = False
    evaluate_test: bool = True
    download: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- the frozen-feature cache -------------------------------------------------------------


def data_fingerprint(data: ArrayDataset) -> str:
    """sha256 (16 hex digits) of a dataset's inputs: shape, dtype and every byte."""
    digest = hashlib.sha256(f"{tuple(data.inputs.shape)} {data.inputs.dtype}".encode())
    inputs = data.inputs.detach().cpu().contiguous()
    chunk = 4096
    for start in range(0, len(inputs), chunk):
        digest.update(inputs[start:start + chunk].numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def extract_features(model: TransferModel, data: ArrayDataset | torch.Tensor,
                     batch_size: int = 256, device: str | torch.device = "auto",
                     progress: bool = False) -> torch.Tensor:
    """Pooled backbone features [N, C] (float32, on the CPU) for every image, in eval mode.

    uint8 images are scaled to [0, 1]; the model's adapter resizes and
    normalises them as in training.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    inputs = data.inputs if isinstance(data, ArrayDataset) else data
    was_training = model.training
    model.to(device).eval()
    outputs = []
    with _progress(progress, "computing backbone features", len(inputs)) as advance:
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size].to(device)
            batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
            outputs.append(model.encode(batch).float().cpu())
            advance(len(batch))
    model.train(was_training)
    if not outputs:
        return torch.zeros(0, 0)
    return torch.cat(outputs)


class _progress:
    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self.enabled, self.description, self.total = enabled, description, total

    def __enter__(self):
        from rich.console import Console

        # Off the terminal (a log file, a pipe) a transient bar would leave blank lines.
        self.enabled = self.enabled and Console().is_terminal
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.__enter__()
        task = self.bar.add_task(self.description, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


class FeatureCache:
    """Pooled frozen-backbone features, kept in memory and (optionally) in a folder.

    An entry's key hashes the backbone and its options, the hash of its
    weights (batch-norm statistics included), the layer, the input size,
    the normalisation and a fingerprint of the images, so a change to any of
    them computes anew instead of reading stale features. The in-memory part
    is shared within the process (a study that trains several heads on one
    backbone computes its features once) and holds the last
    ``memory_entries`` entries.
    """

    _memory: ClassVar[OrderedDict[str, torch.Tensor]] = OrderedDict()
    memory_entries: ClassVar[int] = 8

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.events: list[dict[str, Any]] = []

    @staticmethod
    def key(model: TransferModel, data: ArrayDataset) -> tuple[str, dict[str, Any]]:
        options = model.options
        fields = {
            "format": CACHE_FORMAT, "backbone": options["backbone"],
            "backbone_options": options["backbone_options"],
            "weights_hash": model.provenance["weights_hash"], "layer": model.layer,
            "resize": options["resize"], "mean": options["mean"], "std": options["std"],
            "pooling": "global-average", "data": data_fingerprint(data),
        }
        text = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24], fields

    def features(self, model: TransferModel, data: ArrayDataset, *, split: str = "",
                 batch_size: int = 256, device: str | torch.device = "auto",
                 progress: bool = False) -> torch.Tensor:
        """The features of ``data``: from memory, from disk, or computed once and stored."""
        key, fields = self.key(model, data)
        started = time.perf_counter()
        features, source = self._lookup(key, len(data))
        if features is None:
            features = extract_features(model, data, batch_size, device, progress)
            source = "computed"
            self._store(key, fields, features)
        self._remember(key, features)
        seconds = time.perf_counter() - started
        self.events.append({"split": split, "key": key, "source": source, "samples": len(data),
                            "feature_size": int(features.shape[1]) if features.dim() == 2
                            else 0, "seconds": seconds})
        log.info("%s features of %d images (%s): %s in %.1f s", split or "the", len(data),
                 key, source, seconds)
        return features

    def _lookup(self, key: str, count: int) -> tuple[torch.Tensor | None, str]:
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key], "memory"
        path = self._path(key)
        if path is None or not path.exists():
            return None, ""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            features = load_file(str(path))["features"]
        except (SafetensorError, OSError, KeyError) as error:  # damaged: recompute, not trust
            log.warning("feature cache %s is unreadable (%s); computing again", path, error)
            return None, ""
        if len(features) != count:
            log.warning("feature cache %s holds %d rows for %d images; computing again", path,
                        len(features), count)
            return None, ""
        return features, "disk"

    def _store(self, key: str, fields: dict[str, Any], features: torch.Tensor) -> None:
        path = self._path(key)
        if path is None:
            return
        from safetensors.torch import save_file

        try:
            with atomic_path(path) as tmp:
                save_file({"features": features.contiguous()}, str(tmp),
                          metadata={"key": json.dumps(fields, sort_keys=True)})
        except OSError as error:  # a full or read-only disk costs speed next time, not the run
            log.warning("could not write the feature cache %s (%s); kept in memory only", path,
                        error)

    def _remember(self, key: str, features: torch.Tensor) -> None:
        self._memory[key] = features
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_entries:
            self._memory.popitem(last=False)

    def _path(self, key: str) -> Path | None:
        return self.directory / f"{key}.safetensors" if self.directory is not None else None

    @classmethod
    def clear_memory(cls) -> None:
        cls._memory.clear()


def default_feature_cache(setting: str | None) -> FeatureCache:
    """``None``: the cnnlab cache's ``features/`` folder; ``"memory"``: no files; else a folder."""
    if setting == "memory":
        return FeatureCache(None)
    return FeatureCache(Path(setting) if setting else cache_dir() / "features")


def cache_applies(spec: TransferSpec) -> bool:
    """Whether the frozen-feature cache is used for ``spec`` (errors where it was demanded)."""
    if spec.cache_features is False:
        return False
    if not spec.freeze:
        if spec.cache_features:
            raise CnnlabError("--cache-features needs --freeze: a backbone that learns "
                              "changes its features every step")
        return False
    if spec.augment is not None:
        message = (f"the feature cache cannot be used with augmentation (--augment "
                   f"{spec.augment}): every epoch shows each image differently, so the frozen "
                   "backbone must run on every batch")
        if spec.cache_features:
            raise CnnlabError(message + "; drop --cache-features or the augmentation")
        warnings.warn(message + "; training without the cache (about one backbone pass per "
                      "epoch)", stacklevel=3)
        return False
    return True


# ---- the run ------------------------------------------------------------------------------


def train_transfer(spec: TransferSpec, config: TrainConfig, out: str | Path | None, *,
                   resume: bool = False, callbacks: Sequence[Callback] = (),
                   progress: bool = False) -> RunResult:
    """Train a new head (and optionally fine-tune the backbone) and leave a run directory.

    Library form of ``cnnlab train --model resnet50 --weights imagenet|PATH|runs/NAME|none
    --resize 224 --freeze --head linear|mlp --layer conv3_block4_out --fine-tune-from layer3
    --backbone-lr 1e-4 --cache-features/--no-cache-features``.

    Example::

        spec = TransferSpec(backbone=None, weights="runs/pretrain", data="cifar10",
                            layer="blocks.1", head="mlp", freeze=True)
        result = train_transfer(spec, TrainConfig(epochs=20), "runs/transfer")
        result.summary["test"]["accuracy"]

    ``result.model`` is the whole :class:`TransferModel`; ``result.summary``
    adds test metrics, the fit verdict, the weights used and the cache's
    events (which splits were computed, read from disk or from memory).
    """
    run_dir = Path(out) if out is not None else None
    if resume:
        spec, config = _stored_spec(run_dir, config)
    if run_dir is not None:
        check_writable(run_dir)
    started = time.perf_counter()

    data = _load_datasets(spec, config.seed, progress)
    seed_everything(config.seed)  # the head's initial weights depend on it
    model = _build_model(spec, data.train)
    # The model normalises its own input with the backbone's statistics, so the trainer
    # passes images through as [0, 1] floats.
    train, val = _raw(data.train), _raw(data.val)
    test = _raw(data.test) if data.test is not None else None

    use_cache = cache_applies(spec)
    record = {"spec": spec.to_dict(), "weights": model.provenance["weights"],
              "weights_hash": model.provenance["weights_hash"], "layer": model.layer,
              "feature_channels": model.provenance["feature_channels"],
              "cache_used": use_cache}
    extra = {"task": "classify", "run": _run_spec(spec, model).to_dict(), "transfer": record}
    curves = [ThrottledCurves(run_dir / "curves.png", _title(spec, model))] if run_dir else []
    if use_cache:
        cache = default_feature_cache(spec.feature_cache)
        device = resolve_device(config.device)
        features = {name: cache.features(model, split_data, split=name,
                                         batch_size=config.eval_batch_size, device=device,
                                         progress=progress)
                    for name, split_data in (("train", train), ("val", val), ("test", test))
                    if split_data is not None}
        head_data = {name: _feature_dataset(features[name], split_data, model)
                     for name, split_data in (("train", train), ("val", val), ("test", test))
                     if split_data is not None}
        trainer = Trainer(model.head, config, train=head_data["train"], val=head_data["val"],
                          run_dir=run_dir, callbacks=[*curves, *callbacks], extra_config=extra)
        result = trainer.fit(resume=resume)
        test_metrics = evaluate(model.head, head_data["test"], trainer.task,
                                device=trainer.device) if "test" in head_data else None
        cache_events = cache.events
    else:
        augment = build_augment(spec.augment, seed=config.seed)
        trainer = Trainer(model, config, train=train, val=val, augment=augment,
                          run_dir=run_dir, callbacks=[*curves, *callbacks], extra_config=extra,
                          param_groups=_param_groups(model, spec, config))
        result = trainer.fit(resume=resume)
        test_metrics = evaluate(model, test, trainer.task, device=trainer.device) \
            if test is not None else None
        cache_events = []

    result.model = model
    summary = dict(result.summary)
    summary["total_seconds"] = time.perf_counter() - started
    summary["feature_seconds"] = float(sum(event["seconds"] for event in cache_events))
    summary["fit_verdict"] = fit_verdict(result.history,
                                         chance_accuracy=1 / len(train.classes)).to_dict()
    if test_metrics is not None:
        summary["test"] = test_metrics
    summary["transfer"] = {**record, "cache_events": cache_events}
    summary["skipped_files"] = data.train.meta.get("skipped", [])
    result.summary = summary
    if run_dir is not None:
        _finish_run_dir(run_dir, model, result, _title(spec, model))
    return result


class ThrottledCurves(CurvesCallback):
    """Redraws ``curves.png`` at most every ``interval_seconds`` (the run's end draws it too).

    An epoch of a head on cached features takes milliseconds and drawing the
    figure about half a second, so redrawing every epoch would dominate.
    """

    def __init__(self, path: Path, title: str, interval_seconds: float = 10.0) -> None:
        super().__init__(path, title)
        self.interval_seconds = interval_seconds
        self.last_drawn = time.perf_counter()

    def on_epoch_end(self, trainer, epoch, row) -> None:
        if time.perf_counter() - self.last_drawn >= self.interval_seconds:
            super().on_epoch_end(trainer, epoch, row)
            self.last_drawn = time.perf_counter()


def _stored_spec(run_dir: Path | None, config: TrainConfig) -> tuple[TransferSpec, TrainConfig]:
    if run_dir is None or not (run_dir / "config.json").exists():
        raise CnnlabError(f"--resume {run_dir}: no config.json there; is it a cnnlab run?")
    stored = json.loads((run_dir / "config.json").read_text())
    if "transfer" not in stored:
        raise CnnlabError(f"--resume {run_dir}: not a transfer run; resume it without the "
                          "transfer options")
    train_options = stored["train"]
    train_options.update({k: v for k, v in config.to_dict().items()
                          if k in ("device", "threads")})
    return TransferSpec(**stored["transfer"]["spec"]), TrainConfig.from_dict(train_options)


def _load_datasets(spec: TransferSpec, seed: int, progress: bool) -> Datasets:
    """Train/validation split as for image runs; the test split unless it is the same data."""
    data = load_datasets(RunSpec(model="transfer", data=spec.data, limit=spec.limit,
                                 validation=spec.validation, resize=spec.load_size,
                                 skip_bad=spec.skip_bad, evaluate_test=False), seed, progress)
    if not spec.evaluate_test:
        return data
    root = find_dataset(spec.data)
    # A folder of class folders has no test split (load_images would answer with the training
    # images); an .npz file or CIFAR batch folder has one under the same source path.
    has_test = not root.is_dir() or (root / "test").is_dir() or any(
        (folder / "test_batch").exists() for folder in (root, root / "cifar-10-batches-py"))
    if not has_test:
        log.warning("no test split evaluated: %s has no test/ folder", root)
        return data
    test = load_images(spec.data, "test", size=spec.load_size, skip_bad=spec.skip_bad,
                       progress=progress)
    return Datasets(data.train, data.val, test)


def _build_model(spec: TransferSpec, train: ArrayDataset) -> TransferModel:
    random_weights = spec.weights is None or str(spec.weights).lower() == "none"
    # Random weights have no statistics of their own: normalise with the data's.
    mean, std = (train.mean, train.std) if random_weights else (None, None)
    return build_transfer_model(
        spec.backbone, spec.weights, num_classes=len(train.classes), layer=spec.layer,
        head=spec.head, resize=spec.resize, freeze=spec.freeze,
        fine_tune_from=spec.fine_tune_from, hidden_units=spec.hidden_units,
        dropout=spec.dropout, mean=mean, std=std, backbone_options=spec.backbone_options,
        download=spec.download)


def _raw(data: ArrayDataset) -> ArrayDataset:
    return replace(data, mean=None, std=None)


def _feature_dataset(features: torch.Tensor, data: ArrayDataset, model: TransferModel
                     ) -> ArrayDataset:
    return ArrayDataset(features, data.targets, data.classes,
                        source=f"{data.source} ({model.layer} features, cached)")


def _param_groups(model: TransferModel, spec: TransferSpec, config: TrainConfig
                  ) -> list[dict] | None:
    backbone = model.backbone_parameters()
    if not backbone:
        return None
    backbone_lr = spec.backbone_lr if spec.backbone_lr is not None else config.lr / 10
    log.info("fine-tuning %d backbone tensors at lr %.2e, the head at %.2e", len(backbone),
             backbone_lr, config.lr)
    # The head first: the trainer's history reports the first group's learning rate.
    return [{"params": list(model.head.parameters())},
            {"params": backbone, "lr": backbone_lr}]


def _run_spec(spec: TransferSpec, model: TransferModel) -> RunSpec:
    return RunSpec(model="transfer", model_options=model.options, data=spec.data,
                   augment=spec.augment, limit=spec.limit, validation=spec.validation,
                   resize=spec.load_size, skip_bad=spec.skip_bad,
                   evaluate_test=spec.evaluate_test)


def _title(spec: TransferSpec, model: TransferModel) -> str:
    mode = "frozen" if spec.freeze else (f"fine-tuned from {spec.fine_tune_from}"
                                         if spec.fine_tune_from else "fine-tuned")
    return (f"{model.options['backbone']} {mode} at {model.layer}, {spec.head} head, on "
            f"{Path(spec.data).name}")


def _finish_run_dir(run_dir: Path, model: TransferModel, result: RunResult, title: str
                    ) -> None:
    from safetensors.torch import save_file

    with atomic_path(run_dir / "model.safetensors") as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp))
    save_curves(result.history, run_dir / "curves.png", title=title, train="fit")
    if result.summary.get("skipped_files"):
        write_json_atomic(run_dir / "skipped.json", result.summary["skipped_files"])
    write_json_atomic(run_dir / "summary.json", result.summary)
