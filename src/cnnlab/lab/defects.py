"""Study "defects": which number to optimise when defects must not reach customers.

A small CNN learns good vs. defective magnetic tiles (the shared set: 952
good and 392 defective grayscale photographs, several of each physical
tile). The split keeps every tile in one of train, validation and test
(``tile_group`` of its ``labels.csv``), because photographs of one tile
under another exposure would otherwise let the test measure memory.

Each run is judged at every threshold. Four policies pick a threshold on
validation (highest F1; recall >= target; precision >= target; lowest
expected cost) and the test split counts what each lets through: escaped
defects and discarded good parts per 10,000 parts, at the data's defect
rate and again at a line rate of 1%. The threshold of 0.5, which accuracy
uses, is shown beside them. Runs differ only in how the class imbalance is
handled (positive weight, balanced sampler, none); one seed each.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data import find_dataset
from cnnlab.diagnose.thresholds import PolicySettings, ThresholdReport, threshold_report
from cnnlab.lab.study import Figure, Study, StudyContext, StudyResult, Table, register
from cnnlab.report.figures import save_bar
from cnnlab.runs.binary import SCORES_FILE, THRESHOLDS_FILE, train_binary
from cnnlab.train import TrainConfig

log = logging.getLogger(__name__)

POLICY_NAMES = {"max_f1": "max F1", "min_recall": "recall >= target",
                "min_precision": "precision >= target", "min_cost": "lowest cost",
                "fixed": "0.5 (accuracy's)"}
SHORT_NAMES = {"max_f1": "max F1", "min_recall": "recall target", "min_precision": "precision",
               "min_cost": "lowest cost", "fixed": "0.5"}  # bar labels must fit side by side
LINE_RATE = 0.01  # a second, more realistic defect rate for the same thresholds


def recipe(ctx: StudyContext) -> dict[str, Any]:
    """Every setting of the study's runs, by profile, in one place."""
    return {
        "size": ctx.pick(smoke=32, cpu=64, full=128),  # pixels, stretched from ~300 x 250
        # Six exposures per tile: standardising each image leaves local contrast (measured at
        # 64 px, 8 epochs, one seed: test PR-AUC 0.53 with it, 0.44 without).
        "contrast": "per_image",
        "model": "small_cnn",
        "model_options": ctx.pick(smoke={"widths": "4,8", "depth": 1},
                                  cpu={"widths": "16,32,64", "depth": 1},
                                  full={"widths": "32,64,128", "depth": 2}),
        "augment": "flip",  # left-right flips keep a tile a tile; crops could cut a defect off
        "epochs": ctx.pick(smoke=1, cpu=24, full=40),
        "batch_size": 32,
        "lr": 2e-3,
        "schedule": "cosine",
        "imbalance": ctx.pick(smoke=["pos_weight"], cpu=["pos_weight", "none", "sampler"],
                              full=["pos_weight", "none", "sampler"]),
        "min_recall": 0.99,
        "min_precision": 0.95,
        "cost_escape": 10.0,
        "cost_false_alarm": 1.0,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "fit_subset": 256,  # un-augmented train images measured per epoch (saves time)
    }


def _train(ctx: StudyContext, root: Path, settings: dict[str, Any], imbalance: str,
           run_dir: Path) -> dict[str, Any]:
    config = TrainConfig(epochs=settings["epochs"], batch_size=settings["batch_size"],
                         lr=settings["lr"], schedule=settings["schedule"], seed=ctx.seed,
                         device=ctx.device, fit_subset=settings["fit_subset"],
                         restore_best=True, checkpoint_every=0)
    summary = train_binary(
        str(root), "defective", run_dir, model=settings["model"],
        model_options=settings["model_options"], size=settings["size"],
        contrast=settings["contrast"], augment=settings["augment"], imbalance=imbalance,
        val_fraction=settings["val_fraction"],
        test_fraction=settings["test_fraction"], min_recall=settings["min_recall"],
        min_precision=settings["min_precision"], cost_escape=settings["cost_escape"],
        cost_false_alarm=settings["cost_false_alarm"], config=config, live_curves=False,
        progress=ctx.progress)
    summary["run_dir"] = str(run_dir)
    return summary


