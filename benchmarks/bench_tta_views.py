"""Test accuracy of a finished run under more test-time views: plain, flips, flips + shifts.

The fast preset averages each test image's logits with its mirror's
(``cnnlab.runs.fast.evaluate_tta``). This script asks whether more views
would buy more: it adds the image moved by one pixel left, right, up and
down (reflect padding), and prints the accuracy of each combination of the
same logits.

Run: ``python benchmarks/bench_tta_views.py RUN_DIR [--threads 2]``, where
RUN_DIR is a finished image run (``cnnlab train`` or ``bench_fast.py --out``)
on a dataset with a test split.
"""

from __future__ import annotations

import argparse
import time


def shifted(batch, dx: int, dy: int):
    """``batch`` [B, C, H, W] moved ``dx`` pixels right and ``dy`` down, edges reflected."""
    import torch.nn.functional as F

    height, width = batch.shape[-2:]
    padded = F.pad(batch, (1, 1, 1, 1), mode="reflect")
    return padded[..., 1 - dy:1 - dy + height, 1 - dx:1 - dx + width]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run directory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()

    import torch

    from cnnlab._util import CnnlabError
    from cnnlab.data import load_images
    from cnnlab.runs.image import load_run_model
    from cnnlab.train import prepare_inputs

    torch.set_num_threads(args.threads)
    model, config = load_run_model(args.run)
    model.eval()
    data = config.get("data", {})
    if data.get("mean") is None:
        raise CnnlabError(f"{args.run}: config.json has no image statistics (data.mean); "
                          "pass a run trained on images")
    test = load_images(config["run"]["data"], split="test")
    mean = torch.tensor(data["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(data["std"]).view(1, -1, 1, 1)
    moves = {"plain": (0, 0), "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    logits = {f"{name}{mirror}": [] for name in moves for mirror in ("", "+mirror")}
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(test), args.batch_size):
            batch, _ = prepare_inputs(test.inputs[start:start + args.batch_size], mean, std)
            for name, (dx, dy) in moves.items():
                view = shifted(batch, dx, dy) if (dx, dy) != (0, 0) else batch
                logits[name].append(model(view).float())
                logits[f"{name}+mirror"].append(model(view.flip(-1)).float())
    seconds = time.perf_counter() - started
    logits = {name: torch.cat(parts) for name, parts in logits.items()}
    targets = test.targets.long()

    def accuracy(names) -> float:
        return (sum(logits[name] for name in names).argmax(1) == targets).float().mean().item()

    shifts = ["left", "right", "up", "down"]
    rows = [("plain", ["plain"]),
            ("flips (the preset)", ["plain", "plain+mirror"]),
            ("plain + 4 shifts", ["plain", *shifts]),
            ("flips + 4 shifts", ["plain", "plain+mirror", *shifts]),
            ("5 positions, mirrored", list(logits))]
    print(f"{args.run}: {len(test)} test images, {len(logits)} views in {seconds:.0f} s")
    print(f"{'views':<22} {'count':>5} {'accuracy':>9}")
    for label, names in rows:
        print(f"{label:<22} {len(names):>5} {accuracy(names):>9.4f}")


if __name__ == "__main__":
    from cnnlab._util import run_script

    run_script(main)
