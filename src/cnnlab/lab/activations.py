"""Study "activations": ReLU, Leaky ReLU, GELU, tanh and sigmoid; softmax or sigmoid outputs.

The claims under test: saturating activations (sigmoid above all, tanh less)
make gradients vanish on their way to the input and train slowly, while
ReLU and its smooth relatives train fast; and single-label classes want a
softmax with cross-entropy, not independent sigmoids.

Design. The same LeNet-5 (two convolutions, three linear layers), data,
seed, optimiser and budget; only the hidden activation changes, or, with
ReLU hidden, the output: softmax with cross-entropy against one sigmoid per
class trained with binary cross-entropy on one-hot targets
(:class:`cnnlab.train.SigmoidClassificationTask`; the prediction is the
largest logit either way). A :class:`cnnlab.diagnose.GradientMonitor`
records gradient norms per layer and the state of every activation on
sampled steps, and :func:`cnnlab.diagnose.diagnose_run` turns them into
verdicts (vanishing, exploding, dead units, saturation, or none).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.diagnose import GradientMonitor, diagnose_run, load_monitor
from cnnlab.diagnose.gradients import activation_evidence, gradient_evidence
from cnnlab.lab.augmentation import design_data, fit_image_run, train_config
from cnnlab.lab.study import Figure, Study, StudyContext, StudyResult, Table, register
from cnnlab.report.figures import save_curves
from cnnlab.runs.image import RunSpec
from cnnlab.train import SigmoidClassificationTask

log = logging.getLogger(__name__)

# (key, hidden activation, output)
VARIANTS = (
    ("relu", "relu", "softmax"),
    ("leaky_relu", "leaky_relu", "softmax"),
    ("gelu", "gelu", "softmax"),
    ("tanh", "tanh", "softmax"),
    ("sigmoid", "sigmoid", "softmax"),
    ("relu-sigmoid-output", "relu", "sigmoids"),
)
OUTPUT_LABELS = {"softmax": "softmax + cross-entropy", "sigmoids": "independent sigmoids + BCE"}


def _recipe(ctx: StudyContext) -> dict[str, Any]:
    """Every budget choice; the data match the augmentation study's LeNet-5 runs."""
    return {
        "model": "lenet5",
        "train_images": ctx.pick(smoke=400, cpu=20000, full=45000),
        "validation_images": ctx.pick(smoke=200, cpu=2000, full=5000),
        "test_images": ctx.pick(smoke=300, cpu=10000, full=10000),
        "epochs": ctx.pick(smoke=1, cpu=10, full=30),
        "batch_size": 128, "optimizer": "adam", "lr": 1e-3, "schedule": "none",
        "fit_subset": ctx.pick(smoke=200, cpu=2000, full=5000),
        "monitor_overhead_target": 0.10,
    }


def _train_variant(ctx: StudyContext, data, recipe: dict[str, Any], key: str, activation: str,
                   output: str) -> dict[str, Any]:
    spec = RunSpec(model="lenet5", model_options={"activation": activation},
                   limit=recipe["train_images"] + recipe["validation_images"],
                   validation=recipe["validation_images"])
    config = train_config(ctx, recipe, epochs=recipe["epochs"], seed=ctx.seed)
    cache_key = {"spec": spec.to_dict(), "train": config.to_dict(), "output": output,
                 "profile": ctx.profile, "monitor": recipe["monitor_overhead_target"],
                 "data": {k: recipe[k] for k in ("train_images", "validation_images",
                                                  "test_images")}}

    def train(run_dir: Path) -> dict[str, Any]:
        draw = ctx.profile != "smoke"
        monitor = GradientMonitor(target_overhead=recipe["monitor_overhead_target"],
                                  figures=draw)
        task = SigmoidClassificationTask() if output == "sigmoids" else None
        result = fit_image_run(data, spec, config, run_dir, task=task, callbacks=[monitor],
                               extra={"activation": activation, "output": output},
                               curves=draw)
        result["gradients"] = _gradient_summary(run_dir)
        return result

    return ctx.run_cached(f"lenet-{key}", cache_key, train)


