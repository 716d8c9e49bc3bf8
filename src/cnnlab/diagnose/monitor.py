"""Watch gradients and activations while a model trains; stop at the first non-finite value.

:class:`GradientMonitor` is a trainer callback. On *sampled* steps (every
k-th) it records

- per parameter tensor: the gradient norm (before any clipping), the weight
  norm, and the update-to-weight ratio ``||w_after - w_before|| / ||w_before||``
  of the optimiser step, measured by comparing the weights before and after
  the step;
- per activation module (ReLU, Sigmoid, Tanh, GELU, ...): the mean, the
  standard deviation, the fraction of dead units (ReLU channels that output
  zero for every sample and position of the batch), the fraction of
  saturated units (sigmoid outputs below 0.01 or above 0.99, tanh outputs
  beyond +-0.99) and a small histogram.

k is chosen so that monitoring costs about ``target_overhead`` (10%) of the
training time: the monitor times its sampled steps against ordinary ones
and widens the gap when sampling costs more. Forward hooks are attached
only for sampled steps, so the other steps run the plain model.

On every step it also checks, cheaply, that the model's output and every
gradient are finite (the trainer already checks the loss). The first NaN or
Inf stops the run with :class:`cnnlab.train.NonFiniteError` naming the step
and the layer where it appeared (found by replaying that forward pass layer
by layer) or the parameter whose gradient it reached first. The optimiser
has not stepped with the bad gradient and the trainer keeps the last good
checkpoint.

Files, in ``<run_dir>/monitor/`` (rewritten atomically at each epoch end):

- ``meta.json``: parameter and activation names in forward order (input to
  output), shapes, kinds, sampling and overhead, the non-finite event if any;
- ``samples.csv``: per sampled step: step, epoch, loss, learning rate, total
  gradient norm;
- ``grad_norm.csv``, ``weight_norm.csv``, ``update_ratio.csv``: one row per
  sampled step, one column per parameter tensor;
- ``activation_mean.csv``, ``activation_std.csv``, ``activation_dead.csv``,
  ``activation_saturated.csv``: one column per activation module;
- ``activation_histograms.npz``: ``steps [S]``, ``edges [A, bins+1]``,
  ``fractions [S, A, bins]`` (values outside the edges count in the end bins);
- ``loss.csv``: the training loss of every step.

Memory stays bounded: past ``max_samples`` rows the monitor keeps every
other row and doubles its smallest gap, so a long run is covered evenly.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab._util import CnnlabError, atomic_path, write_json_atomic
from cnnlab.train import Callback, NonFiniteError

log = logging.getLogger(__name__)

MONITOR_FOLDER = "monitor"
FORMAT_VERSION = 1

# Most specific class first: ReLU6 is a Hardtanh, Hardsigmoid is not a Sigmoid.
ACTIVATION_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ReLU6, "relu6"), (nn.ReLU, "relu"), (nn.LeakyReLU, "leaky_relu"), (nn.PReLU, "prelu"),
    (nn.GELU, "gelu"), (nn.SiLU, "silu"), (nn.Mish, "mish"), (nn.Hardswish, "hardswish"),
    (nn.ELU, "elu"), (nn.SELU, "selu"), (nn.CELU, "celu"), (nn.Softplus, "softplus"),
    (nn.Sigmoid, "sigmoid"), (nn.Hardsigmoid, "sigmoid"), (nn.Tanh, "tanh"),
    (nn.Hardtanh, "tanh"),
)
DEAD_KINDS = ("relu", "relu6")  # units whose output is exactly zero pass no gradient
SATURATING_KINDS = ("sigmoid", "tanh")
SIGMOID_SATURATION = 0.01  # outputs below 0.01 or above 0.99: derivative below 0.0099
TANH_SATURATION = 0.99  # |tanh| above 0.99: derivative below 0.02

STAT_MEAN, STAT_STD, STAT_DEAD, STAT_SATURATED = range(4)
HISTOGRAM_VALUES = 16_384  # activation values per layer and sample that enter the histogram
FIRST_SAMPLE_GAP = 4  # ordinary steps after the first measured sample, to time them
MAX_GAP = 10_000
FLUSH_SECONDS = 60.0  # also write the files mid-epoch at most this often


@dataclass
class MonitorData:
    """What a monitor recorded: arrays with one row per sampled step.

    Columns of the per-parameter arrays follow ``parameters`` and those of
    the per-activation arrays follow ``activations``, both in the order the
    forward pass reaches them (input to output).
    """

    steps: np.ndarray  # [S] global step of each sample (1-based)
    epochs: np.ndarray  # [S]
    losses: np.ndarray  # [S] training loss of the sampled batch
    learning_rates: np.ndarray  # [S]
    total_grad_norm: np.ndarray  # [S] global gradient norm before clipping
    parameters: list[str]
    parameter_shapes: list[list[int]]
    grad_norm: np.ndarray  # [S, P]
    weight_norm: np.ndarray  # [S, P] before the step
    update_ratio: np.ndarray  # [S, P] ||w_after - w_before|| / ||w_before||
    activations: list[str]
    activation_kinds: list[str]
    activation_mean: np.ndarray  # [S, A]
    activation_std: np.ndarray  # [S, A]
    activation_dead: np.ndarray  # [S, A] NaN where the activation cannot die
    activation_saturated: np.ndarray  # [S, A] NaN where it cannot saturate
    histogram_edges: np.ndarray  # [A, bins + 1]
    histograms: np.ndarray  # [S, A, bins] fractions of the sampled values
    loss_steps: np.ndarray  # [T] every training step (pairs averaged past max_loss_points)
    loss_values: np.ndarray  # [T]
    nonfinite: dict[str, Any] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def weight_layers(self) -> list[int]:
        """Indices of the conv and linear weights (tensors of 2+ dimensions), input to output."""
        return [i for i, shape in enumerate(self.parameter_shapes) if len(shape) >= 2]

    def __len__(self) -> int:
        return len(self.steps)


class _ActivationProbe:
    """Statistics of one activation module's output on the sampled forward pass."""

    def __init__(self, name: str, module: nn.Module, kind: str, bins: int) -> None:
        self.name, self.module, self.kind, self.bins = name, module, kind, bins
        self.edges: tuple[float, float] | None = self._fixed_edges()
        self.calls: list[torch.Tensor] = []

    def _fixed_edges(self) -> tuple[float, float] | None:
        if self.kind == "sigmoid":
            return (0.0, 1.0)
        if self.kind == "tanh":
            low = float(getattr(self.module, "min_val", -1.0))
            return (low, float(getattr(self.module, "max_val", 1.0)))
        return None

    @torch.no_grad()
    def record(self, output: torch.Tensor) -> None:
        values = output.detach().float()
        # Statistics other than the mean and dead units come from a strided subsample of
        # HISTOGRAM_VALUES values: a full-tensor std costs more than the convolution before it.
        flat = values.reshape(-1)
        if flat.numel() > HISTOGRAM_VALUES:
            flat = flat[:: flat.numel() // HISTOGRAM_VALUES][:HISTOGRAM_VALUES]
        mean = values.mean()
        std = flat.std() if flat.numel() > 1 else values.new_zeros(())
        nan = values.new_full((), math.nan)
        dead = saturated = nan
        if self.kind in DEAD_KINDS and values.dim() >= 1:
            # A unit is a channel of a feature map (dim 1) or a feature of a vector; ReLU
            # outputs are never negative, so a zero maximum means zero everywhere.
            dims = [d for d in range(values.dim()) if d != 1] if values.dim() >= 2 else []
            peak = values.amax(dim=dims) if dims else values
            dead = (peak <= 0).float().mean()
        if self.kind == "sigmoid":
            saturated = ((flat < SIGMOID_SATURATION) | (flat > 1 - SIGMOID_SATURATION)
                         ).float().mean()
        elif self.kind == "tanh":
            saturated = (flat.abs() > TANH_SATURATION).float().mean()
        flat = torch.nan_to_num(flat, nan=0.0, posinf=3e38, neginf=-3e38)
        if self.edges is None:
            self.edges = self._edges_from(flat)
        low, high = self.edges
        counts = torch.histc(flat.clamp(low, high), self.bins, low, high)
        counts = counts / max(1, flat.numel())
        self.calls.append(torch.cat([torch.stack([mean, std, dead, saturated]), counts]))

    def _edges_from(self, values: torch.Tensor) -> tuple[float, float]:
        # Fixed at the first sample, with room to grow threefold; later values beyond the
        # range count in the end bins, so a drift outwards shows as a filling edge bin.
        low_q, high_q = torch.quantile(values, torch.tensor([0.001, 0.999],
                                                            device=values.device)).tolist()
        low = 0.0 if self.kind in DEAD_KINDS else min(0.0, 3.0 * low_q)
        high = max(3.0 * high_q, 0.0)
        if not high > low:
            high = low + 1.0
        return (low, high)

    def take(self) -> torch.Tensor:
        """The sample's statistics (averaged when the module ran more than once) and reset."""
        if not self.calls:
            row = torch.full((4 + self.bins,), math.nan)
        else:
            row = torch.stack(self.calls).mean(dim=0)
        self.calls = []
        return row


class GradientMonitor(Callback):
    """Record gradient, weight, update and activation statistics; stop at the first NaN/Inf.

    ``run_dir``: where the ``monitor/`` folder goes (``None``: the trainer's
    run directory, or memory only; read it with :meth:`data`). ``every``:
    sample every this many steps; ``None`` chooses the gap so that
    monitoring costs about ``target_overhead`` of the training time (after
    timing a first few steps). ``activations``: also hook activation modules
    (when a model has none, the outputs of its conv and linear layers are
    watched). ``check_nonfinite``: the cheap per-step sentinel. On CUDA the
    sentinel synchronises only every ``cuda_check_every`` steps and at the
    last step of each epoch (before the checkpoint is written); it then
    reports the first bad step, and the parameter from the step it stopped
    at (``cuda_check_every=1`` checks at once and names the layer, as on the
    CPU). Under float16 loss scaling gradients are reported unscaled and
    only the output is checked, since the scaler handles Inf gradients.

    At the end of the run it writes figures next to its files, adds the
    gradient verdicts to the run summary (``gradient_verdicts``) and logs
    any problem it found.

    Example::

        monitor = GradientMonitor("runs/deep")
        Trainer(model, config, train=train, val=val, callbacks=[monitor]).fit()
        verdicts = cnnlab.diagnose.diagnose_run("runs/deep")
    """

    def __init__(self, run_dir: str | Path | None = None, every: int | None = None, *,
                 target_overhead: float = 0.10, activations: bool = True,
                 histogram_bins: int = 32, check_nonfinite: bool = True,
                 max_samples: int = 2000, max_loss_points: int = 20_000,
                 cuda_check_every: int = 25, figures: bool = True,
                 verdicts: bool = True) -> None:
        if every is not None and every < 1:
            raise CnnlabError(f"GradientMonitor every must be >= 1 step, got {every}")
        if not 0 < target_overhead < 1:
            raise CnnlabError(f"target_overhead is a fraction of training time in (0, 1), got "
                              f"{target_overhead}")
        if max_samples < 16:
            raise CnnlabError(f"max_samples must be >= 16, got {max_samples}")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.every = every
        self.target_overhead = target_overhead
        self.watch_activations = activations
        self.histogram_bins = histogram_bins
        self.check_nonfinite = check_nonfinite
        self.max_samples = max_samples
        self.max_loss_points = max_loss_points
        self.cuda_check_every = cuda_check_every
        self.write_figures = figures
        self.add_verdicts = verdicts

        self.rows: list[dict[str, Any]] = []
        self.loss_steps: list[int] = []
        self.loss_values: list[float] = []
        self._pending_losses: list[tuple[int, torch.Tensor]] = []
        self.nonfinite: dict[str, Any] | None = None
        # Medians of recent timings, in seconds: a training step without the monitor's own
        # work, the monitor's work on an ordinary step (the sentinel) and on a sampled step.
        self.step_seconds: float | None = None
        self.check_seconds: float | None = None
        self.sample_seconds: float | None = None
        self.flush_seconds = 0.0
        self._step_times: deque[float] = deque(maxlen=32)
        self._check_times: deque[float] = deque(maxlen=32)
        self._sample_times: deque[float] = deque(maxlen=8)
        self._spent = 0.0  # the monitor's own seconds in the current step
        self.gap_history: list[tuple[int, int]] = []  # (step, gap chosen there)
        self._min_gap = every or 1
        self._next_sample = 1
        self._samples_seen = 0
        self._last_time: float | None = None
        self._last_flush = time.perf_counter()
        self._hooks: list[Any] = []
        self._root_hook = None
        self._probes: list[_ActivationProbe] = []
        self._order: dict[int, int] = {}  # id(module) -> position in the forward pass
        self._parameter_names: list[str] = []
        self._parameters: list[nn.Parameter] = []
        self._before: list[torch.Tensor] | None = None
        self._pending_row: dict[str, Any] | None = None
        self._bad_steps: dict[str, torch.Tensor] = {}  # deferred CUDA checks: first bad step
        self._trainer = None
        self._clock = time.perf_counter  # process CPU time on the CPU (see on_fit_start)

    # ---- trainer hooks -------------------------------------------------------------------

    def on_fit_start(self, trainer) -> None:
        self._trainer = trainer
        # On the CPU the monitor weighs its work in CPU seconds, which other jobs on a shared
        # machine do not inflate; on a GPU the wall clock is what training spends.
        self._clock = time.process_time if trainer.device.type == "cpu" else time.perf_counter
        if self.run_dir is None and trainer.run_dir is not None:
            self.run_dir = Path(trainer.run_dir)
        model = trainer.model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._parameter_names = [n for n, _ in named]
        self._parameters = [p for _, p in named]
        self._probes = self._make_probes(model) if self.watch_activations else []
        if self.check_nonfinite:
            self._root_hook = model.register_forward_hook(self._check_output)
        if trainer.global_step > 0:
            self._resume_from_files(trainer.global_step)
        self._next_sample = max(self._next_sample, trainer.global_step + 1)
        if self._next_sample == trainer.global_step + 1:
            self._attach_hooks()

    def on_epoch_start(self, trainer, epoch: int) -> None:
        # Time steps from here: the evaluation between epochs is not a training step.
        self._last_time = self._clock()

    def on_after_backward(self, trainer, step: int) -> None:
        started = self._clock()
        grads = [p.grad for p in self._parameters]
        if self.check_nonfinite:
            self._check_gradients(trainer, step, grads)
        if step == self._next_sample:
            self._detach_hooks()
            self._record_parameters(trainer, step, grads)
        self._spent += self._clock() - started

    def on_step_end(self, trainer, step: int, loss: torch.Tensor) -> None:
        started = self._clock()
        self._pending_losses.append((step, loss.detach()))
        if len(self._pending_losses) >= 1024:
            self._drain_losses()  # one host transfer per thousand steps keeps memory flat
        sampled = step == self._next_sample and self._pending_row is not None
        if sampled:
            self._finish_sample(trainer, step, loss)
        if self.check_nonfinite and self._deferred(trainer):
            last_of_epoch = step % trainer.steps_per_epoch == 0
            if last_of_epoch or step % self.cuda_check_every == 0:
                self._raise_if_bad_step(trainer)

        if sampled and time.perf_counter() - self._last_flush > FLUSH_SECONDS:
            self.flush()
        now = self._clock()
        self._spent += now - started
        if self._last_time is not None:
            self._time_step(now - self._last_time, self._spent, sampled)
        if sampled:
            self._schedule_next(step)
        self._spent, self._last_time = 0.0, now
        if self._next_sample == step + 1:
            self._attach_hooks()
            self._spent += self._clock() - now  # part of the next step, the sampled one

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        self.flush()

    def on_fit_end(self, trainer, result) -> None:
        self._detach_hooks()
        self._remove_root_hook()
        self.flush()
        self._conclude(result.summary, result.history)

    def on_fit_stopped(self, trainer, error: BaseException) -> None:
        """Close the files when the trainer stops the run (its own loss check, or Ctrl-C).

        A stop the monitor raised itself has already been recorded and concluded. A
        non-finite loss the trainer caught (finite logits, but a loss that overflowed)
        is recorded here the same way, so ``cnnlab diagnose`` sees where it happened.
        """
        self._detach_hooks()
        self._remove_root_hook()
        if isinstance(error, NonFiniteError):
            if self.nonfinite is not None:
                return  # raised by this monitor's sentinel, which wrote everything already
            self.nonfinite = {"step": error.step, "where": error.where, "kind": "loss",
                              "message": str(error)}
            self.flush()
            self._conclude(None, trainer.history)
            return
        self.flush()  # interrupted: keep what was sampled; resuming appends to it

    # ---- sampling schedule ---------------------------------------------------------------

    def _time_step(self, wall_seconds: float, own_seconds: float, sampled: bool) -> None:
        self._step_times.append(max(0.0, wall_seconds - own_seconds))
        self.step_seconds = statistics.median(self._step_times)
        if not sampled:
            self._check_times.append(own_seconds)
            self.check_seconds = statistics.median(self._check_times)
            return
        self._samples_seen += 1
        if self._samples_seen > 1:  # the first sample pays one-time setup costs
            self._sample_times.append(own_seconds)
            self.sample_seconds = statistics.median(self._sample_times)

    def current_gap(self) -> int:
        """Steps between samples that keeps the measured overhead near the target.

        The monitor times its own work (in its callbacks and hooks) rather than whole
        steps, which on a shared machine vary more than the work being measured.
        """
        if self.every is not None:
            return max(self.every, self._min_gap)
        if self.sample_seconds is None or not self.step_seconds:
            return max(FIRST_SAMPLE_GAP, self._min_gap)
        check = self.check_seconds or 0.0
        extra = max(0.0, self.sample_seconds - check)
        budget = self.target_overhead * self.step_seconds - check
        if budget <= 0:  # the per-step sentinel alone uses the whole budget
            return max(MAX_GAP, self._min_gap)
        return min(MAX_GAP, max(1, self._min_gap, math.ceil(extra / budget)))

    def _schedule_next(self, step: int) -> None:
        gap = self.current_gap()
        if not self.gap_history or self.gap_history[-1][1] != gap:
            self.gap_history.append((step, gap))
        self._next_sample = step + gap

    def estimated_overhead(self) -> float | None:
        """The monitor's measured share of training time at the current gap (a fraction)."""
        if self.sample_seconds is None or not self.step_seconds:
            return None
        check = self.check_seconds or 0.0
        extra = max(0.0, self.sample_seconds - check)
        return (check + extra / self.current_gap()) / self.step_seconds

    # ---- activation hooks ----------------------------------------------------------------

    def _make_probes(self, model: nn.Module) -> list[_ActivationProbe]:
        probes = []
        for name, module in model.named_modules():
            kind = activation_kind(module)
            if kind is not None:
                probes.append(_ActivationProbe(name, module, kind, self.histogram_bins))
        if not probes:
            # No activation modules (functional activations): watch conv/linear outputs.
            for name, module in model.named_modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                    probes.append(_ActivationProbe(name, module, "linear", self.histogram_bins))
        return probes

    def _attach_hooks(self) -> None:
        if self._hooks or self._trainer is None:
            return
        model = self._trainer.model
        first = not self._order
        for probe in self._probes:
            self._hooks.append(probe.module.register_forward_hook(self._probe_hook(probe)))
        if first:
            # Learn the forward order once: modules finish in the order the input reaches them.
            for module in model.modules():
                if any(True for _ in module.parameters(recurse=False)) or \
                        activation_kind(module) is not None:
                    self._hooks.append(module.register_forward_hook(self._order_hook))

    def _probe_hook(self, probe: _ActivationProbe):
        def hook(module, inputs, output):
            if module.training and torch.is_grad_enabled() and isinstance(output, torch.Tensor):
                started = self._clock()
                probe.record(output)
                self._spent += self._clock() - started
        return hook

    def _order_hook(self, module, inputs, output) -> None:
        if module.training:
            self._order.setdefault(id(module), len(self._order))

    def _detach_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _remove_root_hook(self) -> None:
        if self._root_hook is not None:
            self._root_hook.remove()
            self._root_hook = None

    # ---- the samples ---------------------------------------------------------------------

    @torch.no_grad()
    def _record_parameters(self, trainer, step: int, grads: list[torch.Tensor | None]) -> None:
        if self._pending_row is None and not self.rows:
            self._sort_by_forward_order(trainer.model)
            grads = [p.grad for p in self._parameters]
        weights = [p.detach() for p in self._parameters]
        zero = torch.zeros((), device=trainer.device, dtype=torch.float64)
        grad_norm = torch.stack([
            torch.linalg.vector_norm(g, dtype=torch.float64) if g is not None else zero * math.nan
            for g in grads])
        if trainer.scaler.is_enabled():  # float16 loss scaling: report the true gradient
            grad_norm = grad_norm / trainer.scaler.get_scale()
        weight_norm = torch.stack([torch.linalg.vector_norm(w, dtype=torch.float64)
                                   for w in weights])
        if self._before is None:
            self._before = [torch.empty_like(w) for w in weights]
        torch._foreach_copy_(self._before, weights)
        self._pending_row = {"grad_norm": grad_norm, "weight_norm": weight_norm}

    @torch.no_grad()
    def _finish_sample(self, trainer, step: int, loss: torch.Tensor) -> None:
        pending, self._pending_row = self._pending_row, None
        weights = [p.detach() for p in self._parameters]
        deltas = torch._foreach_sub(weights, self._before)
        update_norm = torch.stack([torch.linalg.vector_norm(d, dtype=torch.float64)
                                   for d in deltas])
        update_ratio = update_norm / pending["weight_norm"].clamp_min(1e-30)
        activations = torch.stack([probe.take().to(trainer.device) for probe in self._probes]) \
            if self._probes else torch.zeros((0, 4 + self.histogram_bins), device=trainer.device)
        # One transfer to the host per sample.
        packed = torch.cat([pending["grad_norm"], pending["weight_norm"], update_ratio,
                            activations.double().reshape(-1), loss.detach().double().view(1)])
        values = packed.cpu().numpy()
        P = len(self._parameters)
        A = len(self._probes)
        stats = values[3 * P:-1].reshape(A, 4 + self.histogram_bins)
        grad_norm = values[:P]
        self.rows.append({
            "step": step,
            "epoch": trainer.epoch + 1,
            "loss": float(values[-1]),
            "lr": float(trainer.optimizer.param_groups[0]["lr"]),
            "total_grad_norm": float(np.sqrt(np.nansum(grad_norm ** 2))),
            "grad_norm": grad_norm,
            "weight_norm": values[P:2 * P],
            "update_ratio": values[2 * P:3 * P],
            "activation_stats": stats[:, :4],
            "histogram": stats[:, 4:].astype(np.float32),
        })
        if len(self.rows) > self.max_samples:
            self._thin_out()

    def _thin_out(self) -> None:
        # Keep every other sample (always the first) and sample half as often from now on.
        self.rows = self.rows[::2]
        self._min_gap *= 2
        log.debug("monitor holds %d samples; the smallest gap is now %d steps", len(self.rows),
                  self._min_gap)

    def _sort_by_forward_order(self, model: nn.Module) -> None:
        position = {}
        for module in model.modules():
            order = self._order.get(id(module), len(self._order) + len(position))
            for parameter in module.parameters(recurse=False):
                position[id(parameter)] = order
        pairs = sorted(zip(self._parameter_names, self._parameters),
                       key=lambda pair: position.get(id(pair[1]), math.inf))
        self._parameter_names = [name for name, _ in pairs]
        self._parameters = [parameter for _, parameter in pairs]
        self._probes.sort(key=lambda probe: self._order.get(id(probe.module), math.inf))
        self._before = None

    # ---- the non-finite sentinel ---------------------------------------------------------

    def _check_output(self, module, inputs, output) -> None:
        if not module.training or not isinstance(output, torch.Tensor):
            return
        started = self._clock()
        trainer = self._trainer
        step = trainer.global_step + 1  # the trainer counts the step after the forward pass
        finite = torch.isfinite(output).all()
        if self._deferred(trainer):
            self._note_bad_step(finite, step, "output")
        elif not finite:
            self._stop_at_activation(module, inputs, step)
        self._spent += self._clock() - started

    def _check_gradients(self, trainer, step: int, grads: list[torch.Tensor | None]) -> None:
        present = [g for g in grads if g is not None]
        if not present or trainer.scaler.is_enabled():
            # float16 loss scaling makes an occasional Inf gradient normal: the scaler skips
            # that step and lowers its scale, so only the output check applies then.
            return
        # The largest magnitude is NaN or Inf exactly when an element is; it cannot overflow.
        finite = torch.isfinite(torch.stack(torch._foreach_norm(present, math.inf))).all()
        if self._deferred(trainer):
            self._note_bad_step(finite, step, "gradient")
        elif not finite:
            self._stop_at_gradient(step, step)

    def _deferred(self, trainer) -> bool:
        """On CUDA a check per step would stall the GPU queue: keep the result on the device."""
        return trainer.device.type == "cuda" and self.cuda_check_every > 1

    def _note_bad_step(self, finite: torch.Tensor, step: int, kind: str) -> None:
        # The first bad step, per kind, stays on the device until the next synchronisation.
        if kind not in self._bad_steps:
            self._bad_steps[kind] = torch.zeros((), dtype=torch.long, device=finite.device)
        bad = self._bad_steps[kind]
        first = (bad == 0) & ~finite
        self._bad_steps[kind] = torch.where(first, torch.full_like(bad, step), bad)

    def _raise_if_bad_step(self, trainer) -> None:
        if not self._bad_steps:
            return
        found = {kind: int(step) for kind, step in self._bad_steps.items() if int(step)}
        if not found:
            return
        kind = min(found, key=found.get)
        if kind == "gradient":
            self._stop_at_gradient(found[kind], trainer.global_step)
        message = (f"the model's output became non-finite first at step {found[kind]} (seen at "
                   f"step {trainer.global_step}); to name the layer, rerun with "
                   "GradientMonitor(cuda_check_every=1), which checks every step")
        self._stop(found[kind], "output", "activation", message)

    def _stop_at_activation(self, model: nn.Module, inputs: tuple, step: int) -> None:
        self._detach_hooks()
        self._remove_root_hook()  # the replay below must not land here again
        where, detail = locate_nonfinite_activation(model, inputs)
        message = (f"a non-finite value (NaN or Inf) first appeared at step {step} in the output "
                   f"of layer {where} ({detail})")
        self._stop(step, where, "activation", message)

    def _stop_at_gradient(self, step: int, seen_at: int) -> None:
        names = [name for name, p in zip(self._parameter_names, self._parameters)
                 if p.grad is not None and not torch.isfinite(p.grad).all()]
        when = f"at step {step}" if step == seen_at else f"first at step {step} (seen at " \
            f"step {seen_at})"
        if names:
            # Back-propagation reaches the output end first; the bad value started there.
            where = names[-1]
            message = (f"the gradient of {where} became non-finite {when}; {len(names)} of "
                       f"{len(self._parameters)} parameter tensors have NaN/Inf gradients")
        else:
            where = "gradients"
            message = f"a gradient became non-finite {when}"
        self._stop(step, where, "gradient", message)

    def _stop(self, step: int, where: str, kind: str, message: str) -> None:
        self.nonfinite = {"step": step, "where": where, "kind": kind, "message": message}
        self._detach_hooks()
        self._remove_root_hook()
        trainer = self._trainer
        try:
            self.flush()
            self._conclude(None, trainer.history if trainer is not None else [])
        except Exception:  # the run is stopping: the error raised below matters more
            log.exception("could not write the monitor's files before stopping")
        raise NonFiniteError(message + ". Run `cnnlab diagnose` on the run for remedies",
                             step, where)

    # ---- files ---------------------------------------------------------------------------

    def data(self) -> MonitorData:
        """Everything recorded so far, as arrays (see :class:`MonitorData`)."""
        self._drain_losses()
        P, A, B = len(self._parameter_names), len(self._probes), self.histogram_bins
        rows = self.rows

        def column(key: str) -> np.ndarray:
            return np.array([row[key] for row in rows], dtype=np.float64)

        def matrix(key: str, width: int) -> np.ndarray:
            if not rows:
                return np.zeros((0, width))
            return np.stack([row[key] for row in rows]).astype(np.float64)

        stats = np.stack([row["activation_stats"] for row in rows]) if rows else \
            np.zeros((0, A, 4))
        edges = np.array([np.linspace(*(probe.edges or (0.0, 1.0)), B + 1)
                          for probe in self._probes]).reshape(A, B + 1)
        histograms = np.stack([row["histogram"] for row in rows]) if rows else \
            np.zeros((0, A, B), dtype=np.float32)
        shapes = [list(p.shape) for p in self._parameters]
        return MonitorData(
            steps=np.array([row["step"] for row in rows], dtype=np.int64),
            epochs=np.array([row["epoch"] for row in rows], dtype=np.int64),
            losses=column("loss"), learning_rates=column("lr"),
            total_grad_norm=column("total_grad_norm"),
            parameters=list(self._parameter_names), parameter_shapes=shapes,
            grad_norm=matrix("grad_norm", P), weight_norm=matrix("weight_norm", P),
            update_ratio=matrix("update_ratio", P),
            activations=[probe.name for probe in self._probes],
            activation_kinds=[probe.kind for probe in self._probes],
            activation_mean=stats[:, :, STAT_MEAN], activation_std=stats[:, :, STAT_STD],
            activation_dead=stats[:, :, STAT_DEAD],
            activation_saturated=stats[:, :, STAT_SATURATED],
            histogram_edges=edges, histograms=histograms,
            loss_steps=np.array(self.loss_steps, dtype=np.int64),
            loss_values=np.array(self.loss_values, dtype=np.float64),
            nonfinite=self.nonfinite, sampling=self._sampling_info(),
            training=self._training_info())

    def _drain_losses(self) -> None:
        if not self._pending_losses:
            return
        steps = [step for step, _ in self._pending_losses]
        values = torch.stack([loss.float() for _, loss in self._pending_losses]).cpu().tolist()
        self._pending_losses = []
        self.loss_steps.extend(steps)
        self.loss_values.extend(values)
        if len(self.loss_values) > self.max_loss_points:
            # Average neighbouring steps: the trace keeps its shape at half the resolution.
            count = len(self.loss_values) // 2 * 2
            values = np.array(self.loss_values[:count]).reshape(-1, 2).mean(axis=1).tolist()
            self.loss_values = values + self.loss_values[count:]
            self.loss_steps = self.loss_steps[:count:2] + self.loss_steps[count:]

    def _sampling_info(self) -> dict[str, Any]:
        return {
            "every": self.every,
            "target_overhead": self.target_overhead,
            "current_gap": self.current_gap(),
            "gap_history": self.gap_history,
            "step_seconds": self.step_seconds,
            "check_seconds": self.check_seconds,
            "sample_seconds": self.sample_seconds,
            "flush_seconds": self.flush_seconds,
            "estimated_overhead": self.estimated_overhead(),
            "samples": len(self.rows),
            "max_samples": self.max_samples,
        }

    def _training_info(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None:
            return {}
        config = trainer.config
        return {"optimizer": config.optimizer, "lr": config.lr, "clip_norm": config.clip_norm,
                "clip_value": config.clip_value, "warmup_epochs": config.warmup_epochs,
                "batch_size": config.batch_size, "steps_per_epoch": trainer.steps_per_epoch,
                "total_steps": trainer.total_steps, "model": type(trainer.model).__name__,
                "model_options": trainer.extra_config.get("run", {}).get("model_options", {}),
                "structure": self._structure(trainer.model)}

    def _structure(self, model: nn.Module) -> dict[str, Any]:
        """What the model is built from, for remedies when its options are not known."""
        kinds = [probe.kind for probe in self._probes if probe.kind != "linear"]
        norm = "none"
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                norm = "batch"
                break
            if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                norm = "group"
        return {"activation": max(set(kinds), key=kinds.count) if kinds else None,
                "norm": norm}

    def flush(self) -> None:
        """Write the files now (also done at each epoch end and at the end of the run)."""
        started = time.perf_counter()
        if self.run_dir is None:
            self._drain_losses()
        else:
            write_monitor(self.data(), self.run_dir / MONITOR_FOLDER)
        self._last_flush = time.perf_counter()
        self.flush_seconds += self._last_flush - started

    def _resume_from_files(self, global_step: int) -> None:
        folder = self.run_dir / MONITOR_FOLDER if self.run_dir is not None else None
        if folder is None or not (folder / "meta.json").exists():
            return
        try:
            stored = load_monitor(folder.parent)
        except CnnlabError as error:
            log.warning("the earlier monitor files are unreadable (%s); starting afresh", error)
            return
        if set(stored.parameters) != set(self._parameter_names) or \
                set(stored.activations) != {probe.name for probe in self._probes}:
            log.warning("the earlier monitor files describe another model; starting afresh")
            return
        keep = stored.steps <= global_step
        by_name = {name: i for i, name in enumerate(self._parameter_names)}
        self._parameters = [self._parameters[by_name[n]] for n in stored.parameters]
        self._parameter_names = list(stored.parameters)
        probes = {probe.name: probe for probe in self._probes}
        self._probes = [probes[name] for name in stored.activations if name in probes]
        for probe, edges in zip(self._probes, stored.histogram_edges):
            probe.edges = (float(edges[0]), float(edges[-1]))
        self._order = {id(m): i for i, m in enumerate(self._trainer.model.modules())}
        for index in np.flatnonzero(keep):
            stats = np.stack([stored.activation_mean[index], stored.activation_std[index],
                              stored.activation_dead[index], stored.activation_saturated[index]],
                             axis=1)
            self.rows.append({
                "step": int(stored.steps[index]), "epoch": int(stored.epochs[index]),
                "loss": stored.losses[index], "lr": stored.learning_rates[index],
                "total_grad_norm": stored.total_grad_norm[index],
                "grad_norm": stored.grad_norm[index], "weight_norm": stored.weight_norm[index],
                "update_ratio": stored.update_ratio[index], "activation_stats": stats,
                "histogram": stored.histograms[index]})
        loss_keep = stored.loss_steps <= global_step
        self.loss_steps = stored.loss_steps[loss_keep].tolist()
        self.loss_values = stored.loss_values[loss_keep].tolist()
        log.info("monitor resumed with %d earlier samples", len(self.rows))

    def _conclude(self, summary: dict | None, history: list[dict]) -> None:
        if self.run_dir is None or not self.rows and self.nonfinite is None:
            return
        from cnnlab.diagnose.gradients import diagnose

        verdicts = diagnose(self.data(), history) if self.add_verdicts else []
        for verdict in verdicts:
            if verdict.kind == "none":
                log.info("gradient check: %s", verdict.summary)
            else:
                log.warning("gradient check: %s: %s", verdict.kind, verdict.summary)
        if self.add_verdicts:
            write_json_atomic(self.run_dir / MONITOR_FOLDER / "verdicts.json",
                              [v.to_dict() for v in verdicts])
        if summary is not None and self.add_verdicts:
            summary["gradient_verdicts"] = [v.to_dict() for v in verdicts]
            summary["monitor_overhead_estimate"] = self.estimated_overhead()
        if self.write_figures and self.rows:
            from cnnlab.diagnose.figures import save_monitor_figures

            save_monitor_figures(self.data(), self.run_dir / MONITOR_FOLDER)


def activation_kind(module: nn.Module) -> str | None:
    """The activation family of a module (``relu``, ``sigmoid``, ...), or None."""
    for cls, kind in ACTIVATION_KINDS:
        if isinstance(module, cls):
            return kind
    return None


@torch.no_grad()
def locate_nonfinite_activation(model: nn.Module, inputs: tuple) -> tuple[str, str]:
    """Replay a forward pass and name the first module whose output is not finite.

    Returns ``(module name, description)``. Batch-norm running statistics are
    restored afterwards, so the replay leaves no trace.
    """
    tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    if any(x.is_floating_point() and not torch.isfinite(x).all() for x in tensors):
        return "input", "the input batch itself contains NaN/Inf"
    names = {id(module): name for name, module in model.named_modules()}
    found: list[tuple[str, str]] = []

    def hook(module, args, output):
        if found or not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return
        if not torch.isfinite(output).all():
            finite_in = all(bool(torch.isfinite(a).all()) for a in args
                            if isinstance(a, torch.Tensor) and a.is_floating_point())
            weights = [p for p in module.parameters(recurse=False)]
            finite_weights = all(bool(torch.isfinite(p).all()) for p in weights)
            largest_weight = max((p.abs().max().item() for p in weights), default=math.nan)
            largest = output[torch.isfinite(output)].abs().max().item() \
                if torch.isfinite(output).any() else math.nan
            cause = ("its input was finite" if finite_in else "its input was already "
                     "non-finite") + (
                f", its weights are finite (largest magnitude {largest_weight:.3g})"
                if weights and finite_weights else ", its weights are non-finite" if weights
                else "")
            share = (~torch.isfinite(output)).float().mean().item()
            detail = (f"{type(module).__name__}: {cause}; {share:.1%} of outputs NaN/Inf, "
                      f"largest finite output magnitude {largest:.3g}")
            found.append((names.get(id(module), type(module).__name__), detail))

    buffers = {name: b.clone() for name, b in model.named_buffers()}
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    if found:
        return found[0]
    return "output", "the model's output (no single layer's output was non-finite on replay)"


# ---- reading and writing the files ---------------------------------------------------------

def _write_table(path: Path, steps: np.ndarray, names: list[str], values: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", *names])
        for step, row in zip(steps, values):
            writer.writerow([int(step), *(f"{v:.6g}" for v in row)])


def _read_table(path: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [[float(v) for v in row] for row in reader]
    array = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    return array[:, 0].astype(np.int64), header[1:], array[:, 1:]


def write_monitor(data: MonitorData, folder: str | Path) -> None:
    """Write :class:`MonitorData` as the monitor's files into ``folder`` (atomically each)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "parameters": [{"name": n, "shape": s} for n, s in
                       zip(data.parameters, data.parameter_shapes)],
        "activations": [{"name": n, "kind": k} for n, k in
                        zip(data.activations, data.activation_kinds)],
        "sampling": data.sampling,
        "training": data.training,
        "nonfinite": data.nonfinite,
    }
    write_json_atomic(folder / "meta.json", meta)
    samples = np.stack([data.epochs, data.losses, data.learning_rates, data.total_grad_norm],
                       axis=1) if len(data) else np.zeros((0, 4))
    _write_table(folder / "samples.csv", data.steps,
                 ["epoch", "loss", "lr", "total_grad_norm"], samples)
    for name in ("grad_norm", "weight_norm", "update_ratio"):
        _write_table(folder / f"{name}.csv", data.steps, data.parameters, getattr(data, name))
    for name in ("mean", "std", "dead", "saturated"):
        _write_table(folder / f"activation_{name}.csv", data.steps, data.activations,
                     getattr(data, f"activation_{name}"))
    with atomic_path(folder / "activation_histograms.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, steps=data.steps, edges=data.histogram_edges,
                            fractions=data.histograms.astype(np.float32))
    _write_table(folder / "loss.csv", data.loss_steps, ["loss"], data.loss_values[:, None])


def load_monitor(run_dir: str | Path) -> MonitorData:
    """Read the files a :class:`GradientMonitor` wrote into ``run_dir/monitor``.

    ``run_dir`` may also be the ``monitor`` folder itself.
    """
    run_dir = Path(run_dir)
    folder = run_dir if (run_dir / "meta.json").exists() else run_dir / MONITOR_FOLDER
    if not (folder / "meta.json").exists():
        raise CnnlabError(f"{run_dir} has no gradient monitor files ({MONITOR_FOLDER}/meta.json); "
                          "train it with --monitor gradients (or a GradientMonitor callback)")
    try:
        meta = json.loads((folder / "meta.json").read_text())
        steps, _, samples = _read_table(folder / "samples.csv")
        tables = {name: _read_table(folder / f"{name}.csv")[2] for name in
                  ("grad_norm", "weight_norm", "update_ratio", "activation_mean",
                   "activation_std", "activation_dead", "activation_saturated")}
        with np.load(folder / "activation_histograms.npz") as histograms:
            edges, fractions = histograms["edges"], histograms["fractions"]
        loss_steps, _, loss_values = _read_table(folder / "loss.csv")
    except (OSError, ValueError, KeyError, StopIteration) as error:
        raise CnnlabError(f"the monitor files in {folder} are incomplete or damaged ({error}); "
                          "train the run again with --monitor gradients") from None
    return MonitorData(
        steps=steps, epochs=samples[:, 0].astype(np.int64), losses=samples[:, 1],
        learning_rates=samples[:, 2], total_grad_norm=samples[:, 3],
        parameters=[p["name"] for p in meta["parameters"]],
        parameter_shapes=[p["shape"] for p in meta["parameters"]],
        grad_norm=tables["grad_norm"], weight_norm=tables["weight_norm"],
        update_ratio=tables["update_ratio"],
        activations=[a["name"] for a in meta["activations"]],
        activation_kinds=[a["kind"] for a in meta["activations"]],
        activation_mean=tables["activation_mean"], activation_std=tables["activation_std"],
        activation_dead=tables["activation_dead"],
        activation_saturated=tables["activation_saturated"],
        histogram_edges=edges, histograms=fractions,
        loss_steps=loss_steps, loss_values=loss_values[:, 0],
        nonfinite=meta.get("nonfinite"), sampling=meta.get("sampling", {}),
        training=meta.get("training", {}))
