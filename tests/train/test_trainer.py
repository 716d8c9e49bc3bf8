"""The trainer: learning, exact resume, atomic checkpoints, safe loading, stopping rules."""

import json
import math

import pytest
import torch
from torch import nn

from cnnlab._util import CnnlabError
from cnnlab.augment import build_augment
from cnnlab.data import ArrayDataset
from cnnlab.models import build_model
from cnnlab.train import (
    CHECKPOINT_NAME,
    BinaryTask,
    NonFiniteError,
    Trainer,
    TrainConfig,
    evaluate,
    load_checkpoint_file,
)


def synthetic_images(count=256, seed=0, size=16):
    """Synthetic two-class images: class 1 has a bright left half, class 0 a bright right half."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=g)
    x = torch.randint(0, 80, (count, 3, size, size), generator=g, dtype=torch.uint8)
    half = size // 2
    x[labels == 1, :, :, :half] += 150
    x[labels == 0, :, :, half:] += 150
    return ArrayDataset(x, labels, ["right", "left"], mean=(0.5,) * 3, std=(0.25,) * 3)


def small_model():
    return build_model("small_cnn", num_classes=2, widths=(8, 16), depth=1, norm="batch",
                       dropout=0.2)


def config(**overrides):
    base = dict(epochs=4, batch_size=32, lr=3e-3, seed=0, fit_subset=64, threads=1)
    base.update(overrides)
    return TrainConfig(**base)


def test_training_learns_a_separable_task_and_records_history(tmp_path):
    train, val = synthetic_images(256, 0), synthetic_images(128, 1)
    result = Trainer(small_model(), config(), train=train, val=val, run_dir=tmp_path).fit()
    assert result.history[-1]["val_accuracy"] > 0.9
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,train_accuracy,fit_loss,fit_accuracy")
    assert len(lines) == 5
    resolved = json.loads((tmp_path / "config.json").read_text())
    assert resolved["train"]["lr"] == 3e-3 and resolved["data"]["train_samples"] == 256


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tmp_path):
    train, val = synthetic_images(192, 0), synthetic_images(64, 1)

    def run(run_dir, epochs, resume=False):
        torch.manual_seed(0)  # the same initial weights for both runs
        trainer = Trainer(small_model(), config(epochs=epochs), train=train, val=val,
                          augment=build_augment("keras", seed=0), run_dir=run_dir)
        return trainer.fit(resume=resume)

    straight = run(tmp_path / "straight", 4)
    run(tmp_path / "split", 2)  # "killed" after epoch 2: only its checkpoint survives
    resumed = run(tmp_path / "split", 4, resume=True)
    keys = ["train_loss", "train_accuracy", "fit_loss", "val_loss", "val_accuracy", "lr"]
    for a, b in zip(straight.history, resumed.history):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    for (name, p), (_, q) in zip(straight.model.state_dict().items(),
                                 resumed.model.state_dict().items()):
        assert torch.allclose(p.float(), q.float(), atol=1e-5), name


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    trainer = Trainer(small_model(), config(epochs=1), train=synthetic_images(64),
                      run_dir=tmp_path)
    trainer.fit()
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk vanished mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        trainer.save_checkpoint()
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good
    assert not list(tmp_path.glob("*.tmp"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CnnlabError, match="refused"):
        load_checkpoint_file(path)


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    trainer = Trainer(small_model(), config(epochs=1), train=synthetic_images(64),
                      run_dir=tmp_path)
    trainer.fit()
    data = (tmp_path / CHECKPOINT_NAME).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CnnlabError, match="cut.pt"):
        load_checkpoint_file(tmp_path / "cut.pt")


def test_resume_without_a_checkpoint_says_so(tmp_path):
    trainer = Trainer(small_model(), config(epochs=1), train=synthetic_images(64),
                      run_dir=tmp_path)
    with pytest.raises(CnnlabError, match="no checkpoint"):
        trainer.fit(resume=True)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    train = synthetic_images(64)

    class Explodes(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = small_model()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            out = self.inner(x)
            return out * float("inf") if self.calls > 3 else out

    trainer = Trainer(Explodes(), config(epochs=3, batch_size=32, fit_subset=0), train=train,
                      run_dir=tmp_path)
    with pytest.raises(NonFiniteError, match=r"step 4 \(epoch 2\)"):
        trainer.fit()
    state = load_checkpoint_file(tmp_path / CHECKPOINT_NAME)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_early_stopping_stops_when_validation_loss_stalls():
    train = synthetic_images(64, 0)
    noise = ArrayDataset(torch.randint(0, 255, (64, 3, 16, 16), dtype=torch.uint8),
                         torch.randint(0, 2, (64,)), ["a", "b"], mean=(0.5,) * 3, std=(0.25,) * 3)
    result = Trainer(small_model(), config(epochs=30, early_stopping_patience=2, lr=0.01),
                     train=train, val=noise).fit()
    assert len(result.history) < 30
    assert result.stopped_reason.startswith("early stopping")


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_schedules_end_near_zero_learning_rate(schedule):
    result = Trainer(small_model(), config(epochs=2, batch_size=8, schedule=schedule,
                                           warmup_epochs=0.5),
                     train=synthetic_images(64)).fit()
    assert result.history[-1]["lr"] < 3e-3 * 0.05


def test_gradient_clipping_by_norm_bounds_the_global_norm():
    from cnnlab.train import Callback

    norms = []

    class Watch(Callback):
        def on_step_end(self, trainer, step, loss):
            pass

    model = small_model()
    trainer = Trainer(model, config(epochs=1, clip_norm=0.01, lr=1e-3),
                      train=synthetic_images(64), callbacks=[Watch()])
    original_step = trainer.optimizer.step

    def step_and_record(*args, **kwargs):
        total = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()
                               if p.grad is not None))
        norms.append(total.item())
        return original_step(*args, **kwargs)

    trainer.optimizer.step = step_and_record
    trainer.fit()
    assert norms and max(norms) <= 0.01 * 1.001


def test_binary_task_with_float_targets_trains():
    data = synthetic_images(128)
    binary = ArrayDataset(data.inputs, data.targets.float(), ["no", "yes"], mean=data.mean,
                          std=data.std)
    model = build_model("small_cnn", num_classes=1, widths=(8, 16), depth=1)
    result = Trainer(model, config(epochs=3), train=binary, val=binary,
                     task=BinaryTask(pos_weight=2.0)).fit()
    assert result.history[-1]["val_accuracy"] > 0.85


def test_evaluate_matches_a_direct_computation():
    data = synthetic_images(50)
    model = small_model().eval()
    metrics = evaluate(model, data, batch_size=7, device="cpu")
    x = (data.inputs.float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        logits = model(x)
    loss = nn.functional.cross_entropy(logits, data.targets).item()
    accuracy = (logits.argmax(1) == data.targets).float().mean().item()
    assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(accuracy)


def test_bad_options_are_rejected_with_the_allowed_values():
    with pytest.raises(CnnlabError, match="sgd, adam, adamw"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(CnnlabError, match="--epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(CnnlabError, match="empty"):
        Trainer(small_model(), config(), train=ArrayDataset(torch.zeros(0, 3, 4, 4,
                                                                        dtype=torch.uint8),
                                                            torch.zeros(0, dtype=torch.long),
                                                            ["a"]))
    assert math.isfinite(TrainConfig().lr)


def _is_channels_last(model: nn.Module) -> bool:
    weight = next(p for p in model.parameters() if p.dim() == 4)
    return weight.is_contiguous(memory_format=torch.channels_last) and \
        not weight.is_contiguous()


@pytest.mark.parametrize("choice, expected", [(None, False), (False, False), (True, True)])
def test_images_train_channels_last_only_when_the_config_asks(tmp_path, choice, expected):
    train = synthetic_images(64, 0)
    options = {} if choice is None else {"channels_last": choice}
    trainer = Trainer(small_model(), config(epochs=1, **options), train=train, run_dir=tmp_path)
    assert _is_channels_last(trainer.model) is expected
    result = trainer.fit()
    assert json.loads((tmp_path / "config.json").read_text())["channels_last"] is expected
    # The trained model still takes ordinary NCHW batches.
    logits = result.model(torch.rand(2, 3, 16, 16))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_channels_last_must_be_true_or_false():
    for value in ("yes", None):
        with pytest.raises(CnnlabError, match="channels_last must be true or false"):
            config(channels_last=value)