def run(ctx: StudyContext) -> StudyResult:
    started = time.perf_counter()
    root = find_dataset("defects", explicit_root=ctx.data_root)
    settings = recipe(ctx)

    runs: dict[str, dict[str, Any]] = {}
    for imbalance in settings["imbalance"]:
        config = {key: value for key, value in settings.items() if key != "imbalance"}
        config["imbalance"] = imbalance
        runs[imbalance] = ctx.run_cached(
            f"defects-{imbalance}", config,
            lambda run_dir, imbalance=imbalance: _train(ctx, root, settings, imbalance, run_dir))

    main = runs["pos_weight"]
    main_dir = Path(main["run_dir"])
    line = _line_rate_report(main_dir, main["settings"])
    numbers = _numbers(runs, line)
    tables = [_policy_table(main), _line_table(line, main), _imbalance_table(runs),
              _split_table(main)]
    figures = _figures(ctx, runs, main_dir)
    setup = {"profile": ctx.profile, "seed": ctx.seed, "data": str(root), "recipe": settings,
             "split": main["split"]["split_note"],
             "defect_rate": f"{main['settings']['defect_rate']:.4f} "
                            f"({main['defect_rate_source']}); also {LINE_RATE:g}",
             "threshold_rule": "a part is flagged defective when its score >= the threshold; "
                               "thresholds are chosen on validation and counted on test"}
    return StudyResult(name="defects", title=STUDY.title, question=STUDY.question, setup=setup,
                       tables=tables, figures=figures, findings=_findings(runs, line, ctx),
                       numbers=numbers, wall_seconds=time.perf_counter() - started)


def _line_rate_report(run_dir: Path, stored: dict[str, Any]) -> ThresholdReport:
    """The same run's policies with the line's defect rate instead of the data's."""
    with np.load(run_dir / SCORES_FILE, allow_pickle=False) as scores:
        settings = PolicySettings(defect_rate=LINE_RATE, min_recall=stored["min_recall"],
                                  min_precision=stored["min_precision"],
                                  cost_escape=stored["cost_escape"],
                                  cost_false_alarm=stored["cost_false_alarm"])
        return threshold_report(scores["val_targets"], scores["val_scores"],
                                scores["test_targets"], scores["test_scores"], settings,
                                defect_rate_source="a line rate of 1% (assumed)")


def _met(policy: dict[str, Any]) -> str:
    if policy["met_on_test"] is None:
        return "-"
    return "yes" if policy["met_on_test"] else "no"


def _policy_table(main: dict[str, Any]) -> Table:
    rate = main["settings"]["defect_rate"]
    rows = []
    for name, policy in main["policies"].items():
        test = policy["test"]
        rows.append([POLICY_NAMES[name], round(policy["threshold"], 4),
                     round(test["precision"], 3), round(test["recall"], 3),
                     round(test["specificity"], 3), round(policy["escapes_per_parts"], 1),
                     round(policy["discards_per_parts"], 1), _met(policy)])
    return Table(
        title=f"Threshold policies (positive weight run): per 10,000 parts at the data's "
              f"defect rate {rate:.3f}",
        columns=["policy", "threshold", "precision", "recall", "specificity",
                 "escaped defects", "discarded good", "target met on test"],
        rows=rows,
        caption=f"Thresholds chosen on validation ({main['validation']['positives']} defective "
                f"of {main['validation']['positives'] + main['validation']['negatives']} "
                f"images), counted on test ({main['test']['positives']} of "
                f"{main['test']['positives'] + main['test']['negatives']}). Targets: recall >= "
                f"{main['settings']['min_recall']:g}, precision >= "
                f"{main['settings']['min_precision']:g}; costs: escape "
                f"{main['settings']['cost_escape']:g}, false alarm "
                f"{main['settings']['cost_false_alarm']:g}. Test PR-AUC (average precision) "
                f"{main['test']['average_precision']:.3f}, ROC-AUC {main['test']['roc_auc']:.3f}.")


def _line_table(line: ThresholdReport, main: dict[str, Any]) -> Table:
    rows = []
    for policy in line.policies:
        test = policy.test
        recall, false_alarms = test["recall"], 1 - test["specificity"]
        flagged = LINE_RATE * recall + (1 - LINE_RATE) * false_alarms
        precision = LINE_RATE * recall / flagged if flagged else float("nan")
        rows.append([POLICY_NAMES[policy.name], round(policy.threshold, 4),
                     round(precision, 3), round(recall, 3),
                     round(policy.escapes_per_parts, 1), round(policy.discards_per_parts, 1)])
    return Table(
        title=f"The same model at a line defect rate of {LINE_RATE:.0%}: per 10,000 parts",
        columns=["policy", "threshold", "precision on the line", "recall", "escaped defects",
                 "discarded good"],
        rows=rows,
        caption="Recall and the false-alarm rate are the test split's; precision is what they "
                f"give when only {LINE_RATE:.0%} of parts are defective. The lowest-cost "
                "threshold is chosen again for this rate; the others do not depend on it.")


