"""Training throughput: cnnlab's on-device pipeline against the default DataLoader pipeline.

One invocation trains LeNet-5 for one epoch four ways and prints images/s,
epoch seconds and peak memory for each, with the ratios:

- cnnlab plain and cnnlab with the ``keras`` preset (uint8 data in memory,
  batched augmentation as one resampling pass per batch);
- the pipeline a PyTorch user writes by default: CIFAR-10 as an in-memory
  uint8 dataset, ``torchvision.transforms.v2`` applied per sample, a
  DataLoader with 2 worker processes; without and with the equivalent
  transforms (RandomAffine + RandomHorizontalFlip).

Same model, batch size (128) and optimiser (Adam, lr 1e-3) everywhere. Each
variant runs in its own process so peak memory (max RSS) is its own.
Run: ``python benchmarks/bench_train.py [--images 45000] [--threads 2] [--repeats 3]``.
With repeats, each round runs the four variants in a rotated order (each goes
first once in four rounds) and the table keeps each variant's median run:
the load on a shared machine drifts within an invocation, and one run of a
one-epoch benchmark can move by a third. Check ``uptime`` first: on a busy
2-core machine absolute numbers collapse; the ratios, measured in one
invocation, are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# compare.py sits beside this script; its run-order and memory helpers serve both.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import peak_memory_mib, rotated  # noqa: E402

VARIANTS = ["cnnlab-plain", "cnnlab-keras", "dataloader-plain", "dataloader-keras"]


def load_train(images: int):
    from cnnlab.data import limit, load_images

    data = load_images("cifar10", "train", progress=False)
    return limit(data, images, seed=0).with_statistics()


def run_cnnlab(images: int, augmented: bool, threads: int) -> dict:
    from cnnlab.augment import build_augment
    from cnnlab.models import build_model
    from cnnlab.train import Trainer, TrainConfig

    data = load_train(images)
    config = TrainConfig(epochs=1, batch_size=128, lr=1e-3, threads=threads, fit_subset=0)
    trainer = Trainer(build_model("lenet5"), config, train=data,
                      augment=build_augment("keras" if augmented else None, seed=0))
    started = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images": len(data)}


def run_dataloader(images: int, augmented: bool, threads: int) -> dict:
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    from cnnlab.models import build_model

    data = load_train(images)
    torch.set_num_threads(threads)
    steps = [v2.ToDtype(torch.float32, scale=True)]
    if augmented:
        # Keras' rotation_range=30, shifts 0.1, shear 0.1 degrees, zoom 0.1, horizontal flips.
        steps = [v2.RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=0.1),
                 v2.RandomHorizontalFlip()] + steps
    steps.append(v2.Normalize(list(data.mean), list(data.std)))
    transform = v2.Compose(steps)

    class InMemory(Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, index):
            return transform(data.inputs[index]), data.targets[index]

    loader = DataLoader(InMemory(), batch_size=128, shuffle=True, num_workers=2,
                        persistent_workers=False)
    model = build_model("lenet5")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    started = time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images": len(data)}


def median_run(runs: list[dict]) -> dict:
    """The run with the median images/s (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r["images"] / r["seconds"])
    return ordered[(len(ordered) - 1) // 2]


def child(variant: str, images: int, threads: int) -> None:
    kind, preset = variant.split("-")
    runner = run_cnnlab if kind == "cnnlab" else run_dataloader
    result = runner(images, preset == "keras", threads)
    # Children (DataLoader workers) count too: the pipeline's memory is theirs as well.
    result["peak_memory_mib"] = peak_memory_mib()
    result["variant"] = variant
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=45000)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of all four variants; the median run of each is kept")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args.images, args.threads)
        return

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, "
          f"{args.repeats} round(s) of {len(VARIANTS)} variants")
    runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for round_index in range(args.repeats):
        for variant in rotated(VARIANTS, round_index):
            output = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--images", str(args.images),
                 "--threads", str(args.threads)],
                check=True, capture_output=True, text=True).stdout
            runs[variant].append(json.loads(output.strip().splitlines()[-1]))
    results = {variant: median_run(variant_runs) for variant, variant_runs in runs.items()}
    print(f"{'variant':<18} {'images/s':>9} {'epoch s':>8} {'peak MiB':>9}  all runs (images/s)")
    for variant, r in results.items():
        r["images_per_second"] = r["images"] / r["seconds"]
        every = ", ".join(f"{x['images'] / x['seconds']:,.0f}" for x in runs[variant])
        print(f"{variant:<18} {r['images_per_second']:>9,.0f} {r['seconds']:>8.1f} "
              f"{r['peak_memory_mib']:>9,.0f}  {every}")

    def speed(name: str) -> float:
        return results[name]["images_per_second"]

    ratios = {
        "cnnlab plain / dataloader plain (target >= 1.5)":
            speed("cnnlab-plain") / speed("dataloader-plain"),
        "cnnlab keras / dataloader keras (target >= 3)":
            speed("cnnlab-keras") / speed("dataloader-keras"),
        "cnnlab keras epoch / cnnlab plain epoch (target <= 1.3)":
            results["cnnlab-keras"]["seconds"] / results["cnnlab-plain"]["seconds"],
    }
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    from cnnlab._util import run_script

    run_script(main)
