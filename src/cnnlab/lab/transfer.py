"""Study "transfer": how much a pretrained backbone is worth when labels are few.

Offline machines cannot download ImageNet weights, so the study makes its
own pretrained backbone, honestly: cnnlab trains a small ResNet on five
CIFAR-10 classes (airplane, automobile, bird, cat, deer) and transfers it to
the other five (dog, frog, horse, ship, truck), of which only a few labelled
images per class are used. The same network trained from scratch on those
few labels is the baseline, with LeNet-5 beside it; the transfer rows are a
frozen backbone with a linear head on its final features, a frozen backbone
with an MLP head on an intermediate layer, and fine-tuning from a middle
stage with its own learning rate. Frozen rows train on cached features (the
backbone runs once per image); rows that train a network use flips, which
the frozen rows cannot (the cache needs fixed images). Where torchvision's
ImageNet weights for resnet18 are in the torch hub cache, a frozen resnet18
with a linear head is added and the setup says which file it used.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data import find_dataset, load_images
from cnnlab.data.arrays import ArrayDataset, stratified_indices
from cnnlab.lab.study import Figure, Study, StudyContext, StudyResult, Table, register
from cnnlab.models.backbones import hub_weights_path
from cnnlab.report.figures import save_bar
from cnnlab.runs import RunSpec, train_run
from cnnlab.runs.image import load_datasets
from cnnlab.runs.transfer import FeatureCache, TransferSpec, train_transfer
from cnnlab.train import TrainConfig, evaluate

log = logging.getLogger(__name__)

SOURCE_CLASSES = ("airplane", "automobile", "bird", "cat", "deer")
TARGET_CLASSES = ("dog", "frog", "horse", "ship", "truck")


def recipe(ctx: StudyContext) -> dict[str, Any]:
    """Every setting of the study, by profile, in one place."""
    return {
        "backbone": "fast_resnet",
        "backbone_options": {"width": ctx.pick(smoke=8, cpu=16, full=32)},
        # Pretraining on the five source classes (a cnnlab run, with flips).
        "pretrain_per_class": ctx.pick(smoke=40, cpu=2000, full=5000),
        "pretrain_epochs": ctx.pick(smoke=1, cpu=6, full=30),
        "pretrain_lr": 4e-3,  # Adam peak
        # One-cycle needs a few steps per phase; the smoke run has two steps in all.
        "pretrain_schedule": ctx.pick(smoke="cosine", cpu="onecycle", full="onecycle"),
        # The few-label target task.
        "labels_per_class": ctx.pick(smoke=[10], cpu=[20, 100], full=[20, 100, 500]),
        "validation_fraction": 0.1,  # of the labels, for the curves only (no model selection)
        "test_per_class": ctx.pick(smoke=20, cpu=500, full=1000),
        # Optimiser steps per run, not epochs: 20 labels per class are 3 batches an epoch.
        "train_steps": ctx.pick(smoke=4, cpu=300, full=1500),
        "head_steps": ctx.pick(smoke=4, cpu=600, full=1500),  # on cached features: cheap
        "batch_size": 32,
        "lr": 2e-3,
        "head_lr": 3e-3,
        "schedule": "cosine",
        "augment": "flip",  # for the rows that train a network; frozen rows cannot use it
        "intermediate_layer": "blocks.1",
        "fine_tune_from": "blocks.1",
        "backbone_lr": 5e-4,
        "imagenet_resize": ctx.pick(smoke=32, cpu=64, full=224),
    }


ROWS = {
    "lenet5": "LeNet-5 from scratch",
    "scratch": "backbone from scratch",
    "frozen_linear": "pretrained, frozen: final features + linear head",
    "frozen_mlp": "pretrained, frozen: intermediate features + MLP head",
    "fine_tuned": "pretrained, fine-tuned from a middle stage",
    "imagenet_linear": "ImageNet resnet18, frozen: final features + linear head",
}

SHORT_NAMES = {"lenet5": "LeNet-5", "scratch": "scratch", "frozen_linear": "frozen+linear",
               "frozen_mlp": "frozen+MLP", "fine_tuned": "fine-tuned",
               "imagenet_linear": "ImageNet+linear"}


# ---- data ---------------------------------------------------------------------------------


def _class_subset(data: ArrayDataset, classes: tuple[str, ...], per_class: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of each named class, labels renumbered 0..len(classes)-1."""
    wanted = [data.classes.index(name) for name in classes]
    mask = torch.isin(data.targets, torch.tensor(wanted))
    members = torch.nonzero(mask).flatten()
    picked = members[stratified_indices(data.targets[members], per_class * len(classes), seed)]
    picked = picked.sort().values
    relabel = {old: new for new, old in enumerate(wanted)}
    labels = np.array([relabel[int(t)] for t in data.targets[picked]], dtype=np.int64)
    return data.inputs[picked].numpy(), labels


