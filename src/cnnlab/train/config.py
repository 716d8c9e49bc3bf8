"""Every training hyperparameter in one place, each with its unit."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from cnnlab._util import CnnlabError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "onecycle")


@dataclass
class TrainConfig:
    """Hyperparameters of one training run.

    Defaults suit LeNet-5 on CIFAR-10 with Adam. ``lr`` is the peak learning
    rate (after warm-up; one-cycle's maximum). ``fit_subset`` is the number
    of un-augmented training images on which train accuracy is measured each
    epoch, so the train/validation gap is not hidden by augmentation.
    """

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only (Nesterov)
    weight_decay: float = 0.0
    schedule: str = "none"
    warmup_epochs: float = 0.0  # linear warm-up from lr/100, in epochs (fractions allowed)
    label_smoothing: float = 0.0
    clip_norm: float | None = None  # clip the global gradient norm to this value
    clip_value: float | None = None  # clip each gradient element to [-v, v]
    early_stopping_patience: int | None = None  # epochs without improvement of val_loss
    restore_best: bool = False  # load the best-validation weights at the end
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16); no-op on CPU
    # channels_last is faster per step on the CPU (benchmarks/bench_step.py: LeNet-5 1.15-1.46x,
    # fast_resnet 1.24-1.27x at 1-2 threads) but opt-in: with two or more threads torch
    # 2.14.1's oneDNN (3.12) corrupts the heap in the weight gradient of a 1x1 stride-2
    # convolution with few input channels (3 or 8: the shortcuts of narrow ResNets) for some
    # batch sizes, and the process aborts (tests/train/test_layout_crash.py).
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None keeps CNNLAB_THREADS / torch default
    fit_subset: int = 2000
    eval_batch_size: int = 512
    checkpoint_every: int = 1  # epochs between checkpoints (0: only at the end)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise CnnlabError(message)

        # Types first, so that a string from a config file gets a message, not a TypeError.
        for item in fields(self):
            value = getattr(self, item.name)
            expected = str(item.type)
            if value is None and "None" in expected:
                continue
            numeric = "int" in expected or "float" in expected
            if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))):
                if "bool" not in expected:
                    raise CnnlabError(f"training option {item.name} must be a number, got "
                                      f"{value!r}")
            if expected == "str" and not isinstance(value, str):
                raise CnnlabError(f"training option {item.name} must be a string, got {value!r}")
            if expected == "bool" and not isinstance(value, bool):
                raise CnnlabError(f"training option {item.name} must be true or false, got "
                                  f"{value!r}")

        need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"--batch-size (batch_size) must be >= 1, got {self.batch_size}")
        need(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        need(self.optimizer in OPTIMIZERS,
             f"--optimizer {self.optimizer!r} is unknown; use one of {', '.join(OPTIMIZERS)}")
        need(self.schedule in SCHEDULES,
             f"--schedule {self.schedule!r} is unknown; use one of {', '.join(SCHEDULES)}")
        need(0 <= self.label_smoothing < 1,
             f"--label-smoothing (label_smoothing) must be in [0, 1), got "
             f"{self.label_smoothing}")
        need(self.weight_decay >= 0,
             f"--weight-decay (weight_decay) must be >= 0, got {self.weight_decay}")
        need(self.warmup_epochs >= 0,
             f"--warmup-epochs (warmup_epochs) must be >= 0, got {self.warmup_epochs}")
        need(self.clip_norm is None or self.clip_norm > 0,
             f"--clip-norm (clip_norm) must be > 0, got {self.clip_norm}")
        need(self.clip_value is None or self.clip_value > 0,
             f"--clip-value (clip_value) must be > 0, got {self.clip_value}")
        need(self.early_stopping_patience is None or self.early_stopping_patience >= 1,
             f"--early-stopping (early_stopping_patience) must be >= 1 epoch, got "
             f"{self.early_stopping_patience}")
        need(self.fit_subset >= 0, f"fit_subset must be >= 0, got {self.fit_subset}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CnnlabError(f"unknown training option(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(known))}")
        return cls(**data)
