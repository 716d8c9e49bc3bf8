"""Study: vanishing and exploding gradients in deep networks, and what fixes them.

Seven networks of the same depth (21 convolutions by default) train on the
same CIFAR-10 subset with the same optimiser for the same number of steps,
each watched by the gradient monitor:

1. sigmoid with PyTorch's default initialisation: the textbook vanishing case;
2. ReLU with a too-large initialisation (three times He's scale): exploding;
3. ReLU with He (Kaiming) initialisation;
4. the same with batch normalisation;
5. the same with residual connections: a ResNet of the same depth;
6. that ResNet without normalisation, where He's scale is too large for the
   stack (each block adds its variance to the skip path): exploding;
7. the same with the gradient norm clipped at 1.

For each run the study reports the monitor's verdict, the first-to-last
layer gradient-norm ratio (median over the sampled steps), where a non-finite
value stopped it, and the validation accuracy reached, and draws the
gradient-norm heat maps side by side on one colour scale.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from cnnlab._util import seed_everything
from cnnlab.diagnose import GradientMonitor, diagnose_run, fit_verdict, load_monitor
from cnnlab.diagnose.figures import save_gradient_heatmaps
from cnnlab.lab.study import Figure, Study, StudyContext, StudyResult, Table, register
from cnnlab.models import build_model
from cnnlab.report.figures import save_curves
from cnnlab.runs import RunSpec
from cnnlab.runs.image import load_datasets
from cnnlab.train import NonFiniteError, TrainConfig, Trainer

log = logging.getLogger(__name__)

# Each configuration: a label, the plain model's options, training overrides, and the
# failure (or its absence) it is meant to show. Depth is set by the profile.
CONFIGURATIONS: list[dict[str, Any]] = [
    {"key": "sigmoid", "label": "sigmoid, default init", "expect": "vanishing",
     "model": {"activation": "sigmoid", "init": "default", "norm": "none"}, "train": {}},
    {"key": "large", "label": "ReLU, large init", "expect": "exploding",
     "model": {"activation": "relu", "init": "large", "norm": "none"}, "train": {}},
    {"key": "he", "label": "ReLU, He init", "expect": "trains",
     "model": {"activation": "relu", "init": "kaiming", "norm": "none"}, "train": {}},
    {"key": "he_bn", "label": "ReLU, He init, batch norm", "expect": "trains",
     "model": {"activation": "relu", "init": "kaiming", "norm": "batch"}, "train": {}},
    {"key": "residual", "label": "ResNet (He init, batch norm)", "expect": "trains",
     "model": {"activation": "relu", "init": "kaiming", "norm": "batch", "residual": True},
     "train": {}},
    # Without normalisation every residual block adds its own variance to the skip path, so
    # He's scale is too large for the stack as a whole: the output grows about 2^blocks-fold.
    {"key": "residual_no_norm", "label": "ResNet without norm", "expect": "exploding",
     "model": {"activation": "relu", "init": "kaiming", "norm": "none", "residual": True},
     "train": {}},
    {"key": "residual_no_norm_clipped", "label": "ResNet without norm, clipped",
     "expect": "trains",
     "model": {"activation": "relu", "init": "kaiming", "norm": "none", "residual": True},
     "train": {"clip_norm": 1.0}},
]


def _budget(ctx: StudyContext) -> dict[str, Any]:
    """Data and training sizes per profile (measured: see docs/gradients.md)."""
    return {
        "depth": ctx.pick(smoke=9, cpu=21, full=31),
        "images": ctx.pick(smoke=320, cpu=12000, full=50000),
        "validation": ctx.pick(smoke=64, cpu=1000, full=5000),
        "resize": ctx.pick(smoke=16, cpu=16, full=None),
        "epochs": ctx.pick(smoke=1, cpu=6, full=15),
        "batch_size": ctx.pick(smoke=64, cpu=128, full=128),
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "fit_subset": ctx.pick(smoke=64, cpu=500, full=2000),
    }


class _Data:
    """The study's train/validation split, loaded on first use (cached runs need none)."""

    def __init__(self, spec: RunSpec, seed: int) -> None:
        self.spec, self.seed, self.loaded = spec, seed, None

    def get(self):
        if self.loaded is None:
            self.loaded = load_datasets(self.spec, self.seed)
        return self.loaded


