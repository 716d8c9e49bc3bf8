"""``cnnlab train --preset fast``: the accuracy-per-minute CIFAR-10 recipe (cnnlab.runs.fast).

The preset fixes the model, optimiser, schedule and augmentation; of the
``train`` options it honours --data, --epochs, --limit, --out, --seed,
--device, --threads and --quiet/--jsonl.
"""

from __future__ import annotations

import json
import sys


def run_preset(args) -> int:
    """Train the fast recipe and print the test accuracy and time to each threshold."""
    from cnnlab.cli.train import _data_name, progress_callbacks
    from cnnlab.runs.fast import FAST_RECIPE, train_fast

    out = args.out or f"runs/fast-{_data_name(args.data)}"
    result = train_fast(args.data, out, epochs=args.epochs, limit_train=args.limit,
                        device=args.device, threads=args.threads, seed=args.seed,
                        callbacks=progress_callbacks(args),
                        progress=not (args.quiet or args.jsonl))
    summary = result.summary
    if args.jsonl:
        sys.stdout.write(json.dumps({"event": "summary", "run": out, **summary},
                                    default=str) + "\n")
        return 0
    print(f"run: {out} (preset fast: {FAST_RECIPE.model} {FAST_RECIPE.model_options}, "
          f"one-cycle SGD, label smoothing {FAST_RECIPE.label_smoothing}, "
          f"{FAST_RECIPE.augment} augmentation)")
    print(f"test: accuracy {summary['test_tta']['accuracy']:.4f} with test-time flips, "
          f"{summary['test']['accuracy']:.4f} without ({summary['test_images']} images)")
    for milestone in summary["time_to_accuracy"]:
        when = (f"epoch {milestone['epoch']}, after {milestone['seconds']:.0f} s of training"
                if milestone["reached"] else "not reached")
        print(f"time to {milestone['threshold']:.0%}: {when}")
    return 0
