"""The gradient monitor: what it records, when it samples, how it stays cheap and bounded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.diagnose.monitor import (
    GradientMonitor,
    _ActivationProbe,
    load_monitor,
)
from cnnlab.models import build_model
from cnnlab.train import Callback, Trainer

from .conftest import quick_config


def small_plain(**options) -> nn.Module:
    options = {"depth": 4, "num_classes": 2, **options}
    return build_model("plain", **options)


def test_every_parameter_and_activation_is_recorded_in_forward_order(tmp_path, halves):
    train, val = halves
    model = small_plain(norm="batch", init="kaiming")
    monitor = GradientMonitor(None, every=1)
    Trainer(model, quick_config(), train=train, val=val, callbacks=[monitor]).fit()

    data = monitor.data()
    steps_per_run = 2 * math.ceil(len(train) / 32)
    assert data.steps.tolist() == list(range(1, steps_per_run + 1))
    assert data.parameters[0].startswith("stem.conv") and data.parameters[-1] == "head.2.bias"
    assert sorted(data.parameters) == sorted(n for n, _ in model.named_parameters())
    assert data.activations == ["stem.act", "blocks.0.act", "blocks.1.act", "blocks.2.act"]
    assert data.grad_norm.shape == (steps_per_run, len(data.parameters))
    assert np.all(data.grad_norm > 0) and np.all(data.update_ratio > 0)
    assert data.loss_steps.tolist() == list(range(1, steps_per_run + 1))
    np.testing.assert_allclose(data.histograms.sum(axis=2), 1.0, atol=1e-5)


def test_the_files_read_back_as_recorded(tmp_path, halves):
    train, val = halves
    monitor = GradientMonitor(tmp_path, every=2)
    Trainer(small_plain(), quick_config(), train=train, val=val, callbacks=[monitor]).fit()

    stored, live = load_monitor(tmp_path), monitor.data()
    assert stored.parameters == live.parameters and stored.activations == live.activations
    np.testing.assert_array_equal(stored.steps, live.steps)
    np.testing.assert_allclose(stored.grad_norm, live.grad_norm, rtol=1e-5)
    np.testing.assert_allclose(stored.update_ratio, live.update_ratio, rtol=1e-5)
    np.testing.assert_allclose(stored.histograms, live.histograms, rtol=1e-6)
    for name in ("gradient_heatmap.png", "update_ratios.png", "activation_histograms.png",
                 "verdicts.json"):
        assert (tmp_path / "monitor" / name).exists(), name


def test_update_ratio_equals_the_first_sgd_step_computed_by_hand(tmp_path, halves):
    # With Nesterov momentum mu and no weight decay the first step is lr * (1 + mu) * grad.
    train, _ = halves
    lr, momentum = 0.01, 0.9
    monitor = GradientMonitor(None, every=1, activations=False)
    Trainer(small_plain(), quick_config(epochs=1, lr=lr, momentum=momentum), train=train,
            callbacks=[monitor]).fit()
    data = monitor.data()
    expected = lr * (1 + momentum) * data.grad_norm[0] / data.weight_norm[0]
    np.testing.assert_allclose(data.update_ratio[0], expected, rtol=1e-4)


@pytest.mark.parametrize("kind, values, dead, saturated", [
    # 4 channels, channel 0 and 2 zero everywhere: half the units are dead.
    ("relu", torch.tensor([0.0, 1.0, 0.0, 2.0]).view(1, 4, 1, 1).expand(8, 4, 3, 3), 0.5,
     None),
    ("relu", torch.ones(8, 4, 3, 3), 0.0, None),
    # Sigmoid: 3 of 10 values beyond 0.99 or below 0.01.
    ("sigmoid", torch.tensor([0.001, 0.5, 0.5, 0.995, 0.3, 0.7, 0.6, 0.4, 0.999, 0.5]), None,
     0.3),
    ("tanh", torch.tensor([-0.999, 0.0, 0.5, 0.995]), None, 0.5),
])
def test_dead_and_saturated_fractions_match_a_count_by_hand(kind, values, dead, saturated):
    module = {"relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh()}[kind]
    probe = _ActivationProbe("layer", module, kind, bins=8)
    probe.record(values.contiguous())
    mean, _, dead_fraction, saturated_fraction = probe.take()[:4].tolist()
    assert mean == pytest.approx(values.mean().item(), rel=1e-5)
    if dead is None:
        assert math.isnan(dead_fraction)
    else:
        assert dead_fraction == pytest.approx(dead)
    if saturated is None:
        assert math.isnan(saturated_fraction)
    else:
        assert saturated_fraction == pytest.approx(saturated)


@pytest.mark.parametrize("step, check, sample, target, gap", [
    (0.10, 0.0, 0.05, 0.10, 5),      # 0.05 s per sample, 0.01 s allowed per step
    (0.10, 0.0, 0.001, 0.10, 1),     # sampling is nearly free: every step
    (0.10, 0.0, 0.20, 0.05, 40),
    (0.10, 0.005, 0.055, 0.10, 10),  # the sentinel takes half of the budget on every step
    (0.10, 0.02, 0.05, 0.10, 10_000),  # the sentinel alone exceeds it: sample (almost) never
])
def test_the_sampling_gap_keeps_the_overhead_at_the_target(step, check, sample, target, gap):
    monitor = GradientMonitor(None, target_overhead=target)
    monitor.step_seconds, monitor.check_seconds, monitor.sample_seconds = step, check, sample
    assert monitor.current_gap() == gap
    if check < target * step:
        assert monitor.estimated_overhead() <= target + 1e-9


def test_before_timing_the_gap_is_short_and_a_fixed_every_wins():
    assert GradientMonitor(None).current_gap() == 4
    fixed = GradientMonitor(None, every=7)
    fixed.step_seconds, fixed.check_seconds, fixed.sample_seconds = 0.1, 0.0, 10.0
    assert fixed.current_gap() == 7


def test_automatic_sampling_measures_its_cost_during_training(halves):
    train, _ = halves
    monitor = GradientMonitor(None)
    Trainer(small_plain(), quick_config(epochs=3), train=train, callbacks=[monitor]).fit()
    steps = monitor.data().steps
    assert steps[0] == 1 and steps[1] == 5  # the first sample, then four timed plain steps
    assert monitor.step_seconds > 0 and monitor.sample_seconds > monitor.check_seconds > 0
    assert monitor.gap_history[0] == (1, 4)


def test_memory_stays_bounded_by_thinning_out_old_samples(halves):
    train, _ = halves
    monitor = GradientMonitor(None, every=1, max_samples=16)
    Trainer(small_plain(), quick_config(epochs=12), train=train, callbacks=[monitor]).fit()
    steps = monitor.data().steps
    assert len(steps) <= 17
    assert steps[0] == 1 and steps[-1] > 40  # the whole run is still covered
    assert monitor.current_gap() >= 2


class HookCounter(Callback):
    """Counts forward hooks on the activation modules at every step's backward."""

    def __init__(self, modules):
        self.modules, self.counts = modules, {}

    def on_after_backward(self, trainer, step):
        self.counts[step] = sum(len(m._forward_hooks) for m in self.modules)


