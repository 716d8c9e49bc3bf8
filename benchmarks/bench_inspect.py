"""How long ``cnnlab.inspect`` takes on real networks at 224x224, against a 2-second budget.

For each network the script builds the model once (not timed; on the meta
device unless ``--real``), then times :func:`cnnlab.inspect.inspect`: the
first call in the process ("cold": tracing machinery and meta kernels load
lazily) and the median of ``--repeats`` further calls ("warm"). Each time is
given as wall seconds and as CPU seconds of the process: on a machine shared
with other jobs the wall clock mostly measures the neighbours, CPU time the
work. ResNet-50 is timed first, so its cold time includes every one-off cost.
torchinfo's summary of the same model (a real forward pass with hooks) is
timed alongside for scale.

Run: ``python benchmarks/bench_inspect.py [--repeats 5] [--real] [--threads 1]
[--models resnet50,vgg16,...]``. Check ``uptime`` first.
"""

from __future__ import annotations

import argparse
import statistics
import time

BUDGET_SECONDS = 2.0
MODELS = ["resnet50", "resnet18", "vgg16", "densenet121", "googlenet", "mobilenet_v3_small",
          "efficientnet_b0"]


def timed(function, *args, **kwargs) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = function(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, value


def build(name: str, real: bool):
    import torch
    import torchvision

    options = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    with torch.device("cpu" if real else "meta"):
        return torchvision.models.get_model(name, weights=None, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--real", action="store_true",
                        help="build models with real CPU weights (inspect still runs on meta)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--torchinfo", action="store_true", help="also time torchinfo.summary")
    args = parser.parse_args()

    import torch

    from cnnlab.inspect import inspect

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), models on "
          f"{'cpu' if args.real else 'meta'}, input 3x224x224, {args.repeats} warm repeats")
    print(f"{'model':<20} {'rows':>5} {'cold wall':>10} {'cold cpu':>9} {'warm wall':>10} "
          f"{'warm cpu':>9} {'torchinfo':>10}")
    for name in args.models.split(","):
        model = build(name, args.real)
        cold_wall, cold_cpu, result = timed(inspect, model, "3x224x224", name=name)
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu, _ = timed(inspect, model, "3x224x224", name=name)
            walls.append(wall)
            cpus.append(cpu)
        reference = "-"
        if args.torchinfo:
            import torchinfo

            device = "cpu" if args.real else "meta"
            wall, _, _ = timed(torchinfo.summary, model, input_size=(1, 3, 224, 224),
                               device=device, verbose=0)
            reference = f"{wall:.2f} s"
        print(f"{name:<20} {len(result.rows):>5} {cold_wall:>9.2f}s {cold_cpu:>8.2f}s "
              f"{statistics.median(walls):>9.2f}s {statistics.median(cpus):>8.2f}s "
              f"{reference:>10}")
        if name == "resnet50":
            verdict = "within" if cold_wall < BUDGET_SECONDS else "OVER"
            print(f"  resnet50 cold inspection {cold_wall:.2f} s wall: {verdict} the "
                  f"{BUDGET_SECONDS:.0f}-second budget")


if __name__ == "__main__":
    from cnnlab._util import run_script

    run_script(main)
