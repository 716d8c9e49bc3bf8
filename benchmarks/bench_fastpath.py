"""The fast-path switches one at a time: images/s of the trainer with each switch on and off.

For each model, trains a few epochs on a CIFAR-10 subset with the
:class:`cnnlab.train.Trainer` as configured, then with exactly one switch
changed, and prints the steady images/s (median epoch after the first,
which pays for kernel selection and, with ``torch.compile``, compilation)
and each switch's speed-up over the baseline:

- ``amp``: autocast to bf16 (fp16 with a gradient scaler where bf16 is not
  supported); CUDA only, the trainer ignores it on the CPU;
- ``channels_last``: NHWC activations and weights (cuDNN's and oneDNN's
  preferred layout for convolutions);
- ``compile``: ``torch.compile`` of the model.

Always on in the trainer, so not switchable here: data resident on the
device (uint8, indexed per batch), fused optimisers, and no host
synchronisation inside the step (metrics summed on the device, read once
per epoch). ``benchmarks/compare.py`` measures them together against a
DataLoader pipeline.

Run: ``python benchmarks/bench_fastpath.py [--device cuda] [--images 10000] [--epochs 3]
[--models fast_resnet,resnet18] [--switches amp,channels_last,compile]``.
On a shared machine compare the speed-ups, not the images/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

SWITCHES = ("amp", "channels_last", "compile")


def measure(model_name: str, data, device: str, epochs: int, batch_size: int,
            threads: int | None, **switches) -> float:
    """Steady images/s of ``epochs`` of training with the given switches."""
    from cnnlab.models import build_model
    from cnnlab.train import TrainConfig, Trainer

    options = {"cifar_stem": True} if model_name.startswith("resnet") else {}
    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=0.05,
                         device=device, threads=threads, fit_subset=0, checkpoint_every=0,
                         amp=switches.get("amp", False),
                         channels_last=switches.get("channels_last", False),
                         compile=switches.get("compile", False))
    trainer = Trainer(build_model(model_name, **options), config, train=data)
    result = trainer.fit()
    speeds = [row["images_per_second"] for row in result.history]
    return statistics.median(speeds[1:]) if len(speeds) > 1 else speeds[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--models", default="fast_resnet,resnet18")
    parser.add_argument("--switches", default=",".join(SWITCHES))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from cnnlab._util import resolve_device
    from cnnlab.data import limit, load_images

    device = resolve_device(args.device)
    switches = [s for s in args.switches.split(",") if s]
    unknown = sorted(set(switches) - set(SWITCHES))
    if unknown:
        raise SystemExit(f"--switches {','.join(unknown)}: unknown; known: {', '.join(SWITCHES)}")
    if device.type != "cuda" and "amp" in switches:
        print("amp: skipped, the trainer uses mixed precision on CUDA only")
        switches.remove("amp")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {os.cpu_count()} cores"
    print(f"device: {name}; torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.2f}")
    data = limit(load_images("cifar10", "train", progress=False), args.images, seed=0)
    data = data.with_statistics()

    print(f"{'model':<12} {'variant':<16} {'images/s':>9} {'speed-up':>8}")
    for model_name in args.models.split(","):
        started = time.perf_counter()
        baseline = measure(model_name, data, str(device), args.epochs, args.batch_size,
                           args.threads)
        print(f"{model_name:<12} {'baseline':<16} {baseline:>9,.0f} {1:>7.2f}x", flush=True)
        for switch in switches:
            speed = measure(model_name, data, str(device), args.epochs, args.batch_size,
                            args.threads, **{switch: True})
            print(f"{model_name:<12} {'+' + switch:<16} {speed:>9,.0f} "
                  f"{speed / baseline:>7.2f}x", flush=True)
        if len(switches) > 1:
            speed = measure(model_name, data, str(device), args.epochs, args.batch_size,
                            args.threads, **{switch: True for switch in switches})
            print(f"{model_name:<12} {'all of them':<16} {speed:>9,.0f} "
                  f"{speed / baseline:>7.2f}x", flush=True)
        print(f"({model_name}: {time.perf_counter() - started:.0f} s)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    from cnnlab._util import run_script

    run_script(main)