def test_activation_hooks_are_attached_only_for_sampled_steps(halves):
    train, _ = halves
    model = small_plain()
    activations = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    counter = HookCounter(activations)
    # The counter runs before the monitor removes the hooks of a sampled step.
    monitor = GradientMonitor(None, every=3)
    Trainer(model, quick_config(epochs=2), train=train, callbacks=[counter, monitor]).fit()
    sampled = set(monitor.data().steps.tolist())
    assert sampled == {1, 4, 7}
    for step, count in counter.counts.items():
        assert (count > 0) == (step in sampled), step
    assert all(len(m._forward_hooks) == 0 for m in activations)


def test_bad_settings_are_refused_with_the_value():
    with pytest.raises(CnnlabError, match="every must be >= 1 step, got 0"):
        GradientMonitor(None, every=0)
    with pytest.raises(CnnlabError, match="target_overhead"):
        GradientMonitor(None, target_overhead=1.5)


def test_reading_a_run_without_monitor_files_says_how_to_get_them(tmp_path):
    with pytest.raises(CnnlabError, match="--monitor gradients"):
        load_monitor(tmp_path)


def test_a_model_without_activation_modules_has_its_layer_outputs_watched(halves):
    train, _ = halves

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    monitor = GradientMonitor(None, every=1)
    Trainer(Functional(), quick_config(epochs=1), train=train, callbacks=[monitor]).fit()
    data = monitor.data()
    assert data.activations == ["conv", "head"] and data.activation_kinds == ["linear"] * 2
    assert np.isnan(data.activation_dead).all()


def test_a_resumed_run_keeps_the_earlier_samples(tmp_path, halves):
    train, val = halves
    first = GradientMonitor(tmp_path, every=1, figures=False)
    Trainer(small_plain(), quick_config(epochs=1), train=train, val=val, run_dir=tmp_path,
            callbacks=[first]).fit()
    before = load_monitor(tmp_path).steps.tolist()

    second = GradientMonitor(tmp_path, every=1, figures=False)
    Trainer(small_plain(), quick_config(epochs=2), train=train, val=val, run_dir=tmp_path,
            callbacks=[second]).fit(resume=True)
    after = load_monitor(tmp_path).steps.tolist()
    assert after[:len(before)] == before and after == list(range(1, 2 * len(before) + 1))
