"""Gradient verdicts: constructed vanishing, exploding and healthy networks, and the evidence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.diagnose.gradients import (
    DEAD_UNITS,
    EXPLODING,
    NONE,
    SATURATION,
    VANISHING,
    diagnose,
    diagnose_run,
)
from cnnlab.diagnose.monitor import GradientMonitor, MonitorData, load_monitor
from cnnlab.models import build_model
from cnnlab.train import CHECKPOINT_NAME, NonFiniteError, Trainer, load_checkpoint_file

from .conftest import NanGradientLinear, PoisonAfter, quick_config


def train_monitored(model, train, val, run_dir, **config):
    monitor = GradientMonitor(run_dir, every=1, figures=False)
    Trainer(model, quick_config(**config), train=train, val=val, run_dir=run_dir,
            callbacks=[monitor]).fit()
    return monitor


def test_a_deep_sigmoid_net_is_diagnosed_as_vanishing(tmp_path, halves):
    train, val = halves
    model = build_model("plain", num_classes=2, depth=12, activation="sigmoid")
    train_monitored(model, train, val, tmp_path)

    verdicts = diagnose_run(tmp_path)
    assert [v.kind for v in verdicts] == [VANISHING]
    verdict = verdicts[0]
    data = load_monitor(tmp_path)
    first, last = data.weight_layers[0], data.weight_layers[-1]
    by_hand = np.median(data.grad_norm[:, first] / data.grad_norm[:, last])
    assert verdict.evidence["first_to_last_grad_ratio"] == pytest.approx(by_hand)
    assert by_hand < 1e-3
    assert verdict.layers[0] == "stem.conv.weight"
    assert "head.2.weight" not in verdict.layers
    # Nothing in the run uses skip connections or normalisation; sigmoid is recognised.
    assert verdict.remedies[0].startswith("add residual connections")
    assert any("--activation relu --init kaiming" in r for r in verdict.remedies)


def test_an_exploding_net_stops_at_the_first_nonfinite_value_naming_the_layer(tmp_path, halves):
    train, val = halves
    model = build_model("plain", num_classes=2, depth=12, init="large")
    names = {name for name, _ in model.named_modules()}
    with pytest.raises(NonFiniteError) as stopped:
        train_monitored(model, train, val, tmp_path, lr=0.1)

    assert stopped.value.where in names and stopped.value.step <= 4
    assert f"step {stopped.value.step}" in str(stopped.value)
    verdicts = diagnose_run(tmp_path)
    assert verdicts[0].kind == EXPLODING
    assert verdicts[0].layers == [stopped.value.where]
    assert verdicts[0].evidence["nonfinite"]["step"] == stopped.value.step
    assert any("--clip-norm" in remedy for remedy in verdicts[0].remedies)


def test_the_sentinel_names_the_poisoned_layer_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                               halves):
    train, val = halves  # 128 images, batch 32: 4 steps per epoch
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), PoisonAfter(step=6), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(NonFiniteError) as stopped:
        train_monitored(model, train, val, tmp_path, epochs=3)

    assert (stopped.value.step, stopped.value.where) == (6, "2")
    assert "PoisonAfter" in str(stopped.value) and "input was finite" in str(stopped.value)
    checkpoint = load_checkpoint_file(tmp_path / CHECKPOINT_NAME)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    assert load_monitor(tmp_path).nonfinite["where"] == "2"


def test_a_nonfinite_gradient_stops_the_run_before_the_optimiser_steps(halves):
    train, _ = halves
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                          NanGradientLinear(4 * 6 * 6, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteError) as stopped:
        Trainer(model, quick_config(), train=train,
                callbacks=[GradientMonitor(None, every=1, figures=False)]).fit()

    assert stopped.value.step == 1
    # Back-propagation meets the convolution's bias first (it is nearest the output).
    assert stopped.value.where == "0.bias"
    assert "2 of 4 parameter tensors" in str(stopped.value)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_healthy_small_resnet_is_neither_vanishing_nor_exploding(tmp_path, halves):
    train, val = halves
    model = build_model("plain", num_classes=2, depth=5, residual=True, norm="batch",
                        init="kaiming")
    train_monitored(model, train, val, tmp_path, optimizer="adam", lr=1e-3, epochs=3)

    verdicts = diagnose_run(tmp_path)
    assert [v.kind for v in verdicts] == [NONE]
    ratio = verdicts[0].evidence["first_to_last_grad_ratio"]
    assert 1e-2 < ratio < 1e2
    assert f"{ratio:.3g}" in verdicts[0].summary


# ---- verdicts from constructed numbers ---------------------------------------------------

def constructed(grad_norm, *, losses=None, total=None, kinds=("relu",), dead=None,
                saturated=None, options=None, update_ratio=None) -> MonitorData:
    """MonitorData with given per-layer gradient norms [S, L] (conv weights, input first)."""
    grad_norm = np.asarray(grad_norm, dtype=np.float64)
    S, L = grad_norm.shape
    A = len(kinds)
    losses = np.full(40, 2.3) if losses is None else np.asarray(losses, dtype=np.float64)
    return MonitorData(
        steps=np.arange(1, S + 1), epochs=np.ones(S, dtype=np.int64),
        losses=np.full(S, 2.3), learning_rates=np.full(S, 0.1),
        total_grad_norm=np.sqrt((grad_norm ** 2).sum(axis=1)) if total is None else
        np.asarray(total, dtype=np.float64),
        parameters=[f"layer{i}.weight" for i in range(L)],
        parameter_shapes=[[4, 4, 3, 3]] * L, grad_norm=grad_norm,
        weight_norm=np.ones((S, L)),
        update_ratio=np.full((S, L), 1e-3) if update_ratio is None else update_ratio,
        activations=[f"act{i}" for i in range(A)], activation_kinds=list(kinds),
        activation_mean=np.zeros((S, A)), activation_std=np.ones((S, A)),
        activation_dead=np.full((S, A), np.nan if dead is None else dead),
        activation_saturated=np.full((S, A), np.nan if saturated is None else saturated),
        histogram_edges=np.tile(np.linspace(0, 1, 5), (A, 1)),
        histograms=np.full((S, A, 4), 0.25, dtype=np.float32),
        loss_steps=np.arange(1, len(losses) + 1), loss_values=losses,
        training={"lr": 0.1, "model_options": options or {}})


FALLING = np.linspace(2.3, 1.0, 40)


@pytest.mark.parametrize("first_norm, losses, kind", [
    (1e-5, FALLING, VANISHING),          # five orders of magnitude: vanishing whatever the loss
    (5e-3, np.full(40, 2.3), VANISHING),  # two and a bit, with a flat loss
    (5e-3, FALLING, NONE),               # two and a bit, but the loss falls: not enough
    (0.5, np.full(40, 2.3), NONE),       # a flat loss alone is no gradient problem
    (1e4, FALLING, EXPLODING),           # gradients grow four orders toward the input
])
def test_the_first_to_last_ratio_decides_with_the_loss(first_norm, losses, kind):
    grads = np.tile([first_norm, 0.3, 1.0], (8, 1))
    verdicts = diagnose(constructed(grads, losses=losses))
    assert [v.kind for v in verdicts] == [kind]
    assert verdicts[0].evidence["first_to_last_grad_ratio"] == pytest.approx(first_norm)


def test_growing_gradients_with_loss_spikes_are_exploding():
    grads = np.tile([1.0, 1.0, 1.0], (8, 1)) * np.logspace(0, 4, 8)[:, None]
    losses = FALLING.copy()
    losses[30] = 50.0
    verdict = diagnose(constructed(grads, losses=losses))[0]
    assert verdict.kind == EXPLODING
    assert verdict.evidence["loss_spikes"] == 1 and verdict.evidence["first_loss_spike_step"] == 31
    assert verdict.evidence["grad_norm_growth"] > 100


def test_remedies_skip_what_the_run_already_uses():
    grads = np.tile([1e-6, 1.0], (4, 1))
    plain = diagnose(constructed(grads))[0].remedies
    resnet = diagnose(constructed(grads, options={"residual": True, "norm": "batch",
                                                  "init": "kaiming"}))[0].remedies
    assert plain[0].startswith("add residual") and plain[1].startswith("add batch norm")
    assert not any("residual" in r or "--norm batch" in r for r in resnet)


def test_dead_relu_layers_are_named():
    verdicts = diagnose(constructed(np.ones((6, 3)), kinds=("relu", "relu"), dead=0.8,
                                    losses=FALLING))
    assert [v.kind for v in verdicts] == [DEAD_UNITS]
    assert verdicts[0].layers == ["act0", "act1"]
    assert "80%" in verdicts[0].summary


def test_saturated_sigmoid_layers_are_named():
    verdicts = diagnose(constructed(np.ones((6, 3)), kinds=("sigmoid",), saturated=0.9,
                                    losses=FALLING))
    assert [v.kind for v in verdicts] == [SATURATION]
    assert verdicts[0].remedies[0].startswith("use Glorot initialisation")


def test_a_single_step_larger_than_the_weights_counts_as_exploding():
    updates = np.full((6, 3), 1e-3)
    updates[2, 1] = 40.0
    verdict = diagnose(constructed(np.ones((6, 3)), losses=FALLING, update_ratio=updates))[0]
    assert verdict.kind == EXPLODING
    assert "layer1.weight by 40 times its own norm (step 3)" in verdict.summary
    assert not math.isnan(verdict.evidence["largest_update_ratio"])


def test_a_fading_forward_signal_with_a_flat_loss_is_vanishing_too():
    data = constructed(np.ones((6, 3)), kinds=("relu", "relu", "relu"))
    data.activation_std[:] = [1.0, 0.1, 0.004]  # the last layer varies 250 times less
    verdict = diagnose(data)[0]
    assert verdict.kind == VANISHING
    assert verdict.layers == ["act2"]
    assert verdict.evidence["activation_std_ratio"] == pytest.approx(0.004)
    assert "forward signal fades" in verdict.summary


def test_no_pathology_but_a_flat_loss_says_so_and_suggests_what_else_to_try():
    verdict = diagnose(constructed(np.ones((6, 3))))[0]
    assert verdict.kind == NONE
    assert "yet the loss did not fall" in verdict.summary
    assert verdict.remedies[0].startswith("try a learning rate ten times lower")


def test_the_deferred_sentinel_used_on_cuda_reports_the_first_bad_step(halves, monkeypatch):
    # On CUDA the checks stay on the device and are read every cuda_check_every steps; here
    # the CPU plays the GPU, and the trainer's own per-step loss check is switched off.
    train, _ = halves
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                          NanGradientLinear(4 * 6 * 6, 2))
    monitor = GradientMonitor(None, every=1, figures=False, cuda_check_every=3)
    monkeypatch.setattr(monitor, "_deferred", lambda trainer: True)
    trainer = Trainer(model, quick_config(), train=train, callbacks=[monitor])
    trainer._check_nonfinite_every = 10**9
    with pytest.raises(NonFiniteError) as stopped:
        trainer.fit()
    assert stopped.value.step == 1
    assert "first at step 1 (seen at step 3)" in str(stopped.value)


class OverflowingLogits(nn.Module):
    """Finite logits (3e38, -3e38) for every image: cross-entropy for class 1 overflows to inf."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, 1)

    def forward(self, x):
        one = self.linear(x.flatten(1)) * 0 + 1  # depends on the parameters, always 1
        return torch.cat([one, -one], dim=1) * 3e38


