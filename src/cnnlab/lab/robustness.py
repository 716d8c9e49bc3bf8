"""Study "robustness": accuracy under noise, shifts, rotations and FGSM, augmented or not.

The claims under test: a CNN trained with geometric augmentation (shifts,
rotations, flips) holds its accuracy better when test images are shifted or
rotated, but augmentation of that kind does little against pixel noise and
nothing against a gradient-sign (FGSM) attack, which needs only a few grey
levels per pixel to break an undefended model.

Design. The two LeNet-5 runs of the augmentation study (no augmentation, and
the ``keras`` preset on the fly: rotations up to 30 degrees, shifts up to
10%, shear, zoom, flips), reused from that study's folder when the same lab
ran it, else trained here with the same recipe. Both are measured on the
same stratified subset of the CIFAR-10 test images under each perturbation
of :data:`cnnlab.diagnose.robustness.DEFAULT_PERTURBATIONS`; random choices
(noise, directions) are seeded, so both models see the same perturbed images
(FGSM uses each model's own gradient: a white-box attack).
"""

from __future__ import annotations

import logging
import math

import torch

from cnnlab.data import limit
from cnnlab.diagnose.robustness import (
    DEFAULT_PERTURBATIONS,
    UNITS,
    fgsm,
    gaussian_noise,
    perturbed_accuracy,
    rotate,
    translate,
)
from cnnlab.lab.augmentation import reference_run
from cnnlab.lab.study import Figure, Study, StudyContext, StudyResult, Table, register
from cnnlab.report.figures import save_image_grid
from cnnlab.runs.image import load_run_model

log = logging.getLogger(__name__)

MODELS = ((None, "no augmentation"), ("keras", "keras augmentation"))


def run(ctx: StudyContext) -> StudyResult:
    evaluated_images = ctx.pick(smoke=100, cpu=5000, full=10000)
    results, sources, data = {}, {}, None
    for augment, label in MODELS:
        result, run_dir, data = reference_run(ctx, augment)
        model, _ = load_run_model(run_dir, device="cpu")
        test = limit(data.test, evaluated_images, seed=ctx.seed + 7)  # keeps the statistics
        rows = perturbed_accuracy(model, test, DEFAULT_PERTURBATIONS, device="cpu",
                                  seed=ctx.seed)
        results[label] = [row.to_dict() for row in rows]
        sources[label] = {"run": str(run_dir.relative_to(ctx.out_dir.parent))
                          if run_dir.is_relative_to(ctx.out_dir.parent) else str(run_dir),
                          "reused": not run_dir.is_relative_to(ctx.out_dir),
                          "test_accuracy_full_test_set": result["summary"]["test"]["accuracy"]}
    figures = _figures(ctx, results, test, model)
    plain, augmented = results[MODELS[0][1]], results[MODELS[1][1]]
    table_rows = []
    for a, b in zip(plain, augmented, strict=True):
        table_rows.append([a["label"], a["kind"], a["accuracy"], b["accuracy"],
                           a["accuracy"] - plain[0]["accuracy"],
                           b["accuracy"] - augmented[0]["accuracy"]])
    table = Table(
        "Accuracy under perturbation (LeNet-5)",
        ["perturbation", "kind", "acc, no augmentation", "acc, keras augmentation",
         "change, no augmentation", "change, keras augmentation"],
        table_rows,
        caption=(f"{len(test)} CIFAR-10 test images (stratified); change = accuracy minus the "
                 "model's clean accuracy. Units: noise sigma and FGSM epsilon in [0, 1] "
                 "intensity (x255 for grey levels), shifts in pixels along each axis, "
                 "rotations in degrees."))
    setup = {
        "models": "LeNet-5 runs of the augmentation study (same recipe; see its setup)",
        "sources": sources,
        "test_images": len(test),
        "perturbations": [p.label for p in DEFAULT_PERTURBATIONS],
        "units": UNITS,
        "budget": ("cpu profile: under 2 minutes when the augmentation study's runs are reused "
                   "(about 2 more to train them otherwise)"),
    }
    findings = _findings(plain, augmented, len(test))
    return StudyResult(name=STUDY.name, title=STUDY.title, question=STUDY.question, setup=setup,
                       tables=[table], figures=figures, findings=findings,
                       numbers={"accuracy": results, "sources": sources})


def _by_kind(rows: list[dict], kind: str) -> list[dict]:
    return [row for row in rows if row["kind"] == kind]


