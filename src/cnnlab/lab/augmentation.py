"""Study "augmentation": what augmentation does to the train/test gap, and a mistake that isn't.

The claims under test: augmentation narrows the gap between training and
validation accuracy (less overfitting), and an augmented copy concatenated
to the training set does the same job as augmenting on the fly. Beside them,
a common Keras mistake, ``np.concatenate([x, datagen.flow(x, y).x])``: the
iterator's ``.x`` holds the original images, so the "augmented" set is the
training set twice. Its control, plain training for twice the epochs (the
same number of optimiser steps), separates its two effects: the data it adds
(none) and the extra steps it brings.

Design. The same LeNet-5, initial weights (seed), optimiser, constant
learning rate and batch size for every setting; only the training data and
the epochs change:

- ``none``: the training images as they are;
- ``keras``: the ``keras`` preset (rotation 30 degrees, shifts 10%, shear,
  zoom 10%, flips) on every batch, on the fly;
- ``augment-concat``: one augmented copy of every image (the same preset,
  drawn once) concatenated to the training set: twice the images per epoch;
- ``self-concat``: the training set concatenated with itself (the mistake);
- ``double-epochs``: no augmentation, twice the epochs (the control);
- ``none`` again with the next seed, to measure how far two runs that differ
  only in their seed lie apart.

One wider CNN (``small_cnn``) repeats ``none`` and ``keras`` in the ``cpu``
profile and every setting in ``full``. Train accuracy is measured on a fixed
subset of *un-augmented original* training images (``fit_accuracy``; for the
concatenated sets the same originals), so the gap is not hidden by
augmentation. The sanity checks of :mod:`cnnlab.augment.sanity` are run on
the concatenated sets and the preset.

The helpers at the end of this module (data read once per process, one run
with a run directory, the shared reference runs) are used by the other
design studies: downsampling, activations, robustness and explanations.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cnnlab._util import seed_everything, write_json_atomic
from cnnlab.augment import PRESETS, AffineAugment, build_augment
from cnnlab.augment.sanity import check_augmented_set, check_preset
from cnnlab.data import ArrayDataset, find_dataset, limit, load_images, split_validation
from cnnlab.data.arrays import stratified_indices
from cnnlab.diagnose import fit_verdict
from cnnlab.lab.study import Figure, Study, StudyContext, StudyResult, Table, register
from cnnlab.models import build_model
from cnnlab.report.figures import save_bar, save_curves, save_image_grid
from cnnlab.runs.image import Datasets, RunSpec, check_run_augment
from cnnlab.train import Callback, Task, TrainConfig, Trainer, evaluate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    """One way of feeding the training images: ``data`` says how the set is built."""

    key: str
    label: str
    augment: str | None  # on-the-fly preset
    data: str  # "original", "augment-concat" or "self-concat"
    epoch_factor: int = 1
    seed_offset: int = 0


SETTINGS = (
    Setting("none", "no augmentation", None, "original"),
    Setting("keras", "keras preset on the fly", "keras", "original"),
    Setting("augment-concat", "augmented copy concatenated once", None, "augment-concat"),
    Setting("self-concat", "x + x (the Keras .x mistake)", None, "self-concat"),
    Setting("double-epochs", "no augmentation, 2x epochs (control)", None, "original", 2),
)
NEXT_SEED = Setting("none-seed1", "no augmentation, next seed", None, "original", seed_offset=1)
AUGMENT_COPY_SEED_OFFSET = 100  # the fixed augmented copy draws from its own generator


def _recipe(ctx: StudyContext) -> dict[str, Any]:
    """Every budget choice of the study; the LeNet-5 part is shared with robustness/explanations."""
    recipe = reference_recipe(ctx)
    recipe["wide_model"] = ctx.pick(
        smoke={"model": "small_cnn", "widths": "8,16", "depth": 1, "downsample": "stride"},
        cpu={"model": "small_cnn", "widths": "16,32,64", "depth": 1, "downsample": "stride"},
        full={"model": "small_cnn", "widths": "32,64,128", "depth": 2, "downsample": "max"})
    recipe["wide_settings"] = ctx.pick(smoke=["none", "keras"], cpu=["none", "keras"],
                                       full=[s.key for s in SETTINGS])
    return recipe


# ----------------------------------------------------------------------------- the runs


def build_training_set(setting: Setting, train: ArrayDataset, seed: int) -> ArrayDataset:
    """The training images a setting trains on (originals first, so their indices match)."""
    if setting.data == "original":
        return train
    if setting.data == "self-concat":
        extra = train.inputs.clone()  # what `datagen.flow(x, y).x` returns: x itself
    else:
        extra = augmented_copy(train.inputs, seed + AUGMENT_COPY_SEED_OFFSET)
    return replace(train, inputs=torch.cat([train.inputs, extra]),
                   targets=torch.cat([train.targets, train.targets]))


def augmented_copy(images: torch.Tensor, seed: int, chunk: int = 1024) -> torch.Tensor:
    """One draw of the ``keras`` preset over uint8 images, rounded back to uint8."""
    augment = AffineAugment(PRESETS["keras"], seed=seed)
    parts = []
    for start in range(0, len(images), chunk):
        batch = images[start:start + chunk].float() / 255.0
        out, _ = augment(batch, None)
        parts.append((out * 255.0).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(parts)


def _run_setting(ctx: StudyContext, data: Datasets, recipe: dict[str, Any], setting: Setting,
                 model: dict[str, Any], prefix: str) -> tuple[dict[str, Any], Path]:
    spec = RunSpec(model=model["model"], model_options={k: v for k, v in model.items()
                                                        if k != "model"},
                   augment=setting.augment, limit=recipe["train_images"]
                   + recipe["validation_images"], validation=recipe["validation_images"])
    config = train_config(ctx, recipe, epochs=recipe["epochs"] * setting.epoch_factor,
                           seed=ctx.seed + setting.seed_offset)
    name = f"{prefix}-{setting.key}"
    key = _run_key(ctx, recipe, spec, config, setting.key)

    def run(run_dir: Path) -> dict[str, Any]:
        train = build_training_set(setting, data.train, ctx.seed)
        # Train accuracy on the same un-augmented originals in every setting: the concatenated
        # sets hold the originals first, so the trainer's own subset indices are reused.
        fit_indices = stratified_indices(data.train.targets, min(config.fit_subset,
                                                                 len(data.train)),
                                         seed=config.seed + 1)
        return fit_image_run(data, spec, config, run_dir, train=train, fit_indices=fit_indices,
                             extra={"setting": setting.key, "label": setting.label},
                             curves=ctx.profile != "smoke")

    return ctx.run_cached(name, key, run), ctx.run_dir(name)


def _row(setting: Setting, model_label: str, result: dict[str, Any]) -> dict[str, Any]:
    last = result["history"][-1]
    summary = result["summary"]
    train_samples = summary["train_samples"]
    return {
        "setting": setting.key, "label": setting.label, "model": model_label,
        "images_per_epoch": train_samples, "epochs": len(result["history"]),
        "steps": summary["steps"], "fit_accuracy": last["fit_accuracy"],
        "val_accuracy": last["val_accuracy"],
        "gap": last["fit_accuracy"] - last["val_accuracy"],
        "test_accuracy": summary["test"]["accuracy"], "test_loss": summary["test"]["loss"],
        "test_images": summary["test_images"],
        "verdict": summary["fit_verdict"]["verdict"],
        "best_epoch": summary["fit_verdict"]["evidence"].get("best_epoch"),
        "train_seconds": summary["wall_seconds"],
        "history": [{"epoch": r["epoch"], "fit_accuracy": r["fit_accuracy"],
                     "val_accuracy": r["val_accuracy"]} for r in result["history"]],
    }


# ----------------------------------------------------------------------------- the study


def run(ctx: StudyContext) -> StudyResult:
    recipe = _recipe(ctx)
    data = design_data(ctx, recipe["train_images"], recipe["validation_images"],
                       recipe["test_images"])
    lenet = {"model": "lenet5"}
    rows, histories = [], {}
    for setting in (*SETTINGS, NEXT_SEED):
        result, _ = _run_setting(ctx, data, recipe, setting, lenet, "lenet")
        rows.append(_row(setting, "LeNet-5", result))
        if setting is not NEXT_SEED:
            histories[setting.label] = _in_passes(result["history"], result["summary"],
                                                  len(data.train))
    wide_label = _model_label(recipe["wide_model"])
    wide_rows, wide_histories = [], {}
    for setting in SETTINGS:
        if setting.key not in recipe["wide_settings"]:
            continue
        result, _ = _run_setting(ctx, data, recipe, setting, recipe["wide_model"], "wide")
        wide_rows.append(_row(setting, wide_label, result))
        wide_histories[setting.label] = _in_passes(result["history"], result["summary"],
                                                   len(data.train))

    checks = _sanity_checks(data.train, ctx.seed)
    figures = _figures(ctx, data, rows, histories, wide_histories, wide_label)
    by_key = {row["setting"]: row for row in rows}
    wide_by_key = {row["setting"]: row for row in wide_rows}
    findings = _findings(by_key, wide_by_key, wide_label, checks, recipe)

    columns = ["model", "setting", "images per epoch", "epochs", "steps",
               "train acc (un-augmented)", "val acc", "gap", "test acc", "fit verdict",
               "train s"]
    table_rows = [[row["model"], row["label"], row["images_per_epoch"], row["epochs"],
                   row["steps"], row["fit_accuracy"], row["val_accuracy"], row["gap"],
                   row["test_accuracy"], row["verdict"], round(row["train_seconds"], 1)]
                  for row in rows + wide_rows]
    tables = [
        Table("Train/validation gap and test accuracy by setting", columns, table_rows,
              caption=("Train accuracy is measured on the same 'fit subset' of un-augmented "
                       "original training images in every setting; gap = train - validation "
                       "accuracy at the last epoch; test accuracy on "
                       f"{len(data.test)} CIFAR-10 test images.")),
        Table("Augmentation sanity checks (cnnlab.augment.sanity)",
              ["what was checked", "verdict", "images", "unchanged / copies",
               "mean change (grey levels)"],
              [[c["what"], c["verdict"], c["images"], c["unchanged"],
                None if c["mean_abs_change"] is None else round(c["mean_abs_change"], 2)]
               for c in checks],
              caption="A set or preset fails when more than half of its images are copies of "
                      "originals, or fewer than 10% change."),
    ]
    setup = {
        **{k: v for k, v in recipe.items() if k != "wide_model"},
        "wide_model": wide_label,
        "data": (f"CIFAR-10 (JPEG copy): {len(data.train)} training images, {len(data.val)} "
                 f"validation images (both from the training split), {len(data.test)} test "
                 "images"),
        "budget": (f"{ctx.profile} profile: {recipe['epochs']} epochs of "
                   f"{recipe['train_images']} images per run (twice the epochs for the "
                   "control); differences between settings are compared with the spread "
                   "between two seeds of the same run"),
        "learning_rate_schedule": "constant, so a longer run extends a shorter one exactly",
    }
    numbers = {"runs": rows + wide_rows, "sanity_checks": checks}
    return StudyResult(name=STUDY.name, title=STUDY.title, question=STUDY.question, setup=setup,
                       tables=tables, figures=figures, findings=findings, numbers=numbers)


def _in_passes(history: list[dict], summary: dict, originals: int) -> list[dict]:
    """The history with ``epoch`` counted in passes over the original images (steps align)."""
    scale = summary["train_samples"] / originals
    return [{**row, "epoch": row["epoch"] * scale} for row in history]


def _model_label(model: dict[str, Any]) -> str:
    if model["model"] == "lenet5":
        return "LeNet-5"
    return (f"small_cnn {model['widths'].replace(',', '-')}, depth {model['depth']}, "
            f"{model['downsample']}")


def _sanity_checks(train: ArrayDataset, seed: int) -> list[dict[str, Any]]:
    originals = train.inputs
    copy_ = augmented_copy(originals, seed + AUGMENT_COPY_SEED_OFFSET)
    checks = [
        ("x + x: the 'augmented' half is datagen.flow(x, y).x",
         check_augmented_set(originals, originals.clone(), warn=False)),
        ("augmented copy (keras preset, drawn once)",
         check_augmented_set(originals, copy_, warn=False)),
        ("keras preset on a sample batch",
         check_preset(build_augment("keras", seed=seed), originals[:256], name="keras",
                      warn=False)),
        ("preset with all ranges zero",
         check_preset(AffineAugment(PRESETS["none"]), originals[:256], name="none",
                      warn=False)),
    ]
    return [{"what": what, **report.to_dict()} for what, report in checks]


def _figures(ctx: StudyContext, data: Datasets, rows: list[dict], histories: dict,
             wide_histories: dict, wide_label: str) -> list[Figure]:
    figures = []
    save_curves(histories, ctx.out_dir / "curves-lenet.png", train="fit",
                title="LeNet-5: un-augmented train (dashed) vs validation (solid); "
                      "x = passes over the original images")
    figures.append(Figure("LeNet-5 learning curves, every setting", "curves-lenet.png",
                          "The x axis counts passes over the original training images, so "
                          "runs with the same number of optimiser steps end at the same x."))
    if wide_histories:
        save_curves(wide_histories, ctx.out_dir / "curves-wide.png", train="fit",
                    title=f"{wide_label}: un-augmented train (dashed) vs validation (solid)")
        figures.append(Figure(f"{wide_label} learning curves", "curves-wide.png"))
    save_bar({row["label"]: {"test accuracy": row["test_accuracy"], "train - val gap": row["gap"]}
              for row in rows if row["setting"] != NEXT_SEED.key},
             ctx.out_dir / "gap-lenet.png", title="LeNet-5: test accuracy and train/val gap",
             ylabel="accuracy")
    figures.append(Figure("LeNet-5: test accuracy and gap", "gap-lenet.png"))

    # The first training image of each of eight classes, and its row in the augmented copy.
    targets = data.train.targets
    picked = [int(torch.nonzero(targets == label)[0]) for label in targets.unique()[:8]]
    count = len(picked)
    originals = data.train.inputs[picked]
    copies = augmented_copy(data.train.inputs, ctx.seed + AUGMENT_COPY_SEED_OFFSET)[picked]
    names = [data.train.classes[int(targets[i])] for i in picked]
    save_image_grid(torch.cat([originals, copies, originals.clone()]),
                    ctx.out_dir / "samples.png", nrow=count,
                    titles=[f"{n}" for n in names] + ["augmented"] * count + ["'.x' copy"] * count,
                    title="originals; their augmented copies; what the .x mistake adds")
    figures.append(Figure("What each concatenated set adds", "samples.png",
                          "Row 2 is the augmented copy concatenated once; row 3 is what "
                          "`datagen.flow(x, y).x` adds: the originals again."))
    return figures


def _findings(rows: dict[str, dict], wide: dict[str, dict], wide_label: str,
              checks: list[dict], recipe: dict[str, Any]) -> list[str]:
    none, keras = rows["none"], rows["keras"]
    concat, mistake, double = rows["augment-concat"], rows["self-concat"], rows["double-epochs"]
    seed_gap = abs(none["test_accuracy"] - rows[NEXT_SEED.key]["test_accuracy"])
    # The binomial standard error of one test accuracy: the floor of what can be resolved.
    standard_error = math.sqrt(none["test_accuracy"] * (1 - none["test_accuracy"])
                               / none["test_images"])
    resolution = max(2 * seed_gap, 2 * standard_error, 0.005)

    # Gaps of the two seeds differ too: the same yardstick for gap differences.
    gap_resolution = max(2 * abs(none["gap"] - rows[NEXT_SEED.key]["gap"]), 0.01)

    def compare(a: float, b: float) -> str:
        difference = a - b
        if abs(difference) < resolution:
            return f"{difference:+.3f}, within the seed-to-seed spread"
        return f"{difference:+.3f}"

    findings = [
        (f"Two runs without augmentation that differ only in their seed end {seed_gap:.3f} "
         f"apart in test accuracy ({none['test_accuracy']:.3f} vs "
         f"{rows[NEXT_SEED.key]['test_accuracy']:.3f}); differences below {resolution:.3f} "
         "are treated as noise below (one pair of seeds: a rough yardstick, not an interval)."),
        (f"Without augmentation LeNet-5 ends at train {none['fit_accuracy']:.3f} vs validation "
         f"{none['val_accuracy']:.3f} (gap {none['gap']:+.3f}, verdict: {none['verdict']}); with "
         f"the keras preset on the fly at train {keras['fit_accuracy']:.3f} vs validation "
         f"{keras['val_accuracy']:.3f} (gap {keras['gap']:+.3f}, verdict: {keras['verdict']}). "
         + _gap_sentence(none, keras, resolution, gap_resolution)),
        (f"The mistake x + x trains on {mistake['images_per_epoch']} images per epoch, "
         f"{mistake['steps']} steps, and reaches test {mistake['test_accuracy']:.3f} with gap "
         f"{mistake['gap']:+.3f}; its control, the same images for twice the epochs "
         f"({double['steps']} steps), reaches test {double['test_accuracy']:.3f} with gap "
         f"{double['gap']:+.3f} (difference "
         f"{compare(mistake['test_accuracy'], double['test_accuracy'])}). "
         + _mistake_sentence(none, mistake, double, resolution, gap_resolution)),
        (f"Augment-then-concatenate (one fixed augmented copy, {concat['steps']} steps) reaches "
         f"test {concat['test_accuracy']:.3f} with gap {concat['gap']:+.3f}, against test "
         f"{double['test_accuracy']:.3f} and gap {double['gap']:+.3f} for the same number of "
         f"steps on the originals alone, and test {keras['test_accuracy']:.3f} / gap "
         f"{keras['gap']:+.3f} for on-the-fly augmentation with half the steps. "
         + _concat_sentence(concat, double, keras, gap_resolution)),
    ]
    if "none" in wide and "keras" in wide:
        findings.append(
            f"{wide_label}: without augmentation train {wide['none']['fit_accuracy']:.3f} vs "
            f"validation {wide['none']['val_accuracy']:.3f} (gap {wide['none']['gap']:+.3f}, "
            f"{wide['none']['verdict']}); with the keras preset gap "
            f"{wide['keras']['gap']:+.3f} ({wide['keras']['verdict']}); test "
            f"{wide['keras']['test_accuracy']:.3f} vs {wide['none']['test_accuracy']:.3f}. "
            + _gap_sentence(wide["none"], wide["keras"], resolution, gap_resolution))
    copies_check, real_check = checks[0], checks[1]
    findings.append(
        f"The sanity check flags the mistake: {copies_check['unchanged_fraction']:.0%} of the "
        f"'augmented' images of x + x are exact copies of training images (verdict "
        f"{copies_check['verdict']}), against {real_check['unchanged_fraction']:.1%} for the "
        f"real augmented copy (verdict {real_check['verdict']}, mean change "
        f"{real_check['mean_abs_change']:.1f} grey levels per pixel). `cnnlab train` runs the "
        "preset check before training and records it in summary.json.")
    if recipe["epochs"] < 10:
        findings.append(
            f"Budget: {recipe['epochs']} epochs ({2 * recipe['epochs']} for the control) on "
            f"{recipe['train_images']} images. Augmentation usually pays off late, after the "
            "unaugmented model has begun to overfit; a short run can show augmentation as "
            "underfitting even where a longer one would favour it.")
    return findings


def _gap_sentence(plain: dict, augmented: dict, resolution: float,
                  gap_resolution: float) -> str:
    narrowed = plain["gap"] - augmented["gap"]
    test_change = augmented["test_accuracy"] - plain["test_accuracy"]
    train_change = augmented["fit_accuracy"] - plain["fit_accuracy"]
    if narrowed <= gap_resolution:
        return (f"Augmentation did not narrow the gap measurably ({-narrowed:+.3f}), contrary "
                f"to the usual claim; test accuracy {test_change:+.3f}.")
    sentence = f"Augmentation narrowed the gap by {narrowed:.3f}, as claimed"
    if abs(test_change) < resolution:
        return sentence + (f", but test accuracy did not change measurably ({test_change:+.3f}): "
                           f"the gap closed from the training side (train accuracy "
                           f"{train_change:+.3f}), not through better generalisation, at this "
                           "budget.")
    if test_change > 0:
        return sentence + f", and test accuracy rose by {test_change:.3f}."
    return sentence + (f", but test accuracy fell by {-test_change:.3f}: at this budget the "
                       "augmented model underfits.")


def _mistake_sentence(none: dict, mistake: dict, double: dict, resolution: float,
                      gap_resolution: float) -> str:
    same = abs(mistake["test_accuracy"] - double["test_accuracy"]) < resolution and \
        abs(mistake["gap"] - double["gap"]) < gap_resolution
    change = mistake["gap"] - none["gap"]
    equal = _at_steps(mistake, none["steps"])
    start = (f"After {equal['steps']} steps, as many as the run without augmentation, x + x "
             f"stood at train {equal['fit_accuracy']:.3f} / validation "
             f"{equal['val_accuracy']:.3f} against {none['fit_accuracy']:.3f} / "
             f"{none['val_accuracy']:.3f}: the duplicates added nothing but steps. ")
    if same and abs(change) < gap_resolution:
        return start + ("The mistake behaves like its control, and neither moved the gap "
                        f"measurably from the {none['steps']}-step run ({change:+.3f}).")
    if same:
        trend = "widened" if change > 0 else "narrowed"
        return start + (f"The mistake behaves like its control: compared with the "
                        f"{none['steps']}-step run it {trend} the gap by {abs(change):.3f}, and "
                        "that change comes from the extra steps, not from augmentation, which "
                        "never happened.")
    return start + ("The mistake and its control differ by more than the seed spread; the "
                    "remaining difference is the order in which duplicated images are visited, "
                    "since no image was augmented.")


def _concat_sentence(concat: dict, double: dict, keras: dict, gap_resolution: float) -> str:
    parts = []
    if double["gap"] - concat["gap"] > gap_resolution:
        parts.append("One augmented copy narrowed the gap against the same steps without it")
    else:
        parts.append("One augmented copy did not measurably narrow the gap against the same "
                     "steps without it")
    # On-the-fly augmentation ran half the steps: compare at its step count.
    equal = _at_steps(concat, keras["steps"])
    equal_gap = equal["fit_accuracy"] - equal["val_accuracy"]
    comparison = (f"at {equal['steps']} steps, as many as on-the-fly augmentation took, the "
                  f"concatenated copy had gap {equal_gap:+.3f} (validation "
                  f"{equal['val_accuracy']:.3f}) against {keras['gap']:+.3f} (validation "
                  f"{keras['val_accuracy']:.3f})")
    if equal_gap - keras["gap"] > gap_resolution:
        parts.append(comparison + ": fresh draws every epoch keep the gap smaller than one "
                     "fixed copy, which the network can partly memorise")
    else:
        parts.append(comparison + ": at this budget a fixed copy did as well as fresh draws")
    return "; ".join(parts) + "."


def _at_steps(row: dict, steps: int) -> dict:
    """The history row of ``row``'s run closest to ``steps`` optimiser steps."""
    steps_per_epoch = row["steps"] / row["epochs"]
    epoch = min(row["history"], key=lambda r: abs(r["epoch"] * steps_per_epoch - steps))
    return {**epoch, "steps": round(epoch["epoch"] * steps_per_epoch)}


