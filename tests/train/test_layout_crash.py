"""The layouts cnnlab chooses survive the case that crashes oneDNN in channels_last.

With two or more threads, torch 2.14.1's oneDNN (3.12) corrupts the heap in the
weight gradient of a 1x1 stride-2 convolution with 3 or 8 input channels in
channels_last for some batch sizes (7, 13 and 33 of the sizes tried), and the
process aborts ("double free or corruption"). fast_resnet of width 8 has that
convolution in its first downsampling shortcut, and 45 training images in
batches of 32 end each epoch on a batch of 13. So the trainer defaults to
NCHW, while the fast preset keeps channels_last: its network (pool_resnet) has
no 1x1 convolutions, and its 3-channel stem is frozen (no weight gradient).
Each run is a child process, so that an abort fails its test instead of ending
the test session. ``SCRIPT`` with the argument ``channels_last`` shows whether
an installed torch still has the bug (it aborts where it does).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from cnnlab.data import ArrayDataset
    from cnnlab.models import build_model
    from cnnlab.train import Trainer, TrainConfig

    options = {"channels_last": True} if sys.argv[1] == "channels_last" else {}
    g = torch.Generator().manual_seed(0)
    train = ArrayDataset(torch.randint(0, 256, (45, 3, 32, 32), dtype=torch.uint8, generator=g),
                         torch.randint(0, 5, (45,), generator=g), list("abcde"))
    config = TrainConfig(epochs=8, batch_size=32, lr=1e-3, device="cpu", threads=2,
                         fit_subset=0, **options)
    model = build_model("fast_resnet", num_classes=5, width=8)
    Trainer(model, config, train=train).fit()
    print("trained")
""")


# The fast preset's network and layout, one step on each of the batch sizes that crash the
# narrow network, and on the last batch of an epoch of all 50,000 CIFAR-10 training images.
FAST_SCRIPT = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from cnnlab.models import build_model
    from cnnlab.runs.fast import FAST_RECIPE

    assert FAST_RECIPE.channels_last
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build_model(FAST_RECIPE.model, **FAST_RECIPE.model_options)
    model = model.to(memory_format=torch.channels_last)
    for _ in range(3):
        for size in (7, 13, 33, 50_000 % FAST_RECIPE.batch_size):
            x = torch.randn(size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
            F.cross_entropy(model(x), torch.randint(0, 10, (size,))).backward()
    print("trained")
""")


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=300)



@pytest.mark.slow
def test_the_default_layout_trains_a_narrow_resnet_on_an_odd_last_batch():
    finished = _run(SCRIPT, "default")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip().endswith("trained")


@pytest.mark.slow
def test_the_fast_preset_network_survives_odd_batches_in_channels_last():
    finished = _run(FAST_SCRIPT)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert finished.stdout.strip().endswith("trained")
