"""Study "downsampling": max pooling, average pooling, strided convolution, or none.

The claims under test: a strided convolution can replace pooling at a
fraction of the compute with little loss of accuracy; max pooling beats
average pooling for classification; and a network that never downsamples
keeps more detail but pays for it in compute while its units see only a
small patch of the image.

Design. One ``small_cnn`` (3x3 convolutions with batch norm and ReLU, one
per stage, a global average pool and a linear head); only ``downsample``
changes: ``max`` or ``avg`` (a 2x2 pool after each stage), ``stride`` (the
stage's convolution has stride 2) or ``none``. The four models have exactly
the same parameters. Parameters, multiply-accumulates (MACs) and receptive
fields come from :func:`cnnlab.inspect.inspect` on the model itself; epoch
time is the measured training time of an epoch (images / images per second).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from cnnlab.inspect import inspect
from cnnlab.lab.augmentation import design_data, fit_image_run, train_config
from cnnlab.lab.study import Figure, Study, StudyContext, StudyResult, Table, register
from cnnlab.models import build_model
from cnnlab.report.figures import save_curves
from cnnlab.runs.image import RunSpec

log = logging.getLogger(__name__)

DOWNSAMPLING = ("max", "avg", "stride", "none")
LABELS = {"max": "max pooling", "avg": "average pooling", "stride": "strided convolution",
          "none": "none"}


def _recipe(ctx: StudyContext) -> dict[str, Any]:
    """Every budget choice; ``none`` keeps 32x32 maps in every stage, so it sets the budget."""
    return {
        "model": "small_cnn",
        "widths": ctx.pick(smoke="4,8", cpu="8,16,32", full="32,64,128"),
        "depth": ctx.pick(smoke=1, cpu=1, full=2),
        "norm": "batch",
        "train_images": ctx.pick(smoke=400, cpu=10000, full=45000),
        "validation_images": ctx.pick(smoke=200, cpu=2000, full=5000),
        "test_images": ctx.pick(smoke=300, cpu=10000, full=10000),
        "epochs": ctx.pick(smoke=1, cpu=10, full=30),
        "batch_size": 128, "optimizer": "adam", "lr": 1e-3, "schedule": "none",
        "fit_subset": ctx.pick(smoke=200, cpu=2000, full=5000),
    }


def measure_architecture(options: dict[str, Any], input_shape: str = "3x32x32"
                         ) -> dict[str, Any]:
    """Parameters, MACs, and the receptive field and map size of the last feature layer."""
    model = build_model("small_cnn", **options)
    result = inspect(model, input_shape)
    features = result.row("features")  # the last layer before the global average pool
    field = features.receptive_field
    return {
        "params": result.total_params,
        "macs": result.total_macs,
        "receptive_field": float(field[0]) if field else None,
        "jump": float(features.jump[0]) if features.jump and features.jump[0] else None,
        "feature_map": list(features.output_shape or []),
        "final_receptive_field": (float(result.final_receptive_field[0])
                                  if result.final_receptive_field else None),
        "inspect_method": result.method,
    }


def run(ctx: StudyContext) -> StudyResult:
    recipe = _recipe(ctx)
    data = design_data(ctx, recipe["train_images"], recipe["validation_images"],
                       recipe["test_images"])
    rows, histories = [], {}
    for downsample in DOWNSAMPLING:
        options = {"widths": recipe["widths"], "depth": recipe["depth"], "norm": recipe["norm"],
                   "downsample": downsample}
        architecture = measure_architecture(options)
        spec = RunSpec(model="small_cnn", model_options=options,
                       limit=recipe["train_images"] + recipe["validation_images"],
                       validation=recipe["validation_images"])
        config = train_config(ctx, recipe, epochs=recipe["epochs"], seed=ctx.seed)
        key = {"spec": spec.to_dict(), "train": config.to_dict(), "profile": ctx.profile,
               "data": {k: recipe[k] for k in ("train_images", "validation_images",
                                                "test_images")}}

        def train(run_dir: Path, spec=spec, config=config) -> dict[str, Any]:
            return fit_image_run(data, spec, config, run_dir, curves=ctx.profile != "smoke")

        result = ctx.run_cached(f"small-cnn-{downsample}", key, train)
        histories[LABELS[downsample]] = result["history"]
        rows.append(_row(downsample, architecture, result))

    by_key = {row["downsample"]: row for row in rows}
    figures = _figures(ctx, histories, rows)
    findings = _findings(by_key, recipe)
    columns = ["downsampling", "params", "MACs (M)", "receptive field (px)", "last feature map",
               "train s/epoch", "images/s", "train acc", "val acc", "test acc", "fit verdict"]
    table = Table(
        "Same network, four ways to downsample",
        columns,
        [[LABELS[r["downsample"]], r["params"], round(r["macs"] / 1e6, 2),
          r["receptive_field"], "x".join(str(v) for v in r["feature_map"]),
          round(r["epoch_seconds"], 1), round(r["images_per_second"]), r["fit_accuracy"],
          r["val_accuracy"], r["test_accuracy"], r["verdict"]] for r in rows],
        caption=("MACs: multiply-accumulates for one 32x32 image. Receptive field: the side "
                 "of the input patch one unit of the last feature layer sees (before the "
                 "global average pool, which then sees the whole image), from cnnlab.inspect. "
                 f"Test accuracy on {len(data.test)} CIFAR-10 test images."))
    setup = {
        **recipe,
        "data": (f"CIFAR-10 (JPEG copy): {len(data.train)} training, {len(data.val)} "
                 f"validation, {len(data.test)} test images"),
        "budget": (f"{ctx.profile} profile: {recipe['epochs']} epochs on "
                   f"{recipe['train_images']} images per network; the network without "
                   "downsampling is the slowest by far and sets the budget"),
        "architecture_source": f"cnnlab.inspect ({rows[0]['inspect_method']})",
    }
    return StudyResult(name=STUDY.name, title=STUDY.title, question=STUDY.question, setup=setup,
                       tables=[table], figures=figures, findings=findings,
                       numbers={"runs": rows})


def _row(downsample: str, architecture: dict[str, Any], result: dict[str, Any]
         ) -> dict[str, Any]:
    history, summary = result["history"], result["summary"]
    last = history[-1]
    speeds = sorted(row["images_per_second"] for row in history)
    images_per_second = speeds[len(speeds) // 2]
    return {
        "downsample": downsample, **architecture,
        "images_per_second": images_per_second,
        "epoch_seconds": summary["train_samples"] / images_per_second,
        "fit_accuracy": last["fit_accuracy"], "val_accuracy": last["val_accuracy"],
        "test_accuracy": summary["test"]["accuracy"], "test_images": summary["test_images"],
        "verdict": summary["fit_verdict"]["verdict"],
    }


def _figures(ctx: StudyContext, histories: dict, rows: list[dict]) -> list[Figure]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    save_curves(histories, ctx.out_dir / "curves.png", train="fit",
                title="small_cnn by downsampling: train (dashed) vs validation (solid)")
    figure = MplFigure(figsize=(6.5, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for index, row in enumerate(rows):
        axes.scatter(row["macs"] / 1e6, row["test_accuracy"], s=40 + row["epoch_seconds"],
                     color=f"C{index}")
        axes.annotate(f"{LABELS[row['downsample']]}\nRF {row['receptive_field']:g} px",
                      (row["macs"] / 1e6, row["test_accuracy"]), textcoords="offset points",
                      xytext=(6, 4), fontsize="small")
    axes.set_xscale("log")
    axes.set_xlabel("MACs per image (millions, log scale)")
    axes.set_ylabel("test accuracy")
    axes.grid(alpha=0.3)
    axes.set_title("Accuracy against compute (marker area grows with epoch time)")
    figure.savefig(ctx.out_dir / "accuracy-vs-macs.png", dpi=100)
    return [Figure("Learning curves", "curves.png"),
            Figure("Test accuracy against MACs", "accuracy-vs-macs.png",
                   "Each point is one downsampling method; labels give the receptive field "
                   "of the last feature layer.")]


def _findings(rows: dict[str, dict], recipe: dict[str, Any]) -> list[str]:
    max_, avg, stride, none = rows["max"], rows["avg"], rows["stride"], rows["none"]
    tests = max_["test_images"]
    accuracy = max_["test_accuracy"]
    # Two independent test accuracies differ by more than this about one time in twenty by
    # chance alone (binomial sampling of the test images; seed noise comes on top).
    resolution = 1.96 * math.sqrt(2 * accuracy * (1 - accuracy) / tests)

    def versus(a: dict, b: dict) -> str:
        difference = a["test_accuracy"] - b["test_accuracy"]
        verdict = "within test-sampling noise" if abs(difference) < resolution else \
            ("higher" if difference > 0 else "lower")
        return (f"{a['test_accuracy']:.3f} vs {b['test_accuracy']:.3f} "
                f"({difference:+.3f}, {verdict})")

    stride_claim = ("so the claim that a strided convolution can replace pooling held here"
                    if stride["test_accuracy"] > max_["test_accuracy"] - resolution else
                    "so at this budget replacing pooling by strides cost accuracy, contrary to "
                    "the claim")
    avg_claim = ("max pooling beat average pooling, as usually claimed"
                 if max_["test_accuracy"] - avg["test_accuracy"] >= resolution else
                 "max and average pooling could not be told apart"
                 if abs(max_["test_accuracy"] - avg["test_accuracy"]) < resolution else
                 "average pooling beat max pooling, contrary to the usual claim")
    findings = [
        (f"Strided convolution needs {stride['macs'] / 1e6:.2f} M MACs per image against "
         f"{max_['macs'] / 1e6:.2f} M with max pooling ({max_['macs'] / stride['macs']:.1f}x "
         f"fewer: each stage's convolution computes only every other position) and trains "
         f"{max_['epoch_seconds'] / stride['epoch_seconds']:.1f}x faster per epoch "
         f"({stride['epoch_seconds']:.1f} s vs {max_['epoch_seconds']:.1f} s); test accuracy "
         f"{versus(stride, max_)}, {stride_claim}."),
        (f"Max against average pooling: same MACs and receptive field "
         f"({max_['receptive_field']:g} px), test accuracy {versus(max_, avg)}: {avg_claim}."),
        (f"Without downsampling the network computes {none['macs'] / 1e6:.1f} M MACs "
         f"({none['macs'] / max_['macs']:.1f}x max pooling's), trains at "
         f"{none['images_per_second']:.0f} images/s against {max_['images_per_second']:.0f}, "
         f"and its last feature layer sees {none['receptive_field']:g} px patches against "
         f"{max_['receptive_field']:g} px; test accuracy {versus(none, max_)}. "
         + ("More compute at full resolution did not buy accuracy: small receptive fields "
            "averaged by the global pool see texture, not objects."
            if none["test_accuracy"] < max_["test_accuracy"] + resolution else
            "Here the extra compute at full resolution paid off in accuracy.")),
        (f"Test accuracies differing by less than {resolution:.3f} are within the sampling "
         f"noise of {tests} test images; with {recipe['epochs']} epochs on "
         f"{recipe['train_images']} images every network is still far from converged, so "
         "these are early-training comparisons."),
    ]
    return findings


STUDY = register(Study(
    name="downsampling",
    title="Downsampling: max pooling, average pooling, strided convolution, none",
    question=("What do max pooling, average pooling, strided convolution and no downsampling "
              "cost in compute and time, what do they do to the receptive field, and which is "
              "most accurate?"),
    budget_seconds={"smoke": 20, "cpu": 240, "full": 1800},
    run=run,
))