# ----------------------------------------------------------------------------- shared helpers
# Used by the other design studies (downsampling, activations, robustness, explanations).


@functools.lru_cache(maxsize=2)
def _cifar_splits(path: str) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10's training and test splits, read once per process (listing 60,000 files and
    reading the decode cache takes seconds; five studies share one read)."""
    return load_images(path, "train", progress=False), load_images(path, "test", progress=False)


def design_data(ctx: StudyContext, train_images: int | None, validation_images: int,
                test_images: int | None) -> Datasets:
    """A stratified CIFAR-10 subset split as ``train_run`` splits it (same seeds, same images).

    Statistics come from the training part; validation and test reuse them.
    """
    path = find_dataset("cifar10", explicit_root=ctx.data_root)
    full_train, full_test = _cifar_splits(str(path))
    total = None if train_images is None else train_images + validation_images
    train, val = split_validation(limit(full_train, total, seed=ctx.seed), validation_images,
                                  seed=ctx.seed)
    train = train.with_statistics()
    val = replace(val, mean=train.mean, std=train.std)
    test = replace(limit(full_test, test_images, seed=ctx.seed), mean=train.mean, std=train.std)
    return Datasets(train, val, test)


def fit_image_run(data: Datasets, spec: RunSpec, config: TrainConfig, run_dir: Path, *,
                  train: ArrayDataset | None = None, task: Task | None = None,
                  callbacks: Sequence[Callback] = (), fit_indices: torch.Tensor | None = None,
                  extra: dict[str, Any] | None = None, curves: bool = True) -> dict[str, Any]:
    """Train one image classifier on preloaded data; leave a run directory like ``train_run``'s.

    ``train`` replaces ``data.train`` (a concatenated set); ``fit_indices``
    pick the images train accuracy is measured on. The directory gets
    ``config.json``, ``history.json``, ``metrics.csv``, ``summary.json``
    (test metrics, fit verdict, augmentation check), ``curves.png`` and
    ``model.safetensors``, so :func:`cnnlab.runs.load_run_model` reads it
    (``curves=False`` skips the figure: a second or more per run on a busy CPU).
    Returns plain data for ``ctx.run_cached``: the history and the summary.
    """
    from safetensors.torch import save_file

    train = data.train if train is None else train
    seed_everything(config.seed)  # the initial weights depend on the seed alone
    options = dict(spec.model_options)
    options.setdefault("num_classes", len(train.classes))
    options.setdefault("in_channels", int(train.inputs.shape[1]))
    if spec.model == "lenet5":
        options.setdefault("input_size", int(train.inputs.shape[-1]))
    model = build_model(spec.model, **options)
    augment = build_augment(spec.augment, seed=config.seed)
    augment_check = check_run_augment(augment, train, spec.augment)
    trainer = Trainer(model, config, train=train, val=data.val, augment=augment, task=task,
                      run_dir=run_dir, callbacks=list(callbacks),
                      extra_config={"run": spec.to_dict(), "study": extra or {}})
    if fit_indices is not None:
        trainer.fit_indices = fit_indices
    result = trainer.fit()

    test = evaluate(trainer.model, data.test, trainer.task, config.eval_batch_size,
                    trainer.device)
    summary = {**result.summary, "test": test, "test_images": len(data.test),
               "train_samples": len(train), "steps": trainer.global_step,
               "fit_verdict": fit_verdict(result.history,
                                          chance_accuracy=1 / len(train.classes)).to_dict()}
    if augment_check is not None:
        summary["augment_check"] = augment_check
    summary = json.loads(json.dumps(summary, default=str))  # plain data for the run cache
    state = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(run_dir / "model.safetensors"))
    write_json_atomic(run_dir / "summary.json", summary)
    if curves:
        save_curves(result.history, run_dir / "curves.png", train="fit",
                    title=f"{spec.model}, augmentation: {spec.augment or 'none'}")
    return {"history": result.history, "summary": summary}


def train_config(ctx: StudyContext, recipe: dict[str, Any], *, epochs: int,
                 seed: int) -> TrainConfig:
    """The training config of a design-study run: the recipe's optimiser, one final checkpoint."""
    return TrainConfig(epochs=epochs, batch_size=recipe["batch_size"],
                       optimizer=recipe["optimizer"], lr=recipe["lr"],
                       schedule=recipe["schedule"], seed=seed, device=ctx.device,
                       fit_subset=recipe["fit_subset"], checkpoint_every=0)