def _spec(budget: dict[str, Any], options: dict[str, Any] | None = None) -> RunSpec:
    return RunSpec(model="plain", model_options=options or {}, data="cifar10",
                   limit=budget["images"], validation=budget["validation"],
                   resize=budget["resize"], evaluate_test=False)


def _run_one(ctx: StudyContext, configuration: dict[str, Any], budget: dict[str, Any],
             data: _Data) -> dict[str, Any]:
    """Train one configuration (cached) and return its numbers."""
    options = {"depth": budget["depth"], **configuration["model"]}
    spec = _spec(budget, options)
    settings = {"epochs": budget["epochs"], "batch_size": budget["batch_size"],
                "optimizer": budget["optimizer"], "lr": budget["lr"],
                "momentum": budget["momentum"], "fit_subset": budget["fit_subset"],
                "seed": ctx.seed, "device": ctx.device}
    config = TrainConfig(**{**settings, **configuration["train"]})

    def train(run_dir: Path) -> dict[str, Any]:
        # The Trainer directly (not train_run), so that the six runs share one loaded split;
        # config.json carries the spec, so cnnlab diagnose and load_run_model read the run.
        out = run_dir / "run"
        splits = data.get()
        seed_everything(config.seed)  # the same initial weights whatever ran before
        model = build_model("plain", num_classes=len(splits.train.classes),
                            in_channels=int(splits.train.inputs.shape[1]), **options)
        monitor = GradientMonitor(out, figures=False)  # the study draws its own figures
        trainer = Trainer(model, config, train=splits.train, val=splits.val, run_dir=out,
                          callbacks=[monitor], extra_config={"run": spec.to_dict()})
        started = time.perf_counter()
        stopped = None
        try:
            history = trainer.fit().history
        except NonFiniteError as error:
            stopped = {"step": error.step, "where": error.where, "message": str(error)}
            history = trainer.history
        seconds = time.perf_counter() - started
        last = history[-1] if history else {}
        recorded = monitor.data()
        return {
            "run_dir": str(out.relative_to(ctx.out_dir)),
            "val_accuracy": None if stopped else last.get("val_accuracy"),
            "fit_accuracy": None if stopped else last.get("fit_accuracy"),
            "val_accuracy_by_epoch": [row.get("val_accuracy") for row in history],
            "history": history,
            "fit_verdict": fit_verdict(history, chance_accuracy=0.1).verdict if history
            else None,
            "stopped": stopped,
            "steps": int(recorded.loss_steps[-1]) if len(recorded.loss_steps) else 0,
            "samples": len(recorded),
            "monitor_overhead_estimate": monitor.estimated_overhead(),
            "seconds": seconds,
        }

    key_config = {"spec": spec.to_dict(), "train": config.to_dict()}
    result = dict(ctx.run_cached(configuration["key"], key_config, train))

    # Verdicts are read from the run's files each time, so better rules need no retraining.
    verdicts = diagnose_run(ctx.out_dir / result["run_dir"])
    evidence = verdicts[0].evidence  # every verdict carries the same gradient numbers
    result.update({
        "verdicts": [v.kind for v in verdicts],
        "summaries": [v.summary for v in verdicts],
        "first_to_last_grad_ratio": evidence.get("first_to_last_grad_ratio"),
        "loss_relative_drop": evidence.get("loss_relative_drop"),
        "activation_std_ratio": evidence.get("activation_std_ratio"),
    })
    return result


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def _fmt_accuracy(result: dict[str, Any]) -> str:
    if result["stopped"]:
        return f"stopped at step {result['stopped']['step']}"
    value = result["val_accuracy"]
    return "n/a" if value is None else f"{value:.1%}"


def _loss_change(result: dict[str, Any]) -> str:
    drop = result.get("loss_relative_drop")
    if drop is None:
        return "its loss was not traced"
    return f"its loss {'fell' if drop >= 0 else 'rose'} {abs(drop):.1%} over the run"


def _orders(ratio: float | None, reference: float | None) -> float | None:
    if not ratio or not reference or ratio <= 0 or reference <= 0:
        return None
    return math.log10(ratio / reference)


