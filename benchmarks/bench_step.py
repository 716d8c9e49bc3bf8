"""The parts of one training step, each against its alternative, timed in one process.

The trainer's CPU choices rest on these measurements; each line times two or
three ways of doing the same thing, alternated over ``--rounds`` rounds (the
median round is kept), so a change in the machine's load hits all of them:

- ``grid``: the augmentation's sampling grid for a batch of 128 32x32
  images, ``torch.nn.functional.affine_grid`` against
  :func:`cnnlab.augment.affine.sampling_grid` (broadcast multiply-adds);
- ``layout``: one training step (forward, backward, Adam) of each model on a
  batch of random images, NCHW against channels_last;
- ``optimizer``: one Adam step over LeNet-5's parameters, the default
  per-tensor loop against ``foreach=True`` and ``fused=True``.

Run: ``python benchmarks/bench_step.py [--threads 1,2] [--models lenet5,small_cnn,fast_resnet,
resnet18] [--parts grid,layout,optimizer] [--rounds 3] [--seconds 1.0]``. Each number is
milliseconds per call; the ratio column is the first variant's time over each other's
(> 1: the other is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

PARTS = ("grid", "layout", "optimizer")
BATCHES = {"lenet5": 128, "small_cnn": 128, "fast_resnet": 128, "resnet18": 32}


def milliseconds(function: Callable[[], object], seconds: float) -> float:
    """Mean milliseconds per call over about ``seconds`` of calls, after three warm-up calls."""
    for _ in range(3):
        function()
    calls, started = 0, time.perf_counter()
    while calls < 5 or time.perf_counter() - started < seconds:
        function()
        calls += 1
    return (time.perf_counter() - started) / calls * 1000


def compare(label: str, variants: dict[str, Callable[[], object]], rounds: int,
            seconds: float) -> None:
    """Time the variants in alternating rounds and print each one's median and ratio."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(rounds):
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            times[name].append(milliseconds(variants[name], seconds))
    first = statistics.median(times[names[0]])
    for name in names:
        median = statistics.median(times[name])
        print(f"{label:<24} {name:<16} {median:>9.3f} {first / median:>7.2f}x", flush=True)


def grid_variants() -> dict[str, Callable[[], object]]:
    import torch
    import torch.nn.functional as F

    from cnnlab.augment.affine import sampling_grid

    theta = torch.randn(128, 2, 3, generator=torch.Generator().manual_seed(0))
    return {"affine_grid": lambda: F.affine_grid(theta, [128, 3, 32, 32], align_corners=False),
            "sampling_grid": lambda: sampling_grid(theta, 32, 32)}


def layout_variants(model_name: str) -> dict[str, Callable[[], object]]:
    import torch
    import torch.nn.functional as F

    from cnnlab.models import build_model

    options = {"cifar_stem": True} if model_name == "resnet18" else {}
    batch = BATCHES.get(model_name, 64)
    variants = {}
    layouts = (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last))
    for name, layout in layouts:
        torch.manual_seed(0)
        model = build_model(model_name, **options).to(memory_format=layout)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        images = torch.randn(batch, 3, 32, 32).contiguous(memory_format=layout)
        labels = torch.randint(0, 10, (batch,))

        def step(model=model, optimizer=optimizer, images=images, labels=labels):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        variants[name] = step
    return variants


def optimizer_variants() -> dict[str, Callable[[], object]]:
    import torch

    from cnnlab.models import build_model

    variants = {}
    for name, options in (("loop", {"foreach": False}), ("foreach", {"foreach": True}),
                          ("fused", {"fused": True})):
        model = build_model("lenet5")
        for parameter in model.parameters():
            parameter.grad = torch.randn_like(parameter)
        variants[name] = torch.optim.Adam(model.parameters(), lr=1e-3, **options).step
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="torch threads, comma-separated")
    parser.add_argument("--models", default="lenet5,small_cnn,fast_resnet,resnet18")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args()
    parts = [part for part in args.parts.split(",") if part]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts {','.join(unknown)}: unknown; known: {', '.join(PARTS)}")
    try:
        thread_counts = [int(value) for value in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads {args.threads!r}: give whole numbers, e.g. 1,2")

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'part':<24} {'variant':<16} {'ms/call':>9} {'ratio':>8}")
    for threads in thread_counts:
        torch.set_num_threads(threads)
        suffix = f" ({threads} thr)"
        if "grid" in parts:
            compare("grid" + suffix, grid_variants(), args.rounds, args.seconds)
        if "layout" in parts:
            for model_name in args.models.split(","):
                compare(f"{model_name} step{suffix}", layout_variants(model_name), args.rounds,
                        args.seconds)
        if "optimizer" in parts:
            compare("Adam step" + suffix, optimizer_variants(), args.rounds, args.seconds)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    from cnnlab._util import run_script

    run_script(main)