def _run_key(ctx: StudyContext, recipe: dict[str, Any], spec: RunSpec, config: TrainConfig,
             setting: str) -> dict[str, Any]:
    """What identifies a run for the cache (and for reuse by another study)."""
    return {"spec": spec.to_dict(), "train": config.to_dict(), "setting": setting,
            "profile": ctx.profile,
            "data": {"train": recipe["train_images"], "validation": recipe["validation_images"],
                     "test": recipe["test_images"], "seed": ctx.seed}}


def reference_recipe(ctx: StudyContext) -> dict[str, Any]:
    """Sizes of the LeNet-5 runs shared by augmentation, robustness and explanations."""
    return {
        "train_images": ctx.pick(smoke=400, cpu=20000, full=45000),
        "validation_images": ctx.pick(smoke=200, cpu=2000, full=5000),
        "test_images": ctx.pick(smoke=300, cpu=10000, full=10000),
        "epochs": ctx.pick(smoke=1, cpu=12, full=30),
        "batch_size": 128, "optimizer": "adam", "lr": 1e-3, "schedule": "none",
        "fit_subset": ctx.pick(smoke=200, cpu=2000, full=5000),
    }


def reference_run(ctx: StudyContext, augment: str | None
                  ) -> tuple[dict[str, Any], Path, Datasets]:
    """The augmentation study's LeNet-5 run without augmentation (None) or with ``"keras"``.

    When the augmentation study of the same lab (``<ctx.out_dir>/../augmentation``)
    finished this run with the same configuration, its result and run directory
    are reused; otherwise the run is trained (and cached) in ``ctx``'s own folder.
    Returns the result, the run directory and the data it was trained on.
    """
    recipe = reference_recipe(ctx)
    data = design_data(ctx, recipe["train_images"], recipe["validation_images"],
                       recipe["test_images"])
    setting = {None: SETTINGS[0], "keras": SETTINGS[1]}[augment]
    name = f"lenet-{setting.key}"
    spec = RunSpec(model="lenet5", augment=setting.augment,
                   limit=recipe["train_images"] + recipe["validation_images"],
                   validation=recipe["validation_images"])
    config = train_config(ctx, recipe, epochs=recipe["epochs"], seed=ctx.seed)
    key = _run_key(ctx, recipe, spec, config, setting.key)
    sibling = ctx.out_dir.parent / STUDY.name / "runs" / name
    if not ctx.fresh and ctx.out_dir.name != STUDY.name:
        stored = _stored_result(sibling, key)
        if stored is not None:
            log.info("reusing the augmentation study's run %s", sibling)
            return stored, sibling, data
    result, run_dir = _run_setting(ctx, data, recipe, setting, {"model": "lenet5"}, "lenet")
    return result, run_dir, data


def _stored_result(run_dir: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    done = run_dir / "result.json"
    if not done.exists() or not (run_dir / "model.safetensors").exists():
        return None
    try:
        stored = json.loads(done.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = json.dumps(stored.get("config"), sort_keys=True, default=str) == json.dumps(
        key, sort_keys=True, default=str)
    return stored["result"] if same else None


STUDY = register(Study(
    name="augmentation",
    title="Augmentation and the train/test gap (and the x + x mistake)",
    question=("Does augmentation narrow the gap between training and validation accuracy, "
              "does a concatenated augmented copy do the same, and what does concatenating the "
              "training set with itself (the Keras `.x` mistake) really do?"),
    budget_seconds={"smoke": 30, "cpu": 540, "full": 3600},
    run=run,
))

__all__ = ["SETTINGS", "STUDY", "Setting", "augmented_copy", "build_training_set",
           "design_data", "fit_image_run", "reference_recipe", "reference_run", "train_config"]
