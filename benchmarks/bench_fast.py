"""Time to accuracy of the fast CIFAR-10 preset (``cnnlab.runs.fast``) on this machine.

Trains the fast recipe (pool_resnet with a whitening stem, one-cycle SGD with
Nesterov momentum, label smoothing 0.2, crop + flip, channels_last) and after every epoch
measures test accuracy with test-time flips; prints one line per epoch and
the first epoch (and training seconds) at which each threshold was reached.

Run: ``python benchmarks/bench_fast.py [--minutes 40 | --epochs 10] [--limit 10000]
[--test-limit 2000] [--threads 1] [--out runs/bench-fast]``. ``--minutes``
chooses the epochs up front from a few timed steps (the one-cycle schedule
must know its length); the test evaluation after each epoch is not counted
in the training clock. Check ``uptime`` first: on a shared machine the
seconds depend on the other work; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="training budget")
    budget.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="training images (default all)")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="test images evaluated after each epoch (default all 10,000)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--out", default="runs/bench-fast")
    args = parser.parse_args()

    import torch

    from cnnlab.runs.fast import train_fast
    from cnnlab.train import Callback

    class EpochLines(Callback):
        def on_epoch_end(self, trainer, epoch, row) -> None:
            print(f"epoch {epoch:>3}  train_loss {row['train_loss']:.4f}  test "
                  f"{row['test_accuracy']:.4f}  test+flips {row['test_tta_accuracy']:.4f}  "
                  f"train clock {row['train_clock_seconds'] / 60:6.1f} min  "
                  f"{row['images_per_second']:,.0f} images/s  load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {args.threads} thread(s)")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    result = train_fast(args.data, args.out, epochs=args.epochs, minutes_budget=args.minutes,
                        limit_train=args.limit, limit_test=args.test_limit,
                        threads=args.threads, callbacks=[EpochLines()])
    summary = result.summary
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"trained on {summary['train_images']} images for {len(result.history)} epochs, "
          f"{summary['train_seconds'] / 60:.1f} min of training "
          f"({summary['total_seconds'] / 60:.1f} min with data loading and evaluation)")
    print(f"final test accuracy on {summary['test_images']} images: "
          f"{summary['test_tta']['accuracy']:.4f} with flips, "
          f"{summary['test']['accuracy']:.4f} without")
    for milestone in summary["time_to_accuracy"]:
        when = (f"epoch {milestone['epoch']}, {milestone['seconds'] / 60:.1f} min of training"
                if milestone["reached"] else "not reached")
        print(f"time to {milestone['threshold']:.0%}: {when}")
    print(json.dumps({"budget": summary["budget"], "time_to_accuracy":
                      summary["time_to_accuracy"]}))


if __name__ == "__main__":
    from cnnlab._util import run_script

    run_script(main)
