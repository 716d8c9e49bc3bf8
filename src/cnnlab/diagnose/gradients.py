"""Verdicts on gradient health, with evidence, from what a :class:`GradientMonitor` recorded.

Four problems are looked for, each from measured numbers:

- **vanishing**: the first layer's gradient norm is orders of magnitude
  below the last layer's (the median over sampled steps of their ratio is
  below ``vanishing_ratio``, or below ``weak_vanishing_ratio`` while the
  loss stays flat), or the forward signal fades: late in the run some
  layer's activations vary ``faded_activation_ratio`` times less than the
  first layer's while the loss stays flat (weight gradients can look
  balanced then, since small activations meet large back-propagated errors);
- **exploding**: a NaN/Inf stopped the run, or the gradient norm grew by
  ``exploding_growth`` from the first to the last quarter of the samples
  while the loss did not fall or spiked, or the first layer's gradient is
  ``exploding_ratio`` times the last one's (gradients grow toward the input);
- **dead-units**: a ReLU layer's channels output zero for whole batches in
  at least ``dead_fraction`` of cases late in the run;
- **saturation**: a sigmoid or tanh layer sits near its bounds for at least
  ``saturated_fraction`` of its outputs late in the run.

When none applies, a single ``none`` verdict carries the same numbers.
Remedies come in order of expected effect and skip what the run already uses.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.diagnose.monitor import MonitorData, load_monitor

VANISHING, EXPLODING, DEAD_UNITS, SATURATION, NONE = (
    "vanishing", "exploding", "dead-units", "saturation", "none")
KINDS = (VANISHING, EXPLODING, DEAD_UNITS, SATURATION, NONE)


@dataclass(frozen=True)
class GradientThresholds:
    """When a number counts as a problem. Ratios are plain factors, fractions in [0, 1]."""

    vanishing_ratio: float = 1e-3  # first/last layer gradient norm: three orders of magnitude
    weak_vanishing_ratio: float = 1e-2  # two orders, when the loss is also flat
    exploding_ratio: float = 1e3  # first/last: gradients grow toward the input
    exploding_growth: float = 100.0  # total gradient norm, last quarter / first quarter
    exploding_update_ratio: float = 1.0  # one step larger than the weights themselves
    flat_loss: float = 0.02  # relative drop of the loss from the start to the end of the run
    faded_activation_ratio: float = 1e-2  # smallest layer's activation std / the first layer's
    spike_factor: float = 3.0  # a step's loss above this multiple of the recent median
    dead_fraction: float = 0.5
    saturated_fraction: float = 0.5


@dataclass
class Verdict:
    """One finding: what (``kind``), where (``layers``), the numbers, and what to try."""

    kind: str
    summary: str
    layers: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    remedies: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.kind}: {self.summary}"


def _median(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def _quarter(count: int) -> int:
    return max(1, count // 4)


def loss_evidence(data: MonitorData, history: list[dict] | None,
                  thresholds: GradientThresholds) -> dict[str, Any]:
    """Loss flatness, spikes and trend, from the per-step trace and the epoch history."""
    values, steps = data.loss_values, data.loss_steps
    finite = np.isfinite(values)
    evidence: dict[str, Any] = {"loss_steps_recorded": len(values)}
    if finite.sum() >= 4:
        trace = values[finite]
        window = max(1, len(trace) // 10)
        start, end = float(trace[:window].mean()), float(trace[-window:].mean())
        evidence["loss_start"] = start
        evidence["loss_end"] = end
        evidence["loss_relative_drop"] = (start - end) / max(abs(start), 1e-12)
        # A spike: one step's loss well above the median of the 20 before it.
        spikes = []
        for index in range(10, len(trace)):
            recent = np.median(trace[max(0, index - 20):index])
            if trace[index] > thresholds.spike_factor * max(recent, 1e-12):
                spikes.append(int(steps[finite][index]))
        evidence["loss_spikes"] = len(spikes)
        evidence["first_loss_spike_step"] = spikes[0] if spikes else None
    if history:
        losses = [row.get("train_loss") for row in history if row.get("train_loss") is not None]
        if len(losses) >= 2:
            evidence["epoch_train_loss_first"] = losses[0]
            evidence["epoch_train_loss_last"] = losses[-1]
    return evidence


def gradient_evidence(data: MonitorData) -> dict[str, Any]:
    """Per-layer gradient and update numbers: ratios, growth, early versus late layers."""
    layers = data.weight_layers or list(range(len(data.parameters)))
    evidence: dict[str, Any] = {"samples": len(data), "weight_layers": len(layers)}
    if not len(data) or not layers:
        return evidence
    names = [data.parameters[i] for i in layers]
    grads = data.grad_norm[:, layers]  # [S, L], input to output
    first, last = grads[:, 0], grads[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(last > 0, first / last, np.nan)
    median_ratio = _median(ratio)
    evidence["first_layer"] = names[0]
    evidence["last_layer"] = names[-1]
    evidence["first_to_last_grad_ratio"] = median_ratio
    evidence["first_to_last_grad_ratio_early"] = _median(ratio[:_quarter(len(ratio))])
    if median_ratio and median_ratio > 0:
        evidence["first_to_last_orders_of_magnitude"] = math.log10(median_ratio)
    per_layer = [_median(grads[:, j]) for j in range(len(layers))]
    evidence["median_grad_norm_by_layer"] = dict(zip(names, per_layer))

    total = data.total_grad_norm
    quarter = _quarter(len(total))
    early_total, late_total = _median(total[:quarter]), _median(total[-quarter:])
    evidence["total_grad_norm_start"] = early_total
    evidence["total_grad_norm_end"] = late_total
    evidence["total_grad_norm_max"] = float(np.nanmax(total)) if np.isfinite(total).any() \
        else None
    if early_total and late_total is not None:
        evidence["grad_norm_growth"] = late_total / early_total

    updates = data.update_ratio[:, layers]
    layer_quarter = max(1, len(layers) // 4)
    early_samples = updates[:_quarter(len(updates))]
    evidence["early_layers_update_ratio"] = _median(early_samples[:, :layer_quarter])
    evidence["late_layers_update_ratio"] = _median(early_samples[:, -layer_quarter:])
    evidence["median_update_ratio_by_layer"] = dict(
        zip(names, [_median(updates[:, j]) for j in range(len(layers))]))

    finite_updates = np.where(np.isfinite(updates), updates, -np.inf)
    if np.isfinite(finite_updates).any():
        sample, layer = np.unravel_index(np.argmax(finite_updates), finite_updates.shape)
        evidence["largest_update_ratio"] = float(updates[sample, layer])
        evidence["largest_update_layer"] = names[layer]
        evidence["largest_update_step"] = int(data.steps[sample])

    clip = data.training.get("clip_norm")
    if clip:
        evidence["clip_norm"] = clip
        evidence["fraction_of_samples_clipped"] = float(np.mean(total > clip))
    return evidence


def _late(values: np.ndarray) -> np.ndarray:
    """The last third of the samples (at least one)."""
    return values[-max(1, len(values) // 3):]


def activation_evidence(data: MonitorData) -> dict[str, Any]:
    """Dead and saturated fractions per activation layer over the last third of the run."""
    evidence: dict[str, Any] = {}
    if not len(data) or not data.activations:
        return evidence
    dead = {name: _median(_late(data.activation_dead[:, i]))
            for i, name in enumerate(data.activations)
            if np.isfinite(data.activation_dead[:, i]).any()}
    saturated = {name: _median(_late(data.activation_saturated[:, i]))
                 for i, name in enumerate(data.activations)
                 if np.isfinite(data.activation_saturated[:, i]).any()}
    stds = [_median(_late(data.activation_std[:, i])) for i in range(len(data.activations))]
    if stds and stds[0]:
        smallest = min((i for i, v in enumerate(stds) if v is not None), key=lambda i: stds[i])
        evidence["activation_std_by_layer"] = dict(zip(data.activations, stds))
        evidence["activation_std_first"] = stds[0]
        evidence["activation_std_smallest"] = stds[smallest]
        evidence["activation_std_smallest_layer"] = data.activations[smallest]
        evidence["activation_std_ratio"] = stds[smallest] / stds[0]
    if dead:
        evidence["dead_fraction_by_layer"] = dead
        evidence["dead_fraction_mean"] = float(np.mean(list(dead.values())))
    if saturated:
        evidence["saturated_fraction_by_layer"] = saturated
        evidence["saturated_fraction_mean"] = float(np.mean(list(saturated.values())))
    return evidence


def diagnose(data: MonitorData, history: list[dict] | None = None,
             thresholds: GradientThresholds = GradientThresholds(),
             run_config: dict[str, Any] | None = None) -> list[Verdict]:
    """Verdicts for one run; a single ``none`` verdict when nothing is wrong.

    ``history`` is the trainer's per-epoch history (for the epoch losses);
    ``run_config`` is the run's ``config.json`` (to skip remedies already in
    use); both are optional.
    """
    t = thresholds
    activations = activation_evidence(data)
    # Every verdict carries all the numbers, so any one of them can be read alone.
    evidence = {**gradient_evidence(data), **loss_evidence(data, history, t), **activations}
    options = _options(data, run_config)
    verdicts: list[Verdict] = []

    ratio = evidence.get("first_to_last_grad_ratio")
    drop = evidence.get("loss_relative_drop")
    flat = drop is not None and drop < t.flat_loss
    first, last = evidence.get("first_layer"), evidence.get("last_layer")

    # Vanishing: the first layer hears orders of magnitude less than the last, or the forward
    # signal fades on its way to the output while nothing is learned.
    faded = activations.get("activation_std_ratio")
    gradient_vanishing = ratio is not None and (
        ratio < t.vanishing_ratio or (ratio < t.weak_vanishing_ratio and flat))
    if not gradient_vanishing and faded is not None and faded < t.faded_activation_ratio \
            and flat:
        first_std = activations["activation_std_first"]
        faint = [name for name, value in activations["activation_std_by_layer"].items()
                 if value is not None and value < first_std * t.faded_activation_ratio]
        summary = (f"the forward signal fades: late in the run the activations of "
                   f"{activations['activation_std_smallest_layer']} vary {faded:.2g} times as "
                   f"much as the first layer's (standard deviation "
                   f"{activations['activation_std_smallest']:.3g} against {first_std:.3g}), and "
                   f"{_loss_change(drop)}; the weight gradients look balanced (first-to-last "
                   f"ratio {_fmt(ratio)}) only because tiny activations meet large errors")
        verdicts.append(Verdict(VANISHING, summary, faint, evidence,
                                _vanishing_remedies(options)))
    if gradient_vanishing:
        small = _vanishing_layers(evidence)
        loss_text = _loss_change(drop)
        summary = (f"the gradient norm of the first layer ({first}) is {ratio:.2g} times that "
                   f"of the last ({last}), {abs(math.log10(ratio)):.1f} orders of magnitude "
                   f"smaller (median over {evidence['samples']} sampled steps); early layers' "
                   f"update ratio {_fmt(evidence.get('early_layers_update_ratio'))} vs late "
                   f"{_fmt(evidence.get('late_layers_update_ratio'))}; {loss_text}")
        verdicts.append(Verdict(VANISHING, summary, small, evidence,
                                _vanishing_remedies(options)))

    # Exploding: non-finite values, growth with a loss that does not fall, or growth to input.
    reasons = []
    if data.nonfinite:
        reasons.append(f"the run stopped: {data.nonfinite['message']}")
    growth = evidence.get("grad_norm_growth")
    spikes = evidence.get("loss_spikes", 0)
    if growth is not None and growth > t.exploding_growth and (spikes or (drop is not None
                                                                          and drop <= 0)):
        reasons.append(f"the total gradient norm grew {growth:.3g}-fold from the first to the "
                       f"last quarter of the run while the loss "
                       f"{'spiked ' + str(spikes) + ' times' if spikes else 'did not fall'}")
    largest_update = evidence.get("largest_update_ratio")
    if largest_update is not None and largest_update > t.exploding_update_ratio:
        reasons.append(f"one optimiser step changed {evidence['largest_update_layer']} by "
                       f"{largest_update:.3g} times its own norm (step "
                       f"{evidence['largest_update_step']})")
    if ratio is not None and ratio > t.exploding_ratio:
        reasons.append(f"the first layer's gradient norm is {ratio:.3g} times the last "
                       f"layer's: gradients grow {math.log10(ratio):.1f} orders of magnitude "
                       "on their way to the input")
    if reasons:
        if evidence.get("clip_norm"):
            reasons.append(f"clipping at {evidence['clip_norm']} acted on "
                           f"{evidence['fraction_of_samples_clipped']:.0%} of the sampled steps"
                           + (f" and {_loss_change(drop)}" if drop is not None else ""))
        layers = [data.nonfinite["where"]] if data.nonfinite else _exploding_layers(evidence)
        evidence["nonfinite"] = data.nonfinite
        verdicts.append(Verdict(EXPLODING, "; ".join(reasons), layers, evidence,
                                _exploding_remedies(options, data.training)))

    dead = {name: value for name, value in activations.get("dead_fraction_by_layer",
                                                           {}).items()
            if value is not None and value >= t.dead_fraction}
    if dead:
        worst = max(dead, key=dead.get)
        summary = (f"{len(dead)} ReLU layer(s) have at least {t.dead_fraction:.0%} dead "
                   f"channels (zero for the whole batch) late in the run; worst {worst} with "
                   f"{dead[worst]:.0%}")
        verdicts.append(Verdict(DEAD_UNITS, summary, list(dead), evidence,
                                _dead_remedies(options, data.training)))

    saturated = {name: value for name, value in activations.get(
        "saturated_fraction_by_layer", {}).items()
        if value is not None and value >= t.saturated_fraction}
    if saturated:
        worst = max(saturated, key=saturated.get)
        summary = (f"{len(saturated)} sigmoid/tanh layer(s) have at least "
                   f"{t.saturated_fraction:.0%} of their outputs at the bounds late in the run, "
                   f"where the derivative is near zero; worst {worst} with "
                   f"{saturated[worst]:.0%}")
        verdicts.append(Verdict(SATURATION, summary, list(saturated),
                                evidence, _saturation_remedies(options)))

    if not verdicts:
        summary = ("no vanishing, exploding, dead or saturated units found: first-to-last "
                   f"gradient-norm ratio {_fmt(ratio)}, gradient norm growth "
                   f"{_fmt(growth)}, loss drop {_fmt_percent(drop)}, "
                   f"{spikes} loss spikes")
        remedies = []
        if flat:
            summary += ("; yet the loss did not fall, for a reason the gradient checks do not "
                        "see")
            remedies = _flat_loss_remedies(options, data.training)
        verdicts.append(Verdict(NONE, summary, [], evidence, remedies))
    return verdicts


def diagnose_run(run_dir: str | Path,
                 thresholds: GradientThresholds = GradientThresholds()) -> list[Verdict]:
    """Read a run directory's monitor files (and metrics) and return its verdicts.

    Example::

        for verdict in diagnose_run("runs/plain-cifar10"):
            print(verdict.kind, verdict.layers, verdict.remedies[:1])
    """
    run_dir = Path(run_dir)
    data = load_monitor(run_dir)
    history = None
    if (run_dir / "history.json").exists():
        history = json.loads((run_dir / "history.json").read_text())
    config = None
    if (run_dir / "config.json").exists():
        config = json.loads((run_dir / "config.json").read_text())
    return diagnose(data, history, thresholds, config)


# ---- which layers, which remedies --------------------------------------------------------

def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _loss_change(drop: float | None) -> str:
    if drop is None:
        return "the loss was not traced long enough to judge"
    verb = "fell" if drop >= 0 else "rose"
    return f"the loss {verb} {abs(drop):.1%} over the run"


def _fmt_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _vanishing_layers(evidence: dict[str, Any]) -> list[str]:
    """Layers whose median gradient norm is 100x below the last layer's."""
    norms = evidence.get("median_grad_norm_by_layer", {})
    last = norms.get(evidence.get("last_layer"))
    if not last:
        return list(norms)[:1]
    return [name for name, value in norms.items() if value is not None and value < last / 100]


