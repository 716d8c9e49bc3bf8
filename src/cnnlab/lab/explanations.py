"""Study "explanations": where a CNN looks (Grad-CAM), and which classes it confuses.

The claims under test: Grad-CAM shows that a correct prediction rests on the
object, while wrong ones often rest on background or context; and the
errors of a small CNN on CIFAR-10 concentrate on a few visually similar
pairs of classes (cat and dog, automobile and truck, ...).

Design. The LeNet-5 run without augmentation of the augmentation study
(reused from that study's folder when the same lab ran it, else trained here
with the same recipe). Predictions over the test images give the confusion
matrix, per-class accuracy and the most confused pairs. Grad-CAM maps at
the last convolution (10x10 units, each seeing a 14x14 pixel patch) explain
each image's predicted class, and for wrong predictions also the true class.
CIFAR-10 objects are mostly centred, so the share of a map's weight inside
the central quarter of the image (16x16 of 32x32; an evenly spread map puts
0.25 there) measures whether the model looked at the object; it is compared
between correct and wrong predictions.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from cnnlab.data import limit
from cnnlab.diagnose.explain import (
    central_mass,
    confusion_matrix,
    grad_cam,
    most_confused_pairs,
    overlay_heatmaps,
    per_class_accuracy,
)
from cnnlab.lab.augmentation import reference_run
from cnnlab.lab.study import Figure, Study, StudyContext, StudyResult, Table, register
from cnnlab.report.figures import save_confusion, save_image_grid
from cnnlab.runs.image import load_run_model
from cnnlab.train import predict_logits

log = logging.getLogger(__name__)

LAYER = "features.3"  # LeNet-5's second (last) convolution
EXAMPLES = 8  # images per row of the Grad-CAM figure
CAM_BATCH = 256


def run(ctx: StudyContext) -> StudyResult:
    cam_images = ctx.pick(smoke=100, cpu=2000, full=10000)
    result, run_dir, data = reference_run(ctx, None)
    model, _ = load_run_model(run_dir, device="cpu")
    test = data.test
    classes = test.classes

    # Predictions and the confusion matrix over every test image of the recipe.
    logits = predict_logits(model, test, device="cpu")
    predictions = logits.argmax(dim=1)
    confusion = confusion_matrix(test.targets, predictions, len(classes))
    accuracy_by_class = per_class_accuracy(confusion)
    pairs = most_confused_pairs(confusion, classes, top=5)
    errors = int(confusion.sum() - np.trace(confusion))
    save_confusion(confusion, classes, ctx.out_dir / "confusion.png",
                   title=f"LeNet-5 on {len(test)} CIFAR-10 test images")

    # Grad-CAM over a stratified subset: where correct and wrong predictions look.
    subset = limit(test, cam_images, seed=ctx.seed + 11)
    maps, cam_predictions, confidence, backend = _cams(model, subset)
    correct = cam_predictions == subset.targets.numpy()
    mass = central_mass(maps)
    mass_correct, mass_wrong = _mean_and_error(mass[correct]), _mean_and_error(mass[~correct])

    figures = [Figure("Confusion matrix", "confusion.png",
                      "Rows: true class; colour: share of the true class; numbers: counts.")]
    figures.append(_example_figure(ctx, model, subset, cam_predictions, confidence, correct,
                                   classes, backend))
    tables = [
        Table("Most confused pairs of classes",
              ["true class", "predicted as", "count", "share of true class",
               "count the other way"],
              [[p["true"], p["predicted"], p["count"], p["share_of_true"], p["reverse_count"]]
               for p in pairs],
              caption=f"{errors} errors among {len(test)} test images."),
        Table("Accuracy by class", ["class", "test accuracy", "test images"],
              [[name, float(accuracy_by_class[i]), int(confusion[i].sum())]
               for i, name in enumerate(classes)]),
        Table("Where Grad-CAM puts its weight",
              ["predictions", "images", "weight in the central quarter (mean)",
               "standard error"],
              [["correct", mass_correct["count"], mass_correct["mean"], mass_correct["error"]],
               ["wrong", mass_wrong["count"], mass_wrong["mean"], mass_wrong["error"]]],
              caption="An evenly spread map puts 0.25 of its weight in the central 16x16 "
                      "pixels."),
    ]
    findings = _findings(result, confusion, classes, pairs, accuracy_by_class, mass_correct,
                         mass_wrong, errors)
    setup = {
        "model": "LeNet-5 without augmentation, from the augmentation study (same recipe)",
        "run": str(run_dir),
        "reused": not run_dir.is_relative_to(ctx.out_dir),
        "test_images": len(test),
        "grad_cam_images": len(subset),
        "grad_cam_layer": f"{LAYER} (LeNet-5's last convolution, 10x10 units)",
        "grad_cam_backend": (f"{backend}: " + ("the maintained grad-cam package" if
                                               backend == "grad-cam" else
                                               "cnnlab's torch hooks (the grad-cam package is "
                                               "not installed; pip install 'cnnlab[explain]')")),
        "budget": "cpu profile: under a minute when the augmentation study's run is reused",
    }
    numbers = {"confusion": confusion.tolist(), "classes": classes, "pairs": pairs,
               "per_class_accuracy": dict(zip(classes, accuracy_by_class.tolist())),
               "central_mass": {"correct": mass_correct, "wrong": mass_wrong},
               "errors": errors}
    return StudyResult(name=STUDY.name, title=STUDY.title, question=STUDY.question, setup=setup,
                       tables=tables, figures=figures, findings=findings, numbers=numbers)


def _cams(model, data) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    maps, predictions, confidence, backend = [], [], [], "hooks"
    for start in range(0, len(data), CAM_BATCH):
        batch = grad_cam(model, data.inputs[start:start + CAM_BATCH], layer=LAYER,
                         mean=data.mean, std=data.std)
        maps.append(batch.maps)
        predictions += batch.predictions
        confidence += batch.probabilities
        backend = batch.backend
    return np.concatenate(maps), np.array(predictions), np.array(confidence), backend


def _mean_and_error(values: np.ndarray) -> dict[str, Any]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"count": 0, "mean": None, "error": None}
    error = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return {"count": len(values), "mean": float(values.mean()), "error": error}


def _pick(order: np.ndarray, labels: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` indices from ``order``, one per label first, then any."""
    chosen, seen = [], set()
    for index in order:
        if labels[index] not in seen:
            chosen.append(int(index))
            seen.add(labels[index])
        if len(chosen) == count:
            return chosen
    rest = [int(i) for i in order if int(i) not in chosen]
    return chosen + rest[:count - len(chosen)]