def test_a_loss_the_trainer_stops_on_is_recorded_by_the_monitor(tmp_path, halves):
    train, val = halves
    model = OverflowingLogits()
    with pytest.raises(NonFiniteError) as stopped:
        train_monitored(model, train, val, tmp_path)

    # The monitor's own checks saw finite outputs; the trainer's loss check stopped the run.
    assert stopped.value.where == "loss" and stopped.value.step == 1
    data = load_monitor(tmp_path)
    assert data.nonfinite["kind"] == "loss" and data.nonfinite["step"] == 1
    verdicts = diagnose_run(tmp_path)
    assert verdicts[0].kind == EXPLODING
    assert verdicts[0].evidence["nonfinite"]["step"] == 1


def test_an_interrupted_run_detaches_the_monitor_and_keeps_its_samples(tmp_path, halves):
    train, val = halves

    class Interrupt(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = build_model("plain", num_classes=2, depth=4), 0

        def forward(self, x):
            self.calls += 1
            if self.training and self.calls == 3:
                raise KeyboardInterrupt
            return self.inner(x)

    model = Interrupt()
    monitor = GradientMonitor(tmp_path, every=1, figures=False)
    with pytest.raises(KeyboardInterrupt):
        Trainer(model, quick_config(), train=train, val=val, run_dir=tmp_path,
                callbacks=[monitor]).fit()
    assert load_monitor(tmp_path).steps.tolist() == [1, 2]
    # No hook is left on the model: a forward pass after the stop records nothing.
    model.eval()
    model(train.inputs[:4].float())
    assert monitor.data().steps.tolist() == [1, 2]
    assert not monitor._hooks