def _exploding_layers(evidence: dict[str, Any]) -> list[str]:
    """Layers whose median gradient norm is 100x above the last layer's, else the first one."""
    norms = evidence.get("median_grad_norm_by_layer", {})
    last = norms.get(evidence.get("last_layer"))
    big = [name for name, value in norms.items()
           if value is not None and last and value > 100 * last]
    return big or list(norms)[:1]


def _options(data: MonitorData, run_config: dict[str, Any] | None) -> dict[str, Any]:
    options = {key: value for key, value in (data.training.get("structure") or {}).items()
               if value is not None}
    options.update(data.training.get("model_options") or {})
    if run_config:
        options.update(run_config.get("run", {}).get("model_options", {}))
        train = run_config.get("train", {})
        options.setdefault("_optimizer", train.get("optimizer"))
    return options


def _vanishing_remedies(options: dict[str, Any]) -> list[str]:
    remedies = []
    if not options.get("residual"):
        remedies.append("add residual connections (--residual): the identity path carries "
                        "the gradient past every block unchanged")
    if options.get("norm") in (None, "none"):
        remedies.append("add batch normalisation (--norm batch): it rescales every layer's "
                        "activations, and so its gradients, to unit scale")
    activation = options.get("activation", "relu")
    if activation in ("sigmoid", "tanh"):
        remedies.append(f"replace {activation} by ReLU with He initialisation (--activation "
                        "relu --init kaiming): its derivative is 1 where it is active, "
                        f"{activation}'s at most {0.25 if activation == 'sigmoid' else 1}")
    elif options.get("init", "default") in ("default", "normal"):
        remedies.append("use He initialisation (--init kaiming), which keeps the gradient's "
                        "scale from layer to layer for ReLU")
    remedies.append("use fewer layers (--depth)")
    if options.get("_optimizer") == "sgd":
        remedies.append("an adaptive optimiser (--optimizer adam) rescales small gradients per "
                        "parameter (it helps only while they stay above its epsilon)")
    return remedies