def run(ctx: StudyContext) -> StudyResult:
    started = time.perf_counter()
    budget = _budget(ctx)
    data = _Data(_spec(budget), ctx.seed)
    results = {c["key"]: _run_one(ctx, c, budget, data) for c in CONFIGURATIONS}
    labels = {c["key"]: c["label"] for c in CONFIGURATIONS}
    chance = 0.1

    # The table: one row per configuration.
    rows = []
    for configuration in CONFIGURATIONS:
        r = results[configuration["key"]]
        rows.append([
            configuration["label"], configuration["expect"], ", ".join(r["verdicts"]),
            _fmt_ratio(r["first_to_last_grad_ratio"]), _fmt_accuracy(r),
            r["stopped"]["where"] if r["stopped"] else "",
            f"{r['samples']} of {r['steps']}",
        ])
    table = Table(
        title=f"Depth-{budget['depth']} networks on CIFAR-10, same data and steps",
        columns=["configuration", "meant to show", "monitor's verdict",
                 "first/last layer gradient norm", "validation accuracy", "non-finite in",
                 "sampled steps"],
        rows=rows,
        caption=(f"{budget['images'] - budget['validation']} training and "
                 f"{budget['validation']} validation images"
                 + (f" resized to {budget['resize']}x{budget['resize']}" if budget["resize"]
                    else "")
                 + f", {budget['epochs']} epoch(s), batch {budget['batch_size']}, SGD "
                 f"(Nesterov momentum {budget['momentum']}) at lr {budget['lr']}, seed "
                 f"{ctx.seed}. The gradient-norm ratio is the median over the monitor's "
                 "sampled steps of the first conv layer's gradient norm over the last (linear) "
                 "layer's. Chance accuracy is 10%."))

    # The figures: heat maps side by side on one colour scale; validation curves.
    panels = {}
    for configuration in CONFIGURATIONS:
        r = results[configuration["key"]]
        panels[configuration["label"]] = load_monitor(ctx.out_dir / r["run_dir"])
    heatmaps = save_gradient_heatmaps(panels, ctx.out_dir / "gradient_heatmaps.png",
                                      columns=4)
    curves = save_curves({labels[k]: r["history"] for k, r in results.items() if r["history"]},
                         ctx.out_dir / "validation_curves.png", title="training curves",
                         train="fit")
    figures = [
        Figure("Gradient norm by layer (rows: input at the top) and step, log colour scale",
               str(heatmaps.relative_to(ctx.out_dir)),
               "One colour scale for all runs. A dashed line marks where a non-finite "
               "value stopped a run; grey cells had no gradient (zero or not finite)."),
        Figure("Accuracy and loss per epoch", str(curves.relative_to(ctx.out_dir)),
               "Dashed: the un-augmented training subset; solid: validation."),
    ]

    findings = _findings(results, labels, chance)
    numbers = {key: {k: v for k, v in r.items() if k not in ("history", "summaries")}
               for key, r in results.items()}
    return StudyResult(
        name="gradients", title=STUDY.title, question=STUDY.question,
        setup={**budget, "data": "cifar10", "seed": ctx.seed, "device": ctx.device,
               "monitor": "GradientMonitor, automatic sampling (target 10% overhead)"},
        tables=[table], figures=figures, findings=findings, numbers=numbers,
        wall_seconds=time.perf_counter() - started)


