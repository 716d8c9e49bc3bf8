"""Ten epochs of a head on a frozen backbone: with the feature cache, and without it.

A frozen backbone gives the same features for an image every epoch, so
cnnlab computes them once (``cnnlab.runs.transfer.FeatureCache``) and trains
the head on them. This benchmark measures, on one subset of CIFAR-10 images:

1. one pass of the backbone over the images (the unit of cost);
2. ten epochs with the cache: the features once, then ten epochs of the head;
3. ten epochs without it: the frozen backbone runs on every batch.

and prints them side by side as seconds and as multiples of one pass. The
claim under test: (2) costs at most 1.3 passes, (3) about ten.

The backbone is torchvision's resnet18 with random weights (the values of the
weights do not change the cost) at a small input size, the head linear, the
trainer's per-epoch fit/validation evaluations switched off so that only
training is timed. (1) and (2) are alternated ``--repeats`` times and their
medians compared. Run: ``python benchmarks/bench_transfer.py [--images 512]
[--size 64] [--epochs 10] [--repeats 3] [--threads 1]``. Check ``uptime`` first: on a
shared machine compare the ratios, measured side by side, not the seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time


def load_subset(images: int):
    from cnnlab._util import CnnlabError
    from cnnlab.data import ArrayDataset, limit, load_images

    try:
        # The test split: 10,000 files list faster than 50,000; for timing they are alike.
        data = load_images("cifar10", "test", progress=False)
        return limit(data, images, seed=0)
    except CnnlabError as error:
        import torch

        print(f"CIFAR-10 not found ({error}); using synthetic random images instead")
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randint(0, 256, (images, 3, 32, 32), generator=generator,
                               dtype=torch.uint8)
        targets = torch.randint(0, 10, (images,), generator=generator)
        return ArrayDataset(inputs, targets, [str(i) for i in range(10)],
                            source="synthetic random images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64, help="backbone input size (pixels)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from cnnlab.data import ArrayDataset
    from cnnlab.models.backbones import build_transfer_model
    from cnnlab.runs.transfer import FeatureCache, extract_features
    from cnnlab.train import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    data = load_subset(args.images)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
                         threads=args.threads, device="cpu", fit_subset=0,
                         checkpoint_every=0)

    def fresh_model():
        torch.manual_seed(0)
        return build_transfer_model("resnet18", "none", num_classes=len(data.classes),
                                    freeze=True, resize=args.size)

    # Warm-up: the first convolutions pick their kernels.
    model = fresh_model()
    extract_features(model, data.inputs[:args.batch_size], args.batch_size, "cpu")

    # 1 and 2, alternated --repeats times so that a change in the machine's load hits both.
    passes, cached_runs, feature_runs = [], [], []
    for _ in range(args.repeats):
        # 1. One pass of the backbone over the images.
        started = time.perf_counter()
        extract_features(model, data, args.batch_size, "cpu")
        passes.append(time.perf_counter() - started)

        # 2. With the cache: features once (hashing the weights and images for the key
        # included), then the head for ten epochs on them.
        FeatureCache.clear_memory()
        cached_model = fresh_model()
        started = time.perf_counter()
        features = FeatureCache(None).features(cached_model, data,
                                               batch_size=args.batch_size, device="cpu")
        feature_runs.append(time.perf_counter() - started)
        Trainer(cached_model.head, config,
                train=ArrayDataset(features, data.targets, data.classes)).fit()
        cached_runs.append(time.perf_counter() - started)

    # 3. Without the cache: the frozen backbone runs on every training batch (once: slow).
    model = fresh_model()
    started = time.perf_counter()
    Trainer(model, config, train=data).fit()
    live = time.perf_counter() - started
    one_pass, cached = statistics.median(passes), statistics.median(cached_runs)
    feature_seconds = statistics.median(feature_runs)

    load = os.getloadavg()[0]
    print(f"{args.images} CIFAR-10 images at {args.size}x{args.size}, resnet18 frozen, "
          f"linear head, {args.epochs} epochs, batch {args.batch_size}, {args.threads} "
          f"thread(s); {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.1f}; torch {torch.__version__}; medians of {args.repeats} "
          f"alternated runs of 1 and 2 (all: passes {_seconds(passes)}, cached "
          f"{_seconds(cached_runs)}), one run of 3")
    print()
    print(f"| {'what':<44} | {'seconds':>8} | {'backbone passes':>15} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 17}|")
    rows = [("one backbone pass over the images", one_pass),
            (f"{args.epochs} epochs with the feature cache", cached),
            ("  of which computing the features once", feature_seconds),
            (f"{args.epochs} epochs without the cache", live)]
    for label, seconds in rows:
        print(f"| {label:<44} | {seconds:>8.2f} | {seconds / one_pass:>15.2f} |")
    print()
    ratio = cached / one_pass
    verdict = "holds" if ratio <= 1.3 else "does NOT hold"
    print(f"claim: {args.epochs} cached epochs cost <= 1.3 backbone passes: {verdict} "
          f"({ratio:.2f}); without the cache {live / one_pass:.1f} passes, "
          f"{live / cached:.1f}x the cached time")


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in values) + " s"


if __name__ == "__main__":
    from cnnlab._util import run_script

    run_script(main)