def _example_figure(ctx: StudyContext, model, data, predictions: np.ndarray,
                    confidence: np.ndarray, correct: np.ndarray, classes: list[str],
                    backend: str) -> Figure:
    targets = data.targets.numpy()
    most_confident = np.argsort(-confidence)
    right = _pick(most_confident[correct[most_confident]], targets, EXAMPLES)
    wrong = _pick(most_confident[~correct[most_confident]], targets, EXAMPLES)
    rows, titles = [], []
    if right:
        images = data.inputs[right]
        cams = grad_cam(model, images, layer=LAYER, mean=data.mean, std=data.std,
                        backend=backend).maps
        rows += [_pad(images), _pad(overlay_heatmaps(images, cams))]
        titles += _pad_titles([f"{classes[targets[i]]} {confidence[i]:.2f}" for i in right])
        titles += _pad_titles(["why: " + classes[targets[i]] for i in right])
    if wrong:
        images = data.inputs[wrong]
        predicted = [int(predictions[i]) for i in wrong]
        for_prediction = grad_cam(model, images, layer=LAYER, target_classes=predicted,
                                  mean=data.mean, std=data.std, backend=backend).maps
        for_truth = grad_cam(model, images, layer=LAYER, target_classes=targets[wrong].tolist(),
                             mean=data.mean, std=data.std, backend=backend).maps
        rows += [_pad(images), _pad(overlay_heatmaps(images, for_prediction)),
                 _pad(overlay_heatmaps(images, for_truth))]
        titles += _pad_titles([f"true: {classes[targets[i]]}" for i in wrong])
        titles += _pad_titles([f"why {classes[predictions[i]]} {confidence[i]:.2f}"
                               for i in wrong])
        titles += _pad_titles([f"why not {classes[targets[i]]}" for i in wrong])
    save_image_grid(torch.cat(rows), ctx.out_dir / "grad-cam.png", nrow=EXAMPLES, titles=titles,
                    cell_inches=1.6,
                    title="Grad-CAM: most confident correct (rows 1-2) and wrong (rows 3-5)")
    return Figure("Grad-CAM on correct and wrong predictions", "grad-cam.png",
                  "Rows 1-2: the most confident correct predictions and the map for their class. "
                  "Rows 3-5: the most confident mistakes with their true class, the map for the "
                  "predicted class (with its probability), and the map for the true class.")


