"""Overhead of the gradient monitor at its default sampling, on a LeNet-5 and a ResNet-18 epoch.

One invocation trains each model for one epoch on CIFAR-10 images with and
without :class:`cnnlab.diagnose.GradientMonitor` (automatic sampling,
target 10%), alternating the two ``--repeats`` times so that a change in
the machine's load hits both alike, and prints the median epoch time of
each, the overhead as a ratio, and what the monitor did (samples, final
gap, its own overhead estimate). The epoch time counts the training steps
only (first step to last), which is where the monitor works, both as wall
seconds and as CPU seconds of the process: on a machine shared with other
jobs the wall clock mostly measures the neighbours, while CPU time measures
the work. Writing the monitor's files and figures at the end of a run is a
one-off cost, printed in its own columns.

ResNet-18 is torchvision's with the CIFAR stem (3x3, no max pool) on a small
subset at batch 64 (6 steps with the default 384 images), since one CPU
epoch over 45,000 images takes hours; a smaller batch makes the monitor's
share larger, not smaller, because its per-parameter work does not shrink.
Run: ``python benchmarks/bench_monitor.py [--lenet-images 45000] [--resnet-images 384]
[--repeats 2] [--threads 1]``. Check ``uptime`` first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def load_subset(images: int):
    from cnnlab._util import CnnlabError
    from cnnlab.data import ArrayDataset, limit, load_images

    try:
        data = load_images("cifar10", "train", progress=False)
        return limit(data, images, seed=0).with_statistics()
    except CnnlabError as error:
        import torch

        print(f"CIFAR-10 not found ({error}); using synthetic random images instead")
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randint(0, 256, (images, 3, 32, 32), generator=generator,
                               dtype=torch.uint8)
        targets = torch.randint(0, 10, (images,), generator=generator)
        return ArrayDataset(inputs, targets, [str(i) for i in range(10)],
                            source="synthetic random images").with_statistics()


class StepClock:
    """Wall and CPU seconds from the start of the epoch to the end of its last step."""

    def __init__(self) -> None:
        from cnnlab.train import Callback

        clock = self

        class _Clock(Callback):
            def on_epoch_start(self, trainer, epoch):
                clock.wall, clock.cpu = time.perf_counter(), time.process_time()

            def on_step_end(self, trainer, step, loss):
                clock.wall_end, clock.cpu_end = time.perf_counter(), time.process_time()

        self.callback = _Clock()

    def seconds(self) -> tuple[float, float]:
        return self.wall_end - self.wall, self.cpu_end - self.cpu


def one_epoch(model_name: str, options: dict, data, monitored: bool, threads: int,
              batch_size: int) -> dict:
    from cnnlab.diagnose.figures import save_monitor_figures
    from cnnlab.diagnose.monitor import GradientMonitor, write_monitor
    from cnnlab.models import build_model
    from cnnlab.train import TrainConfig, Trainer

    model = build_model(model_name, **options)
    config = TrainConfig(epochs=1, batch_size=batch_size, optimizer="adam", lr=1e-3,
                         threads=threads, fit_subset=0, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        clock = StepClock()
        monitor = GradientMonitor(folder, figures=False, verdicts=False) if monitored else None
        # The clock comes last so that it also counts the monitor's work at each step end.
        callbacks = ([monitor] if monitor else []) + [clock.callback]
        Trainer(model, config, train=data, callbacks=callbacks).fit()
        wall, cpu = clock.seconds()
        measured = {"wall_seconds": wall, "cpu_seconds": cpu}
        if monitor is not None:
            recorded = monitor.data()
            started = time.perf_counter()
            write_monitor(recorded, Path(folder) / "monitor")
            measured["files_seconds"] = time.perf_counter() - started
            started = time.perf_counter()
            save_monitor_figures(recorded, Path(folder) / "monitor")
            measured["figures_seconds"] = time.perf_counter() - started
            measured["samples"] = len(recorded)
            measured["gap"] = monitor.current_gap()
            measured["estimate"] = monitor.estimated_overhead()
    return measured


def bench(label: str, model_name: str, options: dict, images: int, repeats: int,
          threads: int, batch_size: int) -> dict:
    data = load_subset(images)
    # Warm-up on two batches: allocator, kernels, lazy imports.
    one_epoch(model_name, options, data.take(torch_arange(2 * batch_size)), True, threads,
              batch_size)
    plain, watched = [], []
    for _ in range(repeats):
        plain.append(one_epoch(model_name, options, data, False, threads, batch_size))
        watched.append(one_epoch(model_name, options, data, True, threads, batch_size))

    def median(runs, key):
        return statistics.median(r[key] for r in runs)

    last = watched[-1]
    return {
        "model": label, "images": len(data), "batch": batch_size,
        "steps": -(-len(data) // batch_size),
        "plain_wall": median(plain, "wall_seconds"), "monitor_wall": median(watched,
                                                                            "wall_seconds"),
        "plain_cpu": median(plain, "cpu_seconds"), "monitor_cpu": median(watched,
                                                                          "cpu_seconds"),
        "plain_all": [round(r["wall_seconds"], 2) for r in plain],
        "monitor_all": [round(r["wall_seconds"], 2) for r in watched],
        "plain_all_cpu": [round(r["cpu_seconds"], 2) for r in plain],
        "monitor_all_cpu": [round(r["cpu_seconds"], 2) for r in watched],
        "samples": last["samples"], "gap": last["gap"], "estimate": last["estimate"],
        "files_seconds": last["files_seconds"], "figures_seconds": last["figures_seconds"],
    }


def torch_arange(count: int):
    import torch

    return torch.arange(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lenet-images", type=int, default=45_000)
    parser.add_argument("--resnet-images", type=int, default=384)
    parser.add_argument("--resnet-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import os

    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.2f} at the start, {args.repeats} alternating repeats")
    rows = [
        bench("LeNet-5", "lenet5", {}, args.lenet_images, args.repeats, args.threads, 128),
        bench("ResNet-18 (CIFAR stem)", "resnet18", {"cifar_stem": True}, args.resnet_images,
              args.repeats, args.threads, args.resnet_batch),
    ]
    print(f"load average at the end {os.getloadavg()[0]:.2f}\n")
    header = (f"{'model':<23}{'images':>7}{'batch':>6}{'steps':>6} | {'wall s':>7}"
              f"{'+monitor':>9}{'overhead':>9} | {'cpu s':>7}{'+monitor':>9}{'overhead':>9} | "
              f"{'samples':>7}{'gap':>4}{'own est.':>9} | {'files s':>7}{'figures s':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        estimate = f"{r['estimate']:.1%}" if r["estimate"] is not None else "n/a"
        print(f"{r['model']:<23}{r['images']:>7}{r['batch']:>6}{r['steps']:>6} | "
              f"{r['plain_wall']:>7.2f}{r['monitor_wall']:>9.2f}"
              f"{r['monitor_wall'] / r['plain_wall'] - 1:>9.1%} | "
              f"{r['plain_cpu']:>7.2f}{r['monitor_cpu']:>9.2f}"
              f"{r['monitor_cpu'] / r['plain_cpu'] - 1:>9.1%} | "
              f"{r['samples']:>7}{r['gap']:>4}{estimate:>9} | {r['files_seconds']:>7.2f}"
              f"{r['figures_seconds']:>10.2f}")
    print("\nper repeat, without / with the monitor (wall s; cpu s):")
    for r in rows:
        print(f"  {r['model']}: {r['plain_all']} / {r['monitor_all']}; "
              f"{r['plain_all_cpu']} / {r['monitor_all_cpu']}")


if __name__ == "__main__":
    from cnnlab._util import run_script

    run_script(main)
