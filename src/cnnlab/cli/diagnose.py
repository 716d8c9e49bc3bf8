"""``cnnlab diagnose RUN``: gradient verdicts with evidence and remedies for a monitored run."""

from __future__ import annotations

import json
from pathlib import Path

KEY_NUMBERS = (
    ("first_to_last_grad_ratio", "first-to-last layer gradient-norm ratio"),
    ("early_layers_update_ratio", "update ratio, first layers (early steps)"),
    ("late_layers_update_ratio", "update ratio, last layers (early steps)"),
    ("grad_norm_growth", "total gradient norm, end / start"),
    ("largest_update_ratio", "largest single update / weight"),
    ("loss_relative_drop", "loss drop over the run"),
    ("loss_spikes", "loss spikes"),
    ("dead_fraction_mean", "dead ReLU channels (mean over layers)"),
    ("saturated_fraction_mean", "saturated sigmoid/tanh outputs (mean)"),
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "diagnose", help="say whether a run's gradients vanish or explode, and what to try",
        description="Read the gradient monitor's files of a run (train it with --monitor "
        "gradients) and print verdicts: vanishing, exploding, dead units, saturation, or none; "
        "each names the layers, shows the numbers and lists remedies in order of expected "
        "effect. Also prints the run's fit verdict when it has one, and lists the figures "
        "in RUN/monitor (gradient heat map, update ratios, activation histograms), drawing "
        "any that are missing.")
    parser.add_argument("run", help="the run directory")
    parser.add_argument("--json", action="store_true",
                        help="print the verdicts as JSON (kind, summary, layers, evidence, "
                        "remedies)")
    parser.add_argument("--no-figures", action="store_true",
                        help="do not draw the figures the run lacks")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from cnnlab.diagnose.gradients import diagnose_run
    from cnnlab.diagnose.monitor import MONITOR_FOLDER, load_monitor

    run_dir = Path(args.run)
    verdicts = diagnose_run(run_dir)
    figures = [] if args.no_figures else [str(path) for path in
                                          _figures(run_dir / MONITOR_FOLDER, load_monitor)]
    summary_path = run_dir / "summary.json"
    fit = json.loads(summary_path.read_text()).get("fit_verdict") \
        if summary_path.exists() else None
    if args.json:
        print(json.dumps({"run": str(run_dir), "verdicts": [v.to_dict() for v in verdicts],
                          "fit_verdict": fit, "figures": figures}, indent=2, default=str))
        return 0
    print(f"run: {run_dir}")
    for verdict in verdicts:
        print(f"\n{verdict.kind}: {verdict.summary}")
        if verdict.layers:
            shown = ", ".join(verdict.layers[:8])
            more = f" and {len(verdict.layers) - 8} more" if len(verdict.layers) > 8 else ""
            print(f"  layers: {shown}{more}")
        for key, label in KEY_NUMBERS:
            value = verdict.evidence.get(key)
            if value is not None:
                text = f"{value:.1%}" if key == "loss_relative_drop" else f"{value:.3g}"
                print(f"  {label:<44} {text}")
        for rank, remedy in enumerate(verdict.remedies, start=1):
            print(f"  {rank}. {remedy}")
    if fit:
        print(f"\nfit: {fit['verdict']}: {fit['reason']}")
    if figures:
        print(f"\nfigures: {', '.join(figures)}")
    return 0


def _figures(folder: Path, load_monitor) -> list[Path]:
    """The monitor's figures, drawn now only if the run lacks any (the monitor draws them)."""
    from cnnlab.diagnose.figures import FIGURE_NAMES, save_monitor_figures

    paths = [folder / name for name in FIGURE_NAMES]
    if all(path.exists() for path in paths):
        return paths
    return save_monitor_figures(load_monitor(folder.parent), folder)