def _gradient_summary(run_dir: Path) -> dict[str, Any]:
    """The monitor's verdicts and the numbers behind them, as plain data for the cache."""
    verdicts = diagnose_run(run_dir)
    data = load_monitor(run_dir)
    gradients = gradient_evidence(data)
    activations = activation_evidence(data)
    return {
        "verdicts": [{"kind": v.kind, "summary": v.summary, "layers": v.layers}
                     for v in verdicts],
        "first_to_last_grad_ratio": gradients.get("first_to_last_grad_ratio"),
        "median_grad_norm_by_layer": gradients.get("median_grad_norm_by_layer", {}),
        "dead_fraction_mean": activations.get("dead_fraction_mean"),
        "saturated_fraction_mean": activations.get("saturated_fraction_mean"),
        "samples": gradients.get("samples", 0),
    }


def run(ctx: StudyContext) -> StudyResult:
    recipe = _recipe(ctx)
    data = design_data(ctx, recipe["train_images"], recipe["validation_images"],
                       recipe["test_images"])
    rows, histories, layer_norms = [], {}, {}
    for key, activation, output in VARIANTS:
        result = _train_variant(ctx, data, recipe, key, activation, output)
        label = activation if output == "softmax" else f"{activation}, sigmoid outputs"
        histories[label] = result["history"]
        layer_norms[label] = result["gradients"]["median_grad_norm_by_layer"]
        rows.append(_row(key, activation, output, result))

    by_key = {row["key"]: row for row in rows}
    figures = _figures(ctx, histories, layer_norms)
    findings = _findings(by_key, recipe)
    columns = ["hidden activation", "output", "val acc after epoch 1", "train acc", "val acc",
               "test acc", "first/last layer gradient", "dead ReLU channels",
               "saturated units", "gradient verdicts", "images/s"]
    table = Table(
        "Hidden activations and output functions on LeNet-5",
        columns,
        [[r["activation"], OUTPUT_LABELS[r["output"]], r["first_val_accuracy"],
          r["fit_accuracy"], r["val_accuracy"], r["test_accuracy"], r["grad_ratio"],
          r["dead_fraction"], r["saturated_fraction"], ", ".join(r["verdicts"]),
          round(r["images_per_second"])] for r in rows],
        caption=("First/last layer gradient: median over sampled steps of the ratio of the first "
                 "convolution's weight-gradient norm to the last linear layer's (below 1e-3 "
                 "counts as vanishing). Dead: share of ReLU channels that output zero for a whole "
                 "batch; saturated: share of sigmoid/tanh outputs at their bounds; both over the "
                 "last third of the run. Verdicts from cnnlab.diagnose.diagnose_run."))
    verdict_table = Table(
        "Gradient verdicts, with their evidence",
        ["hidden activation", "output", "verdict", "evidence"],
        [[r["activation"], OUTPUT_LABELS[r["output"]], verdict["kind"], verdict["summary"]]
         for r in rows for verdict in r["verdict_details"]])
    setup = {
        **recipe,
        "data": (f"CIFAR-10 (JPEG copy): {len(data.train)} training, {len(data.val)} "
                 f"validation, {len(data.test)} test images"),
        "budget": (f"{ctx.profile} profile: {len(rows)} LeNet-5 runs of {recipe['epochs']} "
                   f"epochs on {recipe['train_images']} images, each with the gradient "
                   "monitor"),
        "losses": ("the sigmoid-output run reports binary cross-entropy as its loss, so its "
                   "loss curve is not comparable with the others; accuracies are"),
    }
    return StudyResult(name=STUDY.name, title=STUDY.title, question=STUDY.question, setup=setup,
                       tables=[table, verdict_table], figures=figures, findings=findings,
                       numbers={"runs": rows})


