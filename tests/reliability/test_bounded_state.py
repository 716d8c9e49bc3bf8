"""Long runs keep bounded state: memory does not grow across many short epochs."""

import torch

from cnnlab.data import ArrayDataset
from cnnlab.models import build_model
from cnnlab.train import Callback, Trainer, TrainConfig


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def test_memory_does_not_grow_over_many_epochs():
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randint(0, 255, (64, 3, 16, 16), generator=g, dtype=torch.uint8),
                        torch.randint(0, 2, (64,), generator=g), ["a", "b"],
                        mean=(0.5,) * 3, std=(0.25,) * 3)
    samples = []

    class Measure(Callback):
        def on_epoch_end(self, trainer, epoch, row):
            samples.append(resident_bytes())

    model = build_model("small_cnn", num_classes=2, widths=(8,), depth=1)
    Trainer(model, TrainConfig(epochs=60, batch_size=16, fit_subset=16, threads=1), train=data,
            val=data, callbacks=[Measure()]).fit()
    settled = samples[10]
    growth_mib = (max(samples[10:]) - settled) / 2**20
    assert growth_mib < 8, f"resident memory grew {growth_mib:.1f} MiB over 50 epochs"