def _pad(images: torch.Tensor) -> torch.Tensor:
    """Fill a short row with white images so every row of the grid starts a new line."""
    missing = EXAMPLES - len(images)
    if missing <= 0:
        return images
    blank = torch.full((missing, *images.shape[1:]), 255, dtype=torch.uint8)
    return torch.cat([images, blank])


def _pad_titles(titles: list[str]) -> list[str]:
    return titles + [""] * (EXAMPLES - len(titles))


def _findings(result: dict[str, Any], confusion: np.ndarray, classes: list[str],
              pairs: list[dict], accuracy_by_class: np.ndarray, mass_correct: dict,
              mass_wrong: dict, errors: int) -> list[str]:
    tests = int(confusion.sum())
    accuracy = float(np.trace(confusion)) / max(1, tests)
    best, worst = int(np.argmax(accuracy_by_class)), int(np.argmin(accuracy_by_class))
    findings = [(f"LeNet-5 without augmentation: test accuracy {accuracy:.3f} on {tests} images; "
                 f"best class {classes[best]} ({accuracy_by_class[best]:.3f}), worst "
                 f"{classes[worst]} ({accuracy_by_class[worst]:.3f}).")]
    if pairs:
        top = pairs[0]
        top_share = sum(p["count"] for p in pairs) / max(1, errors)
        findings.append(
            f"The most confused pair is {top['true']} taken for {top['predicted']} "
            f"({top['count']} times, {top['share_of_true']:.1%} of the {top['true']} images; "
            f"{top['reverse_count']} the other way). The five most confused pairs hold "
            f"{top_share:.0%} of all {errors} errors, against "
            f"{5 / (len(classes) * (len(classes) - 1)):.0%} if errors were spread evenly over "
            f"the {len(classes) * (len(classes) - 1)} ordered pairs: "
            + ("errors concentrate on a few pairs, as claimed."
               if top_share > 2 * 5 / (len(classes) * (len(classes) - 1)) else
               "errors are spread rather than concentrated, contrary to the claim."))
    if mass_correct["mean"] is not None and mass_wrong["mean"] is not None and \
            mass_correct["error"] and mass_wrong["error"]:
        difference = mass_correct["mean"] - mass_wrong["mean"]
        spread = 2 * math.sqrt(mass_correct["error"] ** 2 + mass_wrong["error"] ** 2)
        findings.append(
            f"Grad-CAM puts {mass_correct['mean']:.3f} of its weight in the central quarter of "
            f"the image for correct predictions ({mass_correct['count']} images) and "
            f"{mass_wrong['mean']:.3f} for wrong ones ({mass_wrong['count']}); an even spread "
            f"gives 0.25. Difference {difference:+.3f} (two standard errors: {spread:.3f}): "
            + ("correct predictions look at the centre, where CIFAR-10 objects sit, more than "
               "wrong ones do, consistent with the claim that mistakes rest more on context."
               if difference > spread else
               "wrong predictions do not look away from the centre more than correct ones, so "
               "this measure does not support the claim that mistakes rest on context."
               if difference > -spread else
               "wrong predictions look at the centre more than correct ones, contrary to the "
               "claim."))
    else:
        findings.append("Too few correct or wrong predictions to compare where Grad-CAM looks.")
    findings.append("Grad-CAM at LeNet-5's last convolution has 10x10 units, each seeing a "
                    "14x14 patch: the maps are coarse, and they show which region raised the "
                    "class score, not which features inside it did.")
    return findings


STUDY = register(Study(
    name="explanations",
    title="Explanations: Grad-CAM on right and wrong predictions, the most confused classes",
    question=("Where does a CNN look when it is right and when it is wrong, and which classes "
              "does it confuse?"),
    budget_seconds={"smoke": 15, "cpu": 60, "full": 300},
    run=run,
))