def _findings(results: dict[str, dict[str, Any]], labels: dict[str, str], chance: float
              ) -> list[str]:
    findings = []
    sigmoid, he = results["sigmoid"], results["he"]

    def accuracy(r):
        return r["val_accuracy"] if r["val_accuracy"] is not None else chance

    def verdicts(r):
        return ", ".join(r["verdicts"])

    # Vanishing.
    ratio = sigmoid["first_to_last_grad_ratio"]
    text = (f"The sigmoid network's first layer receives {_fmt_ratio(ratio)} of the last "
            f"layer's gradient norm; the monitor says {verdicts(sigmoid)} and the network "
            f"reaches {_fmt_accuracy(sigmoid)} validation accuracy (chance {chance:.0%}).")
    if "vanishing" not in sigmoid["verdicts"]:
        text += " The monitor did NOT call this vanishing, against the expectation."
    findings.append(text)

    # Remedies for vanishing, each against the sigmoid network.
    for key in ("he", "he_bn", "residual"):
        r = results[key]
        lift = _orders(r["first_to_last_grad_ratio"], ratio)
        gain = accuracy(r) - accuracy(sigmoid)
        judged = "a clear gain" if gain >= 0.05 else "NOT a clear gain in this budget"
        findings.append(
            f"{labels[key]}: gradient-norm ratio {_fmt_ratio(r['first_to_last_grad_ratio'])}"
            + (f" ({lift:+.1f} orders of magnitude against sigmoid)" if lift is not None
               else "")
            + f"; validation accuracy {_fmt_accuracy(r)}, {gain * 100:+.1f} points over "
            f"sigmoid ({judged}); verdict {verdicts(r)}.")

    # Exploding: the large initialisation and the un-normalised ResNet; then clipping.
    for key in ("large", "residual_no_norm"):
        r = results[key]
        if r["stopped"]:
            findings.append(
                f"{labels[key]}: a NaN/Inf first appeared at step {r['stopped']['step']} in "
                f"{r['stopped']['where']}; the sentinel stopped the run there (verdict "
                f"{verdicts(r)}).")
        else:
            findings.append(
                f"{labels[key]} did NOT produce a non-finite value in this budget; verdict "
                f"{verdicts(r)}, accuracy {_fmt_accuracy(r)}.")
    clipped, unclipped = results["residual_no_norm_clipped"], results["residual_no_norm"]
    if clipped["stopped"]:
        findings.append(
            f"Clipping the gradient norm at 1 did NOT rescue the ResNet without normalisation: "
            f"it stopped at step {clipped['stopped']['step']} as well.")
    else:
        trained = accuracy(clipped) >= chance + 0.05
        findings.append(
            f"With the gradient norm clipped at 1 the ResNet without normalisation ran all "
            f"{clipped['steps']} steps"
            + (f" (without clipping it stopped at step {unclipped['stopped']['step']})"
               if unclipped["stopped"] else "")
            + f" and reached {_fmt_accuracy(clipped)} validation accuracy"
            + (": clipping turned the exploding run into one that trains" if trained else
               ", barely above chance: it no longer diverges but does NOT train well in this "
               "budget")
            + f"; with batch norm instead it reached {_fmt_accuracy(results['residual'])}. "
            f"Verdict with clipping: {verdicts(clipped)}.")

    if he["val_accuracy"] is not None and accuracy(he) < chance + 0.05:
        normed = results["he_bn"]
        fixed = (f" Batch norm fixed it ({_fmt_accuracy(normed)})."
                 if accuracy(normed) >= chance + 0.05 else "")
        spread = _fmt_ratio(he["activation_std_ratio"])
        if "vanishing" in he["verdicts"]:
            findings.append(
                f"The He network without normalisation did not learn in this budget "
                f"({_fmt_accuracy(he)}). Its first-to-last gradient ratio "
                f"({_fmt_ratio(he['first_to_last_grad_ratio'])}) is milder than sigmoid's but "
                f"{_loss_change(he)}, and late in the run its smallest layer activation spread "
                f"was {spread} of the first layer's: the signal fades on its way through the "
                f"layers, and the monitor called it {verdicts(he)}." + fixed)
        else:
            findings.append(
                f"The He network without normalisation did not learn in this budget "
                f"({_fmt_accuracy(he)}), and the monitor found no gradient pathology in it "
                f"(verdicts: {verdicts(he)}; gradient-norm ratio "
                f"{_fmt_ratio(he['first_to_last_grad_ratio'])}, {_loss_change(he)}). Late in "
                f"the run its smallest layer activation spread was {spread} of the first "
                "layer's: the signal thins out, but not by the two orders of magnitude the "
                "monitor requires to call it vanishing." + fixed)

    # The monitor's cost, as it measured it.
    estimates = [r["monitor_overhead_estimate"] for r in results.values()
                 if r["monitor_overhead_estimate"] is not None]
    if estimates:
        findings.append(
            f"The monitor sampled between {min(r['samples'] for r in results.values())} and "
            f"{max(r['samples'] for r in results.values())} steps per run and estimated its "
            f"own cost at {min(estimates):.1%} to {max(estimates):.1%} of training time.")
    return findings


STUDY = register(Study(
    name="gradients",
    title="Vanishing and exploding gradients: diagnosis and remedies",
    question=("Why do deep plain networks fail to train, does the gradient monitor tell "
              "vanishing from exploding, and which remedy fixes which?"),
    budget_seconds={"smoke": 90, "cpu": 360, "full": 3600},
    run=run,
))