def _findings(plain: list[dict], augmented: list[dict], tests: int) -> list[str]:
    clean_plain, clean_augmented = plain[0]["accuracy"], augmented[0]["accuracy"]
    # Two accuracies on the same images differ by chance less than independent ones; this
    # independent-sample bound is conservative.
    resolution = 1.96 * math.sqrt(2 * 0.25 / tests)
    findings = [(f"Clean accuracy: {clean_plain:.3f} without augmentation, "
                 f"{clean_augmented:.3f} with the keras preset ({tests} test images; differences "
                 f"under {resolution:.3f} are within sampling noise).")]
    for kind, name in (("shift", "shifts"), ("rotation", "rotations"), ("noise", "noise")):
        a, b = _by_kind(plain, kind)[-1], _by_kind(augmented, kind)[-1]
        drop_plain, drop_augmented = a["accuracy"] - clean_plain, b["accuracy"] - clean_augmented
        held = drop_augmented - drop_plain
        if held > resolution:
            verdict = (f"the augmented model lost {abs(held):.3f} less"
                       + (", as claimed for geometric augmentation" if kind != "noise" else
                          ": the geometric preset also helped against noise"))
        elif held < -resolution:
            verdict = f"the augmented model lost {abs(held):.3f} more, contrary to the claim"
        else:
            verdict = "the two models lost about the same"
        findings.append(
            f"Strongest {name} ({a['label']}): accuracy {a['accuracy']:.3f} "
            f"({drop_plain:+.3f}) without augmentation, {b['accuracy']:.3f} "
            f"({drop_augmented:+.3f}) with it: {verdict}.")
    fgsm_plain, fgsm_augmented = _by_kind(plain, "fgsm"), _by_kind(augmented, "fgsm")
    findings.append(
        "FGSM: " + "; ".join(f"{a['label']}: {a['accuracy']:.3f} vs {b['accuracy']:.3f}"
                             for a, b in zip(fgsm_plain, fgsm_augmented, strict=True))
        + f" (no augmentation vs keras). A change of {fgsm_plain[1]['strength'] * 255:g} grey "
          f"levels per pixel, invisible to a person, takes the plain model from "
          f"{clean_plain:.3f} to {fgsm_plain[1]['accuracy']:.3f}; geometric augmentation is no "
          "defence against a gradient-sign attack"
        + (" here either." if fgsm_augmented[-1]["accuracy"] < clean_augmented / 2 else
           ", though here the augmented model kept more than half its accuracy at the "
           "largest epsilon."))
    return findings


def _figures(ctx: StudyContext, results: dict[str, list[dict]], test, model) -> list[Figure]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    kinds = ("noise", "shift", "rotation", "fgsm")
    figure = MplFigure(figsize=(10, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(kinds), sharey=True)
    for panel, kind in zip(axes, kinds, strict=True):
        for index, (label, rows) in enumerate(results.items()):
            points = [(0.0, rows[0]["accuracy"])] + [
                (row["strength"] * (255 if kind == "fgsm" else 1), row["accuracy"])
                for row in _by_kind(rows, kind)]
            panel.plot(*zip(*points, strict=True), marker="o", color=f"C{index}", label=label)
        panel.set_xlabel({"noise": "noise sigma (0-1)", "shift": "shift (pixels)",
                          "rotation": "rotation (degrees)",
                          "fgsm": "FGSM epsilon (grey levels)"}[kind])
        panel.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize="small")
    figure.savefig(ctx.out_dir / "robustness.png", dpi=100)

    # The strongest setting of each perturbation on the first few test images.
    count = 6
    images = test.inputs[:count].float() / 255
    targets = test.targets[:count]
    generator = torch.Generator().manual_seed(ctx.seed)
    mean = torch.tensor(test.mean).view(1, -1, 1, 1)
    std = torch.tensor(test.std).view(1, -1, 1, 1)
    rows = [images, gaussian_noise(images, 0.1, generator), translate(images, 4, generator),
            rotate(images, 20, generator), fgsm(model, images, targets, 8 / 255, mean=mean,
                                                std=std)]
    names = ["clean", "noise 0.1", "shift 4 px", "rotate 20", "FGSM 8/255"]
    grid = (torch.cat(rows) * 255).round().clamp(0, 255).to(torch.uint8)
    save_image_grid(grid, ctx.out_dir / "perturbed-examples.png", nrow=count,
                    titles=[name for name in names for _ in range(count)],
                    title="the strongest perturbation of each kind (FGSM against the keras model)")
    return [Figure("Accuracy against perturbation strength", "robustness.png"),
            Figure("Perturbed test images", "perturbed-examples.png",
                   "One row per perturbation at its largest strength.")]


STUDY = register(Study(
    name="robustness",
    title="Robustness: noise, shifts, rotations and FGSM, with and without augmentation",
    question=("How much accuracy do trained CNNs lose under Gaussian noise, small shifts and "
              "rotations, and a one-step gradient-sign attack, and does augmentation help?"),
    budget_seconds={"smoke": 15, "cpu": 120, "full": 600},
    run=run,
))
