"""``cnnlab evaluate RUN``: evaluate a finished run on its test split."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a finished run",
        description="Evaluate a run directory written by cnnlab train on a data split: loss, "
        "accuracy, per-class accuracy and a confusion matrix figure.")
    parser.add_argument("run", help="the run directory")
    parser.add_argument("--split", default="test", help="which split to evaluate")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    binary = parser.add_argument_group("binary runs (thresholds chosen on validation)")
    binary.add_argument("--min-recall", type=float, default=None,
                        help="the recall of the positive class the threshold must reach")
    binary.add_argument("--min-precision", type=float, default=None,
                        help="the precision the threshold must reach")
    binary.add_argument("--cost-escape", type=float, default=None,
                        help="cost of one missed positive (an escaped defect)")
    binary.add_argument("--cost-false-alarm", type=float, default=None,
                        help="cost of one false alarm (a discarded good part)")
    binary.add_argument("--defect-rate", type=float, default=None,
                        help="the positive rate to report per-10,000 counts at (default: the "
                        "data's)")
    binary.add_argument("--rescore", action="store_true",
                        help="recompute the scores from the model instead of the stored ones")
    parser.set_defaults(handler=run)


def run(args) -> int:
    config = json.loads((Path(args.run) / "config.json").read_text()) \
        if (Path(args.run) / "config.json").exists() else {}
    task = config.get("task", "classify")
    if task != "classify":
        from cnnlab.cli import _tasks

        return _tasks.evaluate_task(args, task)
    from cnnlab.runs import evaluate_run

    result = evaluate_run(args.run, split=args.split, device=args.device)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['split']}: {result['samples']} images, accuracy {result['accuracy']:.4f}, "
          f"loss {result['loss']:.4f}")
    width = max(len(c) for c in result["classes"])
    for name, accuracy in result["per_class_accuracy"].items():
        print(f"  {name:<{width}}  {accuracy:.3f}")
    print(f"confusion matrix: {result['confusion_figure']}")
    return 0