def _imbalance_table(runs: dict[str, dict[str, Any]]) -> Table:
    rows = []
    for imbalance, summary in runs.items():
        recall_policy, fixed = summary["policies"]["min_recall"], summary["policies"]["fixed"]
        rows.append([imbalance, round(summary["test"]["average_precision"], 3),
                     round(summary["test"]["roc_auc"], 3),
                     round(summary["validation"]["average_precision"], 3),
                     round(fixed["test"]["recall"], 3), round(recall_policy["threshold"], 4),
                     round(recall_policy["test"]["recall"], 3),
                     round(recall_policy["escapes_per_parts"], 1),
                     round(recall_policy["discards_per_parts"], 1),
                     round(summary["wall_seconds"], 1)])
    return Table(
        title="Class imbalance handling: areas, and the recall >= target policy on test",
        columns=["imbalance", "test PR-AUC", "test ROC-AUC", "val PR-AUC", "recall at 0.5",
                 "min-recall threshold", "test recall", "escaped /10k", "discarded /10k",
                 "train seconds"],
        rows=rows,
        caption="One seed per row: differences smaller than the seed-to-seed spread (not "
                "measured here) decide nothing. Per 10,000 parts at the data's defect rate.")


def _split_table(main: dict[str, Any]) -> Table:
    rows = [[name, c["images"], c["positives"], c["negatives"], c.get("groups", "-")]
            for name, c in main["split"]["counts"].items()]
    return Table(title="Grouped split (whole tiles per split)",
                 columns=["split", "images", "defective", "good", "tiles (groups)"], rows=rows,
                 caption=main["split"]["split_note"])


def _figures(ctx: StudyContext, runs: dict[str, dict[str, Any]], main_dir: Path
             ) -> list[Figure]:
    main = runs["pos_weight"]
    escapes = {SHORT_NAMES[name]: {"escaped defects": p["escapes_per_parts"],
                                    "discarded good parts": p["discards_per_parts"]}
               for name, p in main["policies"].items()}
    bars = save_bar(escapes, ctx.out_dir / "escapes-discards.png",
                    title="Per 10,000 parts on test (thresholds chosen on validation; "
                          "0.5 fixed)",
                    ylabel="parts per 10,000")
    overlay = _save_pr_overlay(runs, ctx.out_dir / "pr-by-imbalance.png")
    relative = main_dir.relative_to(ctx.out_dir)
    return [
        Figure("Precision-recall and ROC curves with each policy's operating point (test)",
               str(relative / "pr-roc.png"),
               "Validation dashed, test solid; markers are the thresholds chosen on "
               "validation, placed where they land on test."),
        Figure("Escaped defects and discarded good parts per 10,000 parts", bars.name),
        Figure("Test precision-recall curves by imbalance handling", overlay.name),
        Figure("Test confusion matrix at the recall >= target threshold",
               str(relative / "confusion-test.png")),
        Figure("Training curves (positive weight run)", str(relative / "curves.png")),
    ]