def _write_npz(path: Path, train: tuple, test: tuple, classes: tuple[str, ...]) -> Path:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1],
             classes=np.array(classes))
    tmp.replace(path)  # whole or absent: an interrupted write is redone next time
    return path


def _prepare_data(ctx: StudyContext, settings: dict[str, Any]) -> dict[str, Path]:
    """The source set and one target set per label count, as .npz files cnnlab runs read."""
    folder = ctx.out_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    seed, test_count = ctx.seed, settings["test_per_class"]
    paths = {"source": folder / f"source-{settings['pretrain_per_class']}-{test_count}-s{seed}"
                                f".npz"}
    for labels in settings["labels_per_class"]:
        paths[f"target-{labels}"] = folder / f"target-{labels}-{test_count}-s{seed}.npz"
    if all(path.exists() for path in paths.values()):
        return paths  # listing CIFAR-10's 60,000 files takes longer than reading these

    root = find_dataset("cifar10", explicit_root=ctx.data_root)
    train = load_images(root, "train", progress=ctx.progress)
    test = load_images(root, "test", progress=ctx.progress)
    _write_npz(paths["source"],
               _class_subset(train, SOURCE_CLASSES, settings["pretrain_per_class"], seed),
               _class_subset(test, SOURCE_CLASSES, test_count, seed), SOURCE_CLASSES)
    target_test = _class_subset(test, TARGET_CLASSES, test_count, seed)
    for labels in settings["labels_per_class"]:
        # Another seed than the source's: the target picks are independent draws.
        _write_npz(paths[f"target-{labels}"],
                   _class_subset(train, TARGET_CLASSES, labels, seed + 1), target_test,
                   TARGET_CLASSES)
    return paths


# ---- runs ---------------------------------------------------------------------------------


def _config(settings: dict[str, Any], ctx: StudyContext, train_images: int, steps: int,
            lr: float) -> TrainConfig:
    steps_per_epoch = math.ceil(train_images / settings["batch_size"])
    return TrainConfig(epochs=max(1, math.ceil(steps / steps_per_epoch)),
                       batch_size=settings["batch_size"], lr=lr,
                       schedule=settings["schedule"], seed=ctx.seed, device=ctx.device,
                       checkpoint_every=0)


def _test_accuracy(model: torch.nn.Module, npz: Path, run_dir: Path, device: str) -> dict:
    """Test metrics of an image run, normalised with that run's training statistics."""
    import json

    stored = json.loads((run_dir / "config.json").read_text())["data"]
    test = load_images(npz, "test", progress=False)
    test.mean = tuple(stored["mean"]) if stored["mean"] else None
    test.std = tuple(stored["std"]) if stored["std"] else None
    return evaluate(model, test, device=device)


def _pretrain(ctx: StudyContext, settings: dict[str, Any], npz: Path, run_dir: Path
              ) -> dict[str, Any]:
    started = time.perf_counter()
    train_images = settings["pretrain_per_class"] * len(SOURCE_CLASSES)
    config = TrainConfig(epochs=settings["pretrain_epochs"], batch_size=128,
                         lr=settings["pretrain_lr"], schedule=settings["pretrain_schedule"],
                         seed=ctx.seed,
                         device=ctx.device, checkpoint_every=0)
    spec = RunSpec(model=settings["backbone"], model_options=settings["backbone_options"],
                   data=str(npz), augment=settings["augment"], validation=0.05,
                   evaluate_test=False)
    result = train_run(spec, config, run_dir, progress=ctx.progress)
    test = _test_accuracy(result.model, npz, run_dir, ctx.device)
    return {"run_dir": str(run_dir), "train_images": train_images,
            "val_accuracy": result.summary["final_val_accuracy"],
            "test_accuracy": test["accuracy"], "wall_seconds": time.perf_counter() - started}