def _exploding_remedies(options: dict[str, Any], training: dict[str, Any]) -> list[str]:
    remedies = []
    if options.get("init") == "large":
        remedies.append("use a scaled initialisation (--init kaiming for ReLU, --init xavier "
                        "for tanh/sigmoid) instead of --init large")
    clip = training.get("clip_norm")
    if not clip:
        remedies.append("clip the gradient norm (--clip-norm 1.0): a step can then never be "
                        "larger than the learning rate times the threshold")
    else:
        remedies.append(f"clip harder (--clip-norm {clip / 10:g} instead of {clip:g})")
    lr = training.get("lr")
    lr_text = f" (--lr {lr / 10:g} instead of {lr:g})" if lr else " (--lr)"
    remedies.append(f"lower the learning rate{lr_text}")
    if not training.get("warmup_epochs"):
        remedies.append("warm the learning rate up (--warmup-epochs 1)")
    if options.get("norm") in (None, "none"):
        remedies.append("add batch normalisation (--norm batch)")
    return remedies


def _flat_loss_remedies(options: dict[str, Any], training: dict[str, Any]) -> list[str]:
    lr = training.get("lr")
    remedies = ["try a learning rate ten times lower and ten times higher"
                + (f" (--lr {lr / 10:g}, --lr {lr * 10:g})" if lr else "")]
    if options.get("norm") in (None, "none"):
        remedies.append("add batch normalisation (--norm batch)")
    remedies.append("check that inputs are normalised and labels match the images "
                    "(cnnlab augment preview, cnnlab evaluate)")
    return remedies


def _dead_remedies(options: dict[str, Any], training: dict[str, Any]) -> list[str]:
    lr = training.get("lr")
    return [
        "lower the learning rate" + (f" (--lr {lr / 10:g})" if lr else "")
        + ": one large step can push a unit's bias below all its inputs for good",
        ("use an activation that passes some gradient for negative inputs (--activation "
         "leaky_relu or gelu)"),
        *(["use He initialisation (--init kaiming)"] if options.get("init") != "kaiming" else []),
        *(["add batch normalisation (--norm batch)"] if options.get("norm") in (None, "none")
          else []),
    ]


def _saturation_remedies(options: dict[str, Any]) -> list[str]:
    remedies = []
    if options.get("init") != "xavier":
        remedies.append("use Glorot initialisation (--init xavier), scaled for sigmoid/tanh, "
                        "so that pre-activations start near zero")
    if options.get("norm") in (None, "none"):
        remedies.append("add batch normalisation (--norm batch) before the activation")
    remedies.append("use ReLU (--activation relu --init kaiming), which does not saturate "
                    "for positive inputs")
    remedies.append("lower the learning rate (--lr)")
    return remedies