def _save_pr_overlay(runs: dict[str, dict[str, Any]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    from cnnlab._util import atomic_path

    figure = MplFigure(figsize=(5.5, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    for imbalance, summary in runs.items():
        curves = json.loads((Path(summary["run_dir"]) / THRESHOLDS_FILE).read_text())["test"]
        axes.step(curves["pr"]["recall"], curves["pr"]["precision"], where="post",
                  label=f"{imbalance} (AP {curves['average_precision']:.3f})")
    positive_rate = next(iter(runs.values()))["test"]["positive_rate"]
    axes.axhline(positive_rate, color="grey", linestyle=":", linewidth=0.8,
                 label="chance (positive share)")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
             title="test precision-recall")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path


def _numbers(runs: dict[str, dict[str, Any]], line: ThresholdReport) -> dict[str, Any]:
    numbers: dict[str, Any] = {}
    for imbalance, summary in runs.items():
        numbers[imbalance] = {
            "test_average_precision": summary["test"]["average_precision"],
            "test_roc_auc": summary["test"]["roc_auc"],
            "val_average_precision": summary["validation"]["average_precision"],
            "val_roc_auc": summary["validation"]["roc_auc"],
            "wall_seconds": summary["wall_seconds"],
            "defect_rate": summary["settings"]["defect_rate"],
            "policies": {name: {"threshold": p["threshold"],
                                "test_precision": p["test"]["precision"],
                                "test_recall": p["test"]["recall"],
                                "test_specificity": p["test"]["specificity"],
                                "escapes_per_10000": p["escapes_per_parts"],
                                "discards_per_10000": p["discards_per_parts"],
                                "met_on_test": p["met_on_test"], "note": p["note"]}
                         for name, p in summary["policies"].items()},
            "split": summary["split"]["counts"],
        }
    numbers["line_rate"] = {"defect_rate": LINE_RATE, "policies": {
        p.name: {"threshold": p.threshold, "escapes_per_10000": p.escapes_per_parts,
                 "discards_per_10000": p.discards_per_parts} for p in line.policies}}
    return numbers


def _findings(runs: dict[str, dict[str, Any]], line: ThresholdReport, ctx: StudyContext
              ) -> list[str]:
    main = runs["pos_weight"]
    policies = main["policies"]
    recall_policy, f1, fixed = policies["min_recall"], policies["max_f1"], policies["fixed"]
    rate = main["settings"]["defect_rate"]
    target = main["settings"]["min_recall"]
    settings = recipe(ctx)
    findings = []

    chosen = ("max_f1", "min_recall", "min_precision", "min_cost")
    fewest = min(chosen, key=lambda name: (policies[name]["escapes_per_parts"],
                                           policies[name]["discards_per_parts"]))
    outcomes = "; ".join(f"{POLICY_NAMES[name]} ({p['threshold']:.3f}) lets "
                         f"{p['escapes_per_parts']:.0f} defects through and discards "
                         f"{p['discards_per_parts']:.0f} good parts"
                         for name, p in policies.items())
    extra_discards = recall_policy["discards_per_parts"] - f1["discards_per_parts"]
    fewer_escapes = f1["escapes_per_parts"] - recall_policy["escapes_per_parts"]
    if fewest == "min_recall" and fewer_escapes > 0:
        verdict = (f"Of the thresholds chosen on validation, the recall target lets the fewest "
                   f"defects through, {fewer_escapes:.0f} per 10,000 fewer than max F1, for "
                   f"{extra_discards:.0f} more discarded good parts: when escapes are what "
                   "counts, tune the threshold for recall, not for F1 or accuracy.")
    elif fewer_escapes == 0:
        verdict = ("Here the recall and F1 thresholds coincide, so this run does not "
                   "separate them; the recall target is still the one that states the goal.")
    else:
        verdict = (f"Here {POLICY_NAMES[fewest]} let the fewest defects through on test, not "
                   "the recall target: the threshold chosen on validation did not transfer.")
    findings.append(
        f"Per 10,000 parts at the data's defect rate {rate:.3f}, on test: {outcomes}. {verdict} "
        f"The 0.5 threshold accuracy uses is chosen by nothing: where it lands depends on the "
        f"loss weighting (here recall {fixed['test']['recall']:.3f}).")

    passed_good = recall_policy["test"]["specificity"]
    findings.append(
        f"What the recall target costs with this model: only {passed_good:.1%} of good test "
        f"parts pass at its threshold, so {1 - passed_good:.1%} would be discarded or "
        f"re-inspected. The model (test ROC-AUC {main['test']['roc_auc']:.3f}; {ctx.profile} "
        f"profile: {settings['size']}-pixel images, {settings['epochs']} epochs) is the "
        "bottleneck; the discards at the recall target are the number to judge a better "
        "model by.")

    validation_positives = main["validation"]["positives"]
    validation_tiles = _positive_groups(main, "val")
    step = 1 / validation_positives
    why = (f"validation has {validation_positives} defective images from {validation_tiles} "
           f"tiles, so recall moves in steps of {step:.3f}")
    if step > 1 - target:
        why += (f" and {target:g} means catching every one of them: the threshold sits at the "
                "lowest-scoring validation defect, and defects of other tiles can score lower")
    tiles_needed = 3 / (1 - target)
    rule_of_three = (f"Zero misses among n independent defective tiles bound the miss rate "
                     f"below 3/n at 95% confidence (the rule of three), so backing a "
                     f"{1 - target:.0%} miss rate takes about {tiles_needed:.0f} defective "
                     "validation tiles")
    test = recall_policy["test"]
    if recall_policy["met_on_test"]:
        findings.append(
            f"The recall >= {target:g} threshold held on test: recall {test['recall']:.3f} "
            f"({test['fn']} of {test['fn'] + test['tp']} test defects missed). But {why}. "
            f"{rule_of_three}; with fewer, that it held is partly the luck of the split.")
    else:
        findings.append(
            f"The recall >= {target:g} threshold missed on test: recall {test['recall']:.3f}, "
            f"{target - test['recall']:.3f} short; {test['fn']} of {test['fn'] + test['tp']} "
            f"test defects scored below it, {recall_policy['escapes_per_parts']:.0f} escapes "
            f"per 10,000 instead of at most {10_000 * rate * (1 - target):.0f}. Why: {why}. "
            f"{rule_of_three}; with fewer, lower the threshold by a margin or accept the risk.")

    missed = {name: policies[name].get("test_missed_by_kind", {}) for name in
              ("max_f1", "min_recall", "fixed")}
    if any(missed.values()):
        findings.append("Which defects escape on test, by kind: " + "; ".join(
            f"{POLICY_NAMES[name]}: " + (", ".join(f"{kind} {count}" for kind, count in
                                                   kinds.items()) or "none")
            for name, kinds in missed.items())
            + f" (test defects by kind: {_kind_counts(main)}).")

    roc_auc, average_precision = main["test"]["roc_auc"], main["test"]["average_precision"]
    kinder = ("looks kinder, because it counts false alarms as a share of the many good parts"
              if roc_auc > average_precision else "does not look kinder here")
    findings.append(
        f"Which area to watch: test ROC-AUC {roc_auc:.3f} against PR-AUC (average precision) "
        f"{average_precision:.3f}, whose chance level is the defect share "
        f"{main['test']['positive_rate']:.3f}; ROC-AUC {kinder}. For few escapes neither area "
        "is the number to optimise: it is recall at the target, and to compare models, the "
        "false alarms each needs to reach it (the discards column).")

    line_recall = line.policy("min_recall")
    line_f1 = line.policy("max_f1")
    recall, false_alarms = line_recall.test["recall"], 1 - line_recall.test["specificity"]
    line_precision = LINE_RATE * recall / (LINE_RATE * recall + (1 - LINE_RATE) * false_alarms)
    findings.append(
        f"At a line defect rate of {LINE_RATE:.0%}, the same recall >= {target:g} threshold "
        f"lets {line_recall.escapes_per_parts:.1f} defects per 10,000 escape and discards "
        f"{line_recall.discards_per_parts:.0f} good parts (max F1: "
        f"{line_f1.escapes_per_parts:.1f} and {line_f1.discards_per_parts:.0f}); only "
        f"{line_precision:.1%} of the parts it flags are defective. Quote the cost as good parts "
        "discarded per 10,000 at the line's rate: the test split's precision, at its "
        f"{rate:.0%} defect share, overstates it.")

    if len(runs) > 1:
        areas = [summary["test"]["average_precision"] for summary in runs.values()]
        recalls = [summary["policies"]["fixed"]["test"]["recall"] for summary in runs.values()]
        discards = [summary["policies"]["min_recall"]["discards_per_parts"]
                    for summary in runs.values()]
        listing = "; ".join(
            f"{name}: PR-AUC {summary['test']['average_precision']:.3f}, recall at 0.5 "
            f"{summary['policies']['fixed']['test']['recall']:.3f}, discards at the recall "
            f"target {summary['policies']['min_recall']['discards_per_parts']:.0f}"
            for name, summary in runs.items())
        area_spread, recall_spread = max(areas) - min(areas), max(recalls) - min(recalls)
        if recall_spread > 2 * area_spread:
            reading = (f"The handling moves the scores far more (recall at 0.5 spans "
                       f"{recall_spread:.3f}) than their ranking (PR-AUC spans "
                       f"{area_spread:.3f}), and a threshold chosen by policy undoes a shift "
                       f"of the scores: at the recall target the discards span only "
                       f"{max(discards) - min(discards):.0f} per 10,000.")
        else:
            reading = (f"PR-AUC spans {area_spread:.3f} and recall at 0.5 spans "
                       f"{recall_spread:.3f}: the handling changed the ranking too, not only "
                       "the scores.")
        findings.append(f"Imbalance handling, one seed each: {listing}. {reading} Whether the "
                        "differences in PR-AUC exceed the seed-to-seed spread is not measured "
                        "here, so no handling is declared better.")
    if ctx.profile == "smoke":
        findings.append("Smoke profile: 32-pixel images, one epoch, a tiny network; the numbers "
                        "only show that the pipeline runs.")
    return findings


def _kind_counts(summary: dict[str, Any]) -> str:
    counts = summary["split"]["counts"]["test"].get("positive_kinds", {})
    return ", ".join(f"{kind} {count}" for kind, count in counts.items()) or "not recorded"


def _positive_groups(summary: dict[str, Any], split: str) -> int | str:
    return summary["split"]["counts"][split].get("positive_groups", "an unknown number of")


STUDY = register(Study(
    name="defects",
    title="Defect detection: judged by the defects it lets through",
    question="When as few defective parts as possible may reach customers, which metric and "
             "threshold policy should a binary CNN be tuned for, and what does it cost in "
             "false alarms?",
    budget_seconds={"smoke": 60, "cpu": 240, "full": 1800},
    run=run,
))