def _scratch(ctx: StudyContext, settings: dict[str, Any], npz: Path, model: str,
             options: dict[str, Any], labels: int) -> dict[str, Any]:
    started = time.perf_counter()
    train_images = round(labels * len(TARGET_CLASSES) * (1 - settings["validation_fraction"]))
    config = _config(settings, ctx, train_images, settings["train_steps"], settings["lr"])
    spec = RunSpec(model=model, model_options=options, data=str(npz),
                   augment=settings["augment"], validation=settings["validation_fraction"],
                   evaluate_test=False)
    # No run directory: with 20 labels a class an epoch is 3 steps, and redrawing the curves
    # after each of its 100 epochs would cost more than the training.
    result = train_run(spec, config, None, progress=ctx.progress)
    statistics = load_datasets(spec, config.seed).train  # the normalisation training used
    test = load_images(npz, "test", progress=False)
    test.mean, test.std = statistics.mean, statistics.std
    metrics = evaluate(result.model, test, device=ctx.device)
    return {"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"],
            "wall_seconds": time.perf_counter() - started, "feature_seconds": 0.0,
            "epochs": config.epochs, "train_images": train_images}


def _transfer(ctx: StudyContext, settings: dict[str, Any], npz: Path, spec: TransferSpec,
              labels: int, steps: int, lr: float, run_dir: Path) -> dict[str, Any]:
    # Each row pays for its own features: no row borrows another's from memory.
    FeatureCache.clear_memory()
    started = time.perf_counter()
    train_images = round(labels * len(TARGET_CLASSES) * (1 - settings["validation_fraction"]))
    config = _config(settings, ctx, train_images, steps, lr)
    result = train_transfer(spec, config, run_dir, progress=ctx.progress)
    summary = result.summary
    return {"test_accuracy": summary["test"]["accuracy"], "test_loss": summary["test"]["loss"],
            "wall_seconds": time.perf_counter() - started,
            "feature_seconds": summary["feature_seconds"], "epochs": config.epochs,
            "train_images": train_images, "weights": summary["transfer"]["weights"],
            "layer": summary["transfer"]["layer"],
            "cache_used": summary["transfer"]["cache_used"]}


def _row_specs(settings: dict[str, Any], npz: Path, pretrain_dir: str,
               imagenet: Path | None) -> dict[str, TransferSpec | None]:
    common = {"data": str(npz), "validation": settings["validation_fraction"],
              "feature_cache": "memory"}
    specs: dict[str, TransferSpec | None] = {
        "frozen_linear": TransferSpec(backbone=None, weights=pretrain_dir, freeze=True,
                                      head="linear", **common),
        "frozen_mlp": TransferSpec(backbone=None, weights=pretrain_dir, freeze=True,
                                   head="mlp", layer=settings["intermediate_layer"], **common),
        "fine_tuned": TransferSpec(backbone=None, weights=pretrain_dir, head="linear",
                                   fine_tune_from=settings["fine_tune_from"],
                                   backbone_lr=settings["backbone_lr"],
                                   augment=settings["augment"], **common),
    }
    if imagenet is not None:
        specs["imagenet_linear"] = TransferSpec(
            backbone="resnet18", weights="imagenet", freeze=True, head="linear",
            resize=settings["imagenet_resize"], download=False, **common)
    return specs