def _row(key: str, activation: str, output: str, result: dict[str, Any]) -> dict[str, Any]:
    history, summary, gradients = result["history"], result["summary"], result["gradients"]
    speeds = sorted(row["images_per_second"] for row in history)
    return {
        "key": key, "activation": activation, "output": output,
        "first_val_accuracy": history[0]["val_accuracy"],
        "fit_accuracy": history[-1]["fit_accuracy"], "val_accuracy": history[-1]["val_accuracy"],
        "test_accuracy": summary["test"]["accuracy"], "test_images": summary["test_images"],
        "grad_ratio": _round(gradients["first_to_last_grad_ratio"]),
        "dead_fraction": _round(gradients["dead_fraction_mean"]),
        "saturated_fraction": _round(gradients["saturated_fraction_mean"]),
        "verdicts": [v["kind"] for v in gradients["verdicts"]],
        "verdict_details": gradients["verdicts"],
        "images_per_second": speeds[len(speeds) // 2],
        "monitor_samples": gradients["samples"],
    }


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.3g}")


def _figures(ctx: StudyContext, histories: dict, layer_norms: dict) -> list[Figure]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    save_curves(histories, ctx.out_dir / "curves.png", train="fit",
                title="LeNet-5 by activation: train (dashed) vs validation (solid)")
    figure = MplFigure(figsize=(7, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for index, (label, norms) in enumerate(layer_norms.items()):
        values = [np.nan if v is None else v for v in norms.values()]
        axes.plot(range(1, len(values) + 1), values, marker="o", color=f"C{index}", label=label)
    names = list(next(iter(layer_norms.values()), {}).keys())
    axes.set_xticks(range(1, len(names) + 1), [n.replace(".weight", "") for n in names],
                    rotation=30, ha="right", fontsize="small")
    axes.set_yscale("log")
    axes.set_xlabel("weight layer, input to output")
    axes.set_ylabel("median gradient norm")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(ctx.out_dir / "gradient-norms.png", dpi=100)
    return [Figure("Learning curves", "curves.png"),
            Figure("Gradient norm by layer", "gradient-norms.png",
                   "Median over the monitor's sampled steps of each weight's gradient norm; a "
                   "line falling toward the input is a vanishing gradient.")]


def _findings(rows: dict[str, dict], recipe: dict[str, Any]) -> list[str]:
    relu, sigmoid, tanh = rows["relu"], rows["sigmoid"], rows["tanh"]
    sigmoid_output = rows["relu-sigmoid-output"]
    accuracy, tests = relu["test_accuracy"], relu["test_images"]
    # Two independent test accuracies differ by more than this about one time in twenty by
    # chance alone (binomial sampling of the test images; seed noise comes on top).
    resolution = 1.96 * math.sqrt(2 * accuracy * (1 - accuracy) / tests)
    def ratio_text(row: dict) -> str:
        ratio = row["grad_ratio"]
        return "n/a" if ratio is None else f"{ratio:.3g}"

    ranking = sorted((r for r in rows.values() if r["output"] == "softmax"),
                     key=lambda r: -r["test_accuracy"])
    findings = [
        ("Test accuracy by hidden activation: "
         + ", ".join(f"{r['activation']} {r['test_accuracy']:.3f}" for r in ranking)
         + f". Differences under {resolution:.3f} are within the sampling noise of {tests} "
           "test images (one seed each)."),
    ]
    beat_relu = [r for r in ranking if r["activation"] in ("tanh", "sigmoid")
                 and r["test_accuracy"] > relu["test_accuracy"] + resolution]
    if beat_relu:
        findings.append(
            ", ".join(f"{r['activation']} beat ReLU by "
                      f"{r['test_accuracy'] - relu['test_accuracy']:.3f}" for r in beat_relu)
            + ", contrary to the common claim that ReLU trains better than saturating "
              f"activations. Its first layer's gradient is {ratio_text(tanh)} times the last "
              "layer's: in five weight layers nothing vanishes. A likely reason for its lead, "
              "not measured here: zero-centred outputs with a derivative up to 1.")

    sigmoid_vanishing = "vanishing" in sigmoid["verdicts"]
    findings.append(
        f"Sigmoid hidden units: validation accuracy {sigmoid['first_val_accuracy']:.3f} after "
        f"one epoch against {relu['first_val_accuracy']:.3f} for ReLU, test "
        f"{sigmoid['test_accuracy']:.3f} vs {relu['test_accuracy']:.3f}. The first layer's "
        f"gradient is {ratio_text(sigmoid)} times the last layer's (ReLU: {ratio_text(relu)}; "
        f"tanh: {ratio_text(tanh)}); the monitor's verdicts: {', '.join(sigmoid['verdicts'])}. "
        + ("The gradient reaching the input layers is orders of magnitude smaller, as the "
           "vanishing-gradient claim says."
           if sigmoid_vanishing else
           "In a network this shallow (five weight layers) the gradient does not vanish by the "
           "monitor's thresholds (below 1e-3); "
           + ("sigmoid still learns more slowly"
              + (", sitting at chance for its first epoch" if sigmoid["first_val_accuracy"]
                 < 0.12 else "")
              + ". Likely causes, not measured here: a derivative of at most 0.25 shrinks "
                "every update, and outputs centred on 0.5 rather than 0 slow the next layer."
              if sigmoid["test_accuracy"] < relu["test_accuracy"] - resolution else
              "and sigmoid was not measurably worse at this budget.")))
    smooth = [rows[k] for k in ("leaky_relu", "gelu")]
    close = [r["activation"] for r in smooth
             if abs(r["test_accuracy"] - relu["test_accuracy"]) < resolution]
    findings.append(
        "Leaky ReLU and GELU against ReLU: "
        + ", ".join(f"{r['activation']} {r['test_accuracy'] - relu['test_accuracy']:+.3f}"
                    for r in smooth)
        + (f"; {' and '.join(close)} cannot be told from ReLU at this budget." if close else ".")
        + (f" ReLU's dead-channel share late in the run was {relu['dead_fraction']:.3g}, "
           + ("at or above the monitor's threshold: it reported dead units."
              if "dead-units" in relu["verdicts"] else
              "below the 50% at which the monitor reports dead units; Leaky ReLU exists to "
              "prevent them, so its small difference from ReLU is expected.")
           if relu["dead_fraction"] is not None else ""))
    difference = sigmoid_output["test_accuracy"] - relu["test_accuracy"]
    dead_text = "; ".join(v["summary"] for v in sigmoid_output["verdict_details"]
                          if v["kind"] == "dead-units")
    findings.append(
        f"Independent sigmoid outputs (one-vs-rest BCE) against softmax with cross-entropy, "
        f"both with ReLU hidden units: test {sigmoid_output['test_accuracy']:.3f} vs "
        f"{relu['test_accuracy']:.3f} ({difference:+.3f}); after one epoch "
        f"{sigmoid_output['first_val_accuracy']:.3f} vs {relu['first_val_accuracy']:.3f}. "
        + (f"The monitor found dead ReLU units in the sigmoid-output run ({dead_text}). "
           if dead_text else "")
        + ("Softmax was better, as claimed for single-label classes."
           if difference <= -resolution else
           "The two could not be told apart at this budget: for picking the largest logit, "
           "sigmoids work; the difference is in calibrated probabilities, not accuracy."
           if abs(difference) < resolution else
           "Sigmoid outputs were better here, contrary to the usual advice."))
    findings.append(
        f"Budget: {recipe['epochs']} epochs on {recipe['train_images']} images; slow starters "
        "(sigmoid, tanh) may close part of their gap with more epochs, which this budget does "
        "not show.")
    return findings


STUDY = register(Study(
    name="activations",
    title="Activations: ReLU, Leaky ReLU, GELU, tanh, sigmoid; softmax or sigmoid outputs",
    question=("How do hidden activations change learning speed, accuracy and gradient flow, "
              "and do independent sigmoid outputs work for single-label classes?"),
    budget_seconds={"smoke": 20, "cpu": 300, "full": 2400},
    run=run,
))