def run(ctx: StudyContext) -> StudyResult:
    started = time.perf_counter()
    settings = recipe(ctx)
    paths = _prepare_data(ctx, settings)
    imagenet_path, _ = hub_weights_path("resnet18", "imagenet")
    imagenet = imagenet_path if imagenet_path.exists() else None

    pretrain = ctx.run_cached(
        "transfer-pretrain", {k: settings[k] for k in (
            "backbone", "backbone_options", "pretrain_per_class", "pretrain_epochs",
            "pretrain_lr", "pretrain_schedule", "augment", "test_per_class")} | {"seed": ctx.seed},
        lambda run_dir: _pretrain(ctx, settings, paths["source"], run_dir))

    results: dict[int, dict[str, dict[str, Any]]] = {}
    for labels in settings["labels_per_class"]:
        npz = paths[f"target-{labels}"]
        rows: dict[str, dict[str, Any]] = {}
        base = {"labels": labels, "seed": ctx.seed, "settings": settings,
                "pretrain": pretrain["run_dir"]}
        rows["lenet5"] = ctx.run_cached(
            f"transfer-{labels}-lenet5", base | {"row": "lenet5"},
            lambda run_dir, npz=npz, labels=labels: _scratch(
                ctx, settings, npz, "lenet5", {}, labels))
        rows["scratch"] = ctx.run_cached(
            f"transfer-{labels}-scratch", base | {"row": "scratch"},
            lambda run_dir, npz=npz, labels=labels: _scratch(
                ctx, settings, npz, settings["backbone"], settings["backbone_options"], labels))
        for name, spec in _row_specs(settings, npz, pretrain["run_dir"], imagenet).items():
            frozen = spec.freeze
            steps = settings["head_steps"] if frozen else settings["train_steps"]
            lr = settings["head_lr"] if frozen else settings["lr"]
            rows[name] = ctx.run_cached(
                f"transfer-{labels}-{name}", base | {"row": name, "spec": spec.to_dict()},
                lambda run_dir, npz=npz, labels=labels, spec=spec, steps=steps, lr=lr:
                _transfer(ctx, settings, npz, spec, labels, steps, lr, run_dir))
        results[labels] = rows

    setup = {
        "profile": ctx.profile, "seed": ctx.seed, "recipe": settings,
        "source_task": f"{', '.join(SOURCE_CLASSES)}: {settings['pretrain_per_class']} "
                       f"training images per class (CIFAR-10 train split)",
        "target_task": f"{', '.join(TARGET_CLASSES)}: "
                       f"{' or '.join(map(str, settings['labels_per_class']))} labelled images "
                       f"per class, {settings['validation_fraction']:.0%} of them held out "
                       f"for the curves; tested on {settings['test_per_class']} CIFAR-10 test "
                       "images per class",
        "imagenet_weights": f"used: {imagenet}" if imagenet else
                            f"not present (looked for {imagenet_path}); no ImageNet row",
        "data": "CIFAR-10 (the shared JPEG copy)",
    }
    return StudyResult(
        name="transfer", title=STUDY.title, question=STUDY.question, setup=setup,
        tables=_tables(settings, pretrain, results), figures=_figures(ctx, results),
        findings=_findings(settings, pretrain, results, imagenet),
        numbers={"pretrain": pretrain,
                 "few_label": {str(k): v for k, v in results.items()}},
        wall_seconds=time.perf_counter() - started)


# ---- results ------------------------------------------------------------------------------


def _tables(settings: dict[str, Any], pretrain: dict[str, Any],
            results: dict[int, dict[str, dict[str, Any]]]) -> list[Table]:
    tables = []
    for labels, rows in results.items():
        scratch = rows["scratch"]["test_accuracy"]
        table_rows = []
        for name, row in rows.items():
            gain = "-" if name in ("lenet5", "scratch") else \
                round(100 * (row["test_accuracy"] - scratch), 1)
            table_rows.append([ROWS[name], round(row["test_accuracy"], 4), gain,
                               round(row["wall_seconds"], 1),
                               round(float(row["feature_seconds"]), 1), row["epochs"]])
        tables.append(Table(
            title=f"{labels} labels per class: test accuracy and wall time",
            columns=["row", "test accuracy", "gain over scratch (points)", "wall seconds",
                     "of which backbone features", "epochs"],
            rows=table_rows,
            caption=f"Five classes, chance 0.20; test: {5 * settings['test_per_class']} images "
                    f"(standard error about "
                    f"{100 * math.sqrt(0.25 / (5 * settings['test_per_class'])):.1f} points). "
                    f"Wall seconds: loading, features, training and test evaluation of the row "
                    f"alone; the pretraining ({pretrain['wall_seconds']:.0f} s) is paid once "
                    f"for every transfer row. One seed."))
    tables.append(Table(
        title="The pretrained backbone (source task)",
        columns=["backbone", "training images", "epochs", "source test accuracy",
                 "wall seconds"],
        rows=[[f"{settings['backbone']} {settings['backbone_options']}",
               pretrain["train_images"], settings["pretrain_epochs"],
               round(pretrain["test_accuracy"], 4), round(pretrain["wall_seconds"], 1)]],
        caption=f"Trained by cnnlab on {', '.join(SOURCE_CLASSES)} with flips; tested on "
                f"{settings['test_per_class']} test images per class of those classes."))
    return tables


def _figures(ctx: StudyContext, results: dict[int, dict[str, dict[str, Any]]]) -> list[Figure]:
    values = {f"{labels} labels/class": {SHORT_NAMES[name]: row["test_accuracy"]
                                         for name, row in rows.items()}
              for labels, rows in results.items()}
    path = save_bar(values, ctx.out_dir / "transfer-accuracy.png",
                    title="Test accuracy on the five target classes", ylabel="test accuracy")
    return [Figure("Transfer against training from scratch", path.name,
                   "Grouped by labels per class; chance is 0.20.")]


def _findings(settings: dict[str, Any], pretrain: dict[str, Any],
              results: dict[int, dict[str, dict[str, Any]]], imagenet: Path | None) -> list[str]:
    findings = []
    # Two accuracies on the same 2,500 test images, each with a standard error of at most
    # sqrt(0.25 / n): their difference is outside two standard errors of noise (about 95%)
    # beyond 2 * sqrt(2) * that.
    error_points = 100 * math.sqrt(0.25 / (5 * settings["test_per_class"]))
    decided = 2 * math.sqrt(2) * error_points
    gains = {}
    for labels, rows in results.items():
        scratch = rows["scratch"]["test_accuracy"]
        transfer_rows = {k: v for k, v in rows.items() if k not in ("lenet5", "scratch")}
        best_name = max(transfer_rows, key=lambda k: transfer_rows[k]["test_accuracy"])
        best = transfer_rows[best_name]["test_accuracy"]
        gains[labels] = 100 * (best - scratch)
        findings.append(
            f"With {labels} labels per class the best transfer row ({ROWS[best_name]}) reaches "
            f"{best:.1%} against {scratch:.1%} for the same network from scratch: "
            f"{gains[labels]:+.1f} points ({_beyond_noise(gains[labels], decided)}). LeNet-5 "
            f"from scratch reaches {rows['lenet5']['test_accuracy']:.1%}.")
        frozen, tuned = rows["frozen_linear"], rows["fine_tuned"]
        findings.append(
            f"{labels} labels per class: the frozen backbone with a linear head takes "
            f"{frozen['wall_seconds']:.0f} s ({frozen['feature_seconds']:.0f} s of it computing "
            f"features once) for {frozen['test_accuracy']:.1%}; fine-tuning takes "
            f"{tuned['wall_seconds']:.0f} s for {tuned['test_accuracy']:.1%}; the intermediate "
            f"layer with an MLP head gives {rows['frozen_mlp']['test_accuracy']:.1%}.")
        frozen_gain = 100 * (frozen["test_accuracy"] - scratch)
        mlp_gain = 100 * (rows["frozen_mlp"]["test_accuracy"] - scratch)
        tuned_gain = 100 * (tuned["test_accuracy"] - scratch)
        behind = (" Features learnt on five other classes then separate the new ones worse "
                  "than a network trained on the labels themselves; letting the backbone "
                  "adapt is what pays." if max(frozen_gain, mlp_gain) < -decided else "")
        findings.append(
            f"{labels} labels per class, against scratch: frozen + linear {frozen_gain:+.1f}, "
            f"frozen intermediate + MLP {mlp_gain:+.1f}, fine-tuned {tuned_gain:+.1f} points "
            f"(differences within about ±{decided:.1f} are test-set noise).{behind}")
    if len(gains) > 1:
        ordered = sorted(gains)
        fewest, most = ordered[0], ordered[-1]
        trend = "shrinks" if gains[most] < gains[fewest] else "does not shrink"
        findings.append(
            f"The transfer gain {trend} as labels grow: {gains[fewest]:+.1f} points at "
            f"{fewest} labels per class, {gains[most]:+.1f} at {most}. The common claim is "
            "that pretraining matters most when labels are few"
            + (", which this run agrees with." if trend == "shrinks" else
               "; this run does not show it."))
    findings.append(
        f"The backbone was pretrained by cnnlab on {pretrain['train_images']} images of five "
        f"other classes ({pretrain['test_accuracy']:.1%} on their test images, "
        f"{pretrain['wall_seconds']:.0f} s), not on ImageNet: a small source task; what a "
        "backbone pretrained on much more data would add is not measured here. "
        + (f"ImageNet weights were found and used ({imagenet})." if imagenet else
           "No ImageNet weights were in the torch hub cache, so no ImageNet row was run."))
    findings.append(
        f"One seed per row. Test-set noise alone makes a difference of two rows uncertain by "
        f"about ±{decided:.1f} points (two standard errors); the spread from one training seed "
        "to another was not measured and adds to it, so differences of a few points between "
        "rows are not decided by this run.")
    return findings


def _beyond_noise(points: float, decided: float) -> str:
    if abs(points) <= decided:
        return f"within the test set's noise of about ±{decided:.1f} points"
    return f"beyond the test set's noise of about ±{decided:.1f} points"


STUDY = register(Study(
    name="transfer",
    title="Transfer learning with few labels",
    question="How much does a pretrained backbone help when only 20-100 labels per class "
             "exist, and is a frozen backbone (trained once, features cached) enough, or does "
             "fine-tuning pay?",
    budget_seconds={"smoke": 60, "cpu": 300, "full": 3600},
    run=run))
