"""cnnlab against the pipelines its users would otherwise write: one command, one table.

Each workload trains the same model, from the same initial weights, on the
same images, with the same batch size (128), optimiser (Adam, lr 1e-3) and
number of epochs, three ways:

- ``cnnlab``: uint8 data resident in memory, batched augmentation on the
  device (one resampling pass per batch), the :class:`cnnlab.train.Trainer`;
  for transfer, :func:`cnnlab.runs.transfer.train_transfer` with a frozen
  backbone, whose features are computed once (in memory) and reused;
- ``dataloader``: plain PyTorch as its tutorials teach it: an in-memory
  ``Dataset`` with ``torchvision.transforms.v2`` applied per sample and a
  ``DataLoader`` with worker processes (``--workers``, default 2);
- ``keras``: Keras 3 (TensorFlow, CPU) with ``model.fit`` on NumPy arrays,
  or on ``ImageDataGenerator.flow`` for augmentation. Keras is installed by
  this script into its own virtual environment (``benchmarks/.venv-keras``,
  ``pip install tensorflow-cpu scipy pillow``); where that fails the Keras
  column says why and the rest still runs.

Workloads: LeNet-5 without augmentation (``lenet``) and with the Keras preset
(``lenet-augment``: rotation 30 degrees, shifts 0.1, shear 0.1 degrees, zoom
0.1, horizontal flips, nearest fill), ResNet-18 with the CIFAR stem
(``resnet18``), and a linear head on a frozen ResNet-18 (``transfer``; the
backbone's weights are torchvision's ImageNet ones where the torch hub cache
has them, else a fixed random initialisation, identical in all pipelines).

Measured per variant, each in its own subprocess: training seconds for all
epochs (data loading, model building and the test evaluation excluded; for
cnnlab transfer the one pass that computes the training features is
included), images/s = images x epochs / training seconds, peak memory =
max RSS of the process plus its children (DataLoader workers), and test
accuracy after the last epoch on a fixed stratified subset of the test split.

Run: ``python benchmarks/compare.py [--quick] [--images N] [--test-images M]
[--epochs E] [--only NAME ...] [--threads T] [--repeats R]``. ``--quick`` finishes in a
few minutes on 2 cores. The machine is usually shared: the load average is
printed before and after, and only the ratios, measured in one invocation,
should be compared across machines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PIPELINES = ("cnnlab", "dataloader", "keras")
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
KERAS_PACKAGES = ("tensorflow-cpu", "scipy", "pillow")  # scipy: ImageDataGenerator's affine


@dataclass(frozen=True)
class Workload:
    """One row group of the table: a model, with or without augmentation, and its sizes."""

    name: str
    title: str
    model: str  # lenet5, resnet18 or transfer
    augment: bool
    images: int  # training images
    test_images: int
    epochs: int
    quick_images: int
    quick_test_images: int
    quick_epochs: int = 1


WORKLOADS = (
    Workload("lenet", "LeNet-5, no augmentation", "lenet5", False, 5000, 2000, 3, 1000, 500),
    Workload("lenet-augment", "LeNet-5, Keras augmentation preset", "lenet5", True, 5000, 2000,
             3, 1000, 500),
    # ResNet-18 at 32x32 costs about 1.7 GFLOP per training image: hundreds, not thousands.
    Workload("resnet18", "ResNet-18 (CIFAR stem)", "resnet18", False, 128, 128, 2, 32, 32),
    Workload("transfer", "frozen ResNet-18 at 64x64, linear head", "transfer", False, 1000,
             1000, 3, 256, 256),
)


@dataclass
class Measurement:
    """One variant's numbers, or why it did not run (``skipped``)."""

    workload: str
    pipeline: str
    images: int = 0
    epochs: int = 0
    train_seconds: float = math.nan
    epoch_seconds: list[float] = field(default_factory=list)
    test_accuracy: float = math.nan
    test_images: int = 0
    peak_memory_mib: float = math.nan
    cores: float = math.nan  # CPU seconds (all threads and child processes) per wall second
    skipped: str | None = None
    notes: str = ""

    @property
    def ok(self) -> bool:
        return self.skipped is None

    @property
    def images_per_second(self) -> float:
        return self.images * self.epochs / self.train_seconds if self.ok else math.nan

    @property
    def mean_epoch_seconds(self) -> float:
        return self.train_seconds / self.epochs if self.ok else math.nan

    @property
    def steady_epoch_seconds(self) -> float:
        """Median epoch after the first (which pays for start-up: graph tracing, kernels)."""
        later = sorted(self.epoch_seconds[1:]) if self.ok else []
        if not later:
            return math.nan
        middle = len(later) // 2
        return later[middle] if len(later) % 2 else (later[middle - 1] + later[middle]) / 2

    @property
    def steady_images_per_second(self) -> float:
        return self.images / self.steady_epoch_seconds


@dataclass
class Ratio:
    """cnnlab against one other pipeline on one workload."""

    workload: str
    versus: str
    speedup: float  # cnnlab images/s over theirs, all epochs (> 1: cnnlab faster)
    steady_speedup: float  # the same after the first epoch (NaN with one epoch)
    accuracy_delta: float  # cnnlab test accuracy minus theirs
    accuracy_noise: float  # two standard errors of that difference
    target_speedup: float | None = None

    @property
    def judged_speedup(self) -> float:
        """The smaller of the all-epochs and steady speed-ups: the target must hold for both."""
        return self.speedup if math.isnan(self.steady_speedup) else \
            min(self.speedup, self.steady_speedup)

    @property
    def speed_met(self) -> bool | None:
        if self.target_speedup is None:
            return None
        return self.judged_speedup >= self.target_speedup

    @property
    def accuracy_met(self) -> bool:
        """Equal or better accuracy: not worse by more than the noise of the difference."""
        return self.accuracy_delta >= -self.accuracy_noise


# The issue's targets: per augmented epoch, at equal or better accuracy.
TARGETS = {("lenet-augment", "keras"): 3.0, ("lenet-augment", "dataloader"): 1.0}


# ---- the table and the ratios (pure functions: tests feed them fabricated results) ---------


def accuracy_noise(first: float, second: float, count_first: int, count_second: int) -> float:
    """Two standard errors of the difference of two accuracies on independent test samples.

    Each accuracy is a proportion over its test images (binomial); the
    variances add. The pipelines share the same test images, so this is a
    conservative bound on the noise of the difference.
    """
    if count_first < 1 or count_second < 1:
        return math.nan
    variance = first * (1 - first) / count_first + second * (1 - second) / count_second
    return 2 * math.sqrt(variance)


def compute_ratios(results: list[Measurement]) -> list[Ratio]:
    """cnnlab over each other pipeline, per workload, where both ran."""
    by_key = {(m.workload, m.pipeline): m for m in results}
    ratios = []
    for workload in dict.fromkeys(m.workload for m in results):
        ours = by_key.get((workload, "cnnlab"))
        if ours is None or not ours.ok:
            continue
        for versus in PIPELINES[1:]:
            theirs = by_key.get((workload, versus))
            if theirs is None or not theirs.ok:
                continue
            ratios.append(Ratio(
                workload, versus, ours.images_per_second / theirs.images_per_second,
                ours.steady_images_per_second / theirs.steady_images_per_second,
                ours.test_accuracy - theirs.test_accuracy,
                accuracy_noise(ours.test_accuracy, theirs.test_accuracy, ours.test_images,
                               theirs.test_images),
                TARGETS.get((workload, versus))))
    return ratios


def rotated(pipelines: list[str], round_index: int) -> list[str]:
    """The pipelines in round ``round_index``'s order: each goes first in turn.

    On a shared machine the load drifts during an invocation; a fixed order
    would hand the same pipeline the same share of that drift every time.
    """
    shift = round_index % len(pipelines) if pipelines else 0
    return list(pipelines[shift:]) + list(pipelines[:shift])


def median_measurement(runs: list[Measurement]) -> Measurement:
    """The run with the median images/s (the lower middle one for an even count).

    A skipped run counts only when every run was skipped.
    """
    done = sorted((m for m in runs if m.ok), key=lambda m: m.images_per_second)
    if not done:
        return runs[0]
    chosen = done[(len(done) - 1) // 2]
    if len(runs) > 1:
        speeds = ", ".join(f"{m.images_per_second:,.0f}" for m in done)
        summary = f"median of {len(done)} runs (images/s {speeds})"
        chosen.notes = "; ".join(filter(None, [chosen.notes, summary]))
    return chosen


def _number(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def format_results(results: list[Measurement]) -> str:
    """The measurement table: one line per workload and pipeline."""
    header = (f"{'workload':<14} {'pipeline':<10} {'images x epochs':>15} {'images/s':>9} "
              f"{'epoch s':>8} {'steady s':>8} {'cores':>5} {'peak MiB':>9} {'test acc':>8} "
              f"{'(of)':>6}")
    lines = [header, "-" * len(header)]
    for m in results:
        if not m.ok:
            lines.append(f"{m.workload:<14} {m.pipeline:<10} skipped: {m.skipped}")
            continue
        lines.append(
            f"{m.workload:<14} {m.pipeline:<10} {f'{m.images} x {m.epochs}':>15} "
            f"{_number(m.images_per_second, ',.0f'):>9} "
            f"{_number(m.mean_epoch_seconds, '.1f'):>8} "
            f"{_number(m.steady_epoch_seconds, '.1f'):>8} {_number(m.cores, '.2f'):>5} "
            f"{_number(m.peak_memory_mib, ',.0f'):>9} {_number(m.test_accuracy, '.4f'):>8} "
            f"{m.test_images:>6}")
    return "\n".join(lines)


def format_ratios(ratios: list[Ratio]) -> str:
    """The ratio table: speed-up and accuracy difference of cnnlab over each pipeline."""
    header = (f"{'workload':<14} {'cnnlab vs':<10} {'speed-up':>8} {'steady':>7} {'target':>7} "
              f"{'accuracy diff':>13} {'noise (2 se)':>12}  verdict")
    lines = [header, "-" * len(header)]
    for r in ratios:
        target = "-" if r.target_speedup is None else f">= {r.target_speedup:g}x"
        verdicts = []
        if r.speed_met is not None:
            verdicts.append("speed target met" if r.speed_met else "speed target MISSED")
        verdicts.append("accuracy equal or better" if r.accuracy_met
                        else "accuracy WORSE beyond noise")
        steady = _number(r.steady_speedup, ".2f")
        steady = steady if steady == "-" else steady + "x"
        lines.append(f"{r.workload:<14} {r.versus:<10} {r.speedup:>7.2f}x {steady:>7} "
                     f"{target:>7} "
                     f"{r.accuracy_delta:>+13.4f} {_number(r.accuracy_noise, '.4f'):>12}  "
                     f"{', '.join(verdicts)}")
    if not ratios:
        lines.append("(no workload ran in cnnlab and another pipeline)")
    return "\n".join(lines)


# ---- the variants (run in child processes) --------------------------------------------------


def cpu_clock() -> tuple[float, float]:
    """(CPU seconds of this process, its threads and its reaped children; wall seconds).

    Two readings around training give the cores a pipeline kept busy: the
    DataLoader's worker processes (reaped at the end of each epoch) and the
    threads TensorFlow and tf.data start besides the compute threads all
    count, so the table shows what each pipeline took from the machine, not
    only its ``--threads`` setting. The Keras child imports this too.
    """
    times = os.times()
    return (times.user + times.system + times.children_user + times.children_system,
            time.perf_counter())


def cores_between(first: tuple[float, float], second: tuple[float, float]) -> float:
    return (second[0] - first[0]) / max(1e-9, second[1] - first[1])


def peak_memory_mib() -> float:
    """Peak resident memory of this process plus its largest child (DataLoader worker), MiB.

    This process's peak is VmHWM, not ``ru_maxrss``: Linux carries ``ru_maxrss``
    across ``exec``, so a child started by the parent (which holds all of
    CIFAR-10) would report the parent's peak. A worker's peak counts the
    pages it shares copy-on-write with this process, so the sum is an upper
    bound for the DataLoader pipeline.
    """
    import resource

    own_kib = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                own_kib = int(line.split()[1])
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own_kib + children_kib) / 1024


def _load_arrays(spec: dict):
    import numpy as np
    import torch

    from cnnlab.data import ArrayDataset

    arrays = np.load(spec["data"])
    classes = [str(c) for c in arrays["classes"]]
    mean = tuple(float(v) for v in arrays["mean"])
    std = tuple(float(v) for v in arrays["std"])
    key = "fit" if spec["model"] == "transfer" else "train"

    def dataset(prefix: str) -> ArrayDataset:
        return ArrayDataset(torch.from_numpy(arrays[f"x_{prefix}"]),
                            torch.from_numpy(arrays[f"y_{prefix}"]).long(), classes,
                            mean=mean, std=std)

    return dataset(key), dataset("test")


def _torch_model(spec: dict):
    import numpy as np
    import torch

    from cnnlab.models import build_model

    options = {"cifar_stem": True} if spec["model"] == "resnet18" else {}
    model = build_model(spec["model"], num_classes=spec["num_classes"], **options)
    state = {k: torch.from_numpy(v) for k, v in np.load(spec["weights"]).items()}
    model.load_state_dict(state)
    return model


def run_cnnlab(spec: dict) -> dict:
    import torch

    from cnnlab.augment import build_augment
    from cnnlab.train import TrainConfig, Trainer, evaluate

    if spec["model"] == "transfer":
        return run_cnnlab_transfer(spec)
    train, test = _load_arrays(spec)
    config = TrainConfig(epochs=spec["epochs"], batch_size=BATCH_SIZE, optimizer="adam",
                         lr=LEARNING_RATE, threads=spec["threads"], device="cpu",
                         fit_subset=0, checkpoint_every=0)
    trainer = Trainer(_torch_model(spec), config, train=train,
                      augment=build_augment("keras" if spec["augment"] else None, seed=0))
    clock = cpu_clock()
    started = time.perf_counter()
    result = trainer.fit()
    train_seconds = time.perf_counter() - started
    cores = cores_between(clock, cpu_clock())
    accuracy = evaluate(result.model, test, device=torch.device("cpu"))["accuracy"]
    return {"images": len(train), "train_seconds": train_seconds,
            "epoch_seconds": [row["seconds"] for row in result.history],
            "test_accuracy": accuracy, "test_images": len(test), "cores": cores}


def run_cnnlab_transfer(spec: dict) -> dict:
    from cnnlab.train import TrainConfig

    try:
        from cnnlab.runs.transfer import TransferSpec, train_transfer
    except ImportError as error:
        return {"skipped": f"cnnlab.runs.transfer has no usable API here ({error})"}
    transfer = TransferSpec(
        backbone="resnet18", weights=spec["backbone_weights"], data=spec["data"],
        resize=spec["transfer_size"], head="linear", freeze=True, cache_features=True,
        feature_cache="memory", validation=spec["validation"], download=False)
    config = TrainConfig(epochs=spec["epochs"], batch_size=BATCH_SIZE, optimizer="adam",
                         lr=LEARNING_RATE, threads=spec["threads"], device="cpu",
                         fit_subset=0, checkpoint_every=0)
    clock = cpu_clock()
    result = train_transfer(transfer, config, None)  # its test evaluation counts in the cores
    cores = cores_between(clock, cpu_clock())
    summary = result.summary
    # The training clock: one backbone pass over the training images, then the head's epochs.
    feature_seconds = sum(event["seconds"] for event in summary["transfer"]["cache_events"]
                          if event["split"] == "train")
    epoch_seconds = [row["seconds"] for row in result.history]
    epoch_seconds[0] += feature_seconds
    return {"images": spec["fit_images"], "train_seconds": sum(epoch_seconds),
            "epoch_seconds": epoch_seconds, "test_accuracy": summary["test"]["accuracy"],
            "test_images": spec["test_images"], "cores": cores,
            "notes": f"backbone pass {feature_seconds:.1f} s, then cached features"}


def run_dataloader(spec: dict) -> dict:
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    train, test = _load_arrays(spec)
    if spec["model"] == "transfer":
        model, trainable = _dataloader_transfer_model(spec)
        mean, std, resize = spec["transfer_mean"], spec["transfer_std"], [v2.Resize(
            (spec["transfer_size"], spec["transfer_size"]))]
    else:
        model = _torch_model(spec)
        trainable, mean, std, resize = model, train.mean, train.std, []
    steps = [v2.ToDtype(torch.float32, scale=True), *resize]
    if spec["augment"]:
        # Keras' rotation_range=30, shifts 0.1, shear 0.1 degrees, zoom 0.1, horizontal flips.
        steps = [v2.RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=0.1),
                 v2.RandomHorizontalFlip(), *steps]
    train_transform = v2.Compose([*steps, v2.Normalize(list(mean), list(std))])
    test_transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), *resize,
                                 v2.Normalize(list(mean), list(std))])

    class InMemory(Dataset):
        def __init__(self, data, transform):
            self.data, self.transform = data, transform

        def __len__(self):
            return len(self.data)

        def __getitem__(self, index):
            return self.transform(self.data.inputs[index]), self.data.targets[index]

    loader = DataLoader(InMemory(train, train_transform), batch_size=BATCH_SIZE, shuffle=True,
                        num_workers=spec["workers"])
    optimizer = torch.optim.Adam(trainable.parameters(), lr=LEARNING_RATE)
    epoch_seconds = []
    clock = cpu_clock()
    started = time.perf_counter()
    for _ in range(spec["epochs"]):
        epoch_started = time.perf_counter()
        model.train()
        if spec["model"] == "transfer":
            model[0].eval()  # the frozen backbone keeps its batch-norm statistics
        for inputs, targets in loader:
            loss = torch.nn.functional.cross_entropy(model(inputs), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - epoch_started)
    train_seconds = time.perf_counter() - started
    cores = cores_between(clock, cpu_clock())

    model.eval()
    correct = 0
    test_loader = DataLoader(InMemory(test, test_transform), batch_size=512,
                             num_workers=spec["workers"])
    with torch.no_grad():
        for inputs, targets in test_loader:
            correct += (model(inputs).argmax(dim=1) == targets).sum().item()
    return {"images": len(train), "train_seconds": train_seconds,
            "epoch_seconds": epoch_seconds, "test_accuracy": correct / len(test),
            "test_images": len(test), "cores": cores}


def _dataloader_transfer_model(spec: dict):
    """torchvision's resnet18 without its classifier, frozen, then a new linear head."""
    import numpy as np
    import torch
    import torchvision

    state = {k: torch.from_numpy(v) for k, v in np.load(spec["weights"]).items()}
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = torch.nn.Identity()
    backbone.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                              if k.startswith("features.")})
    backbone.requires_grad_(False)
    head = torch.nn.Linear(512, spec["num_classes"])
    head.load_state_dict({"weight": state["head.weight"], "bias": state["head.bias"]})
    return torch.nn.Sequential(backbone, head), head


def child(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    runner = run_cnnlab if spec["pipeline"] == "cnnlab" else run_dataloader
    result = runner(spec)
    result["peak_memory_mib"] = peak_memory_mib()
    print(json.dumps(result))


# ---- Keras' own virtual environment -------------------------------------------------------


def keras_python(venv: Path, install: bool) -> tuple[Path | None, str]:
    """The Keras environment's Python, installing it first if needed; or None and why."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='2'; "
                                 "import keras, tensorflow; "
                                 "print(keras.__version__, tensorflow.__version__)")]

    def works() -> str | None:
        if not python.exists():
            return None
        done = subprocess.run(probe, capture_output=True, text=True, timeout=600, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    versions = works()
    if versions:
        keras_version, tensorflow_version = versions.split()[:2]
        return python, f"Keras {keras_version}, TensorFlow {tensorflow_version} from {venv}"
    if not install:
        return None, f"no working Keras in {venv} and --no-keras-install was given"
    print(f"installing Keras into {venv} (pip install {' '.join(KERAS_PACKAGES)}; about "
          "250 MB, minutes) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                       capture_output=True, text=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                               *KERAS_PACKAGES], capture_output=True, text=True, timeout=3600,
                              check=False)
    except (subprocess.SubprocessError, OSError) as error:
        return None, f"could not create {venv}: {error}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        return None, f"pip install {' '.join(KERAS_PACKAGES)} failed: {last}"
    versions = works()
    if not versions:
        return None, f"Keras was installed in {venv} but does not import"
    keras_version, tensorflow_version = versions.split()[:2]
    return python, f"Keras {keras_version}, TensorFlow {tensorflow_version} (installed now)"


# ---- the parent: data, weights, the runs, the tables ----------------------------------------


def prepare(workload: Workload, images: int, test_images: int, args, folder: Path) -> dict:
    """Write the workload's images and initial weights; return the spec the children read."""
    import numpy as np
    import torch

    from cnnlab.data import limit, split_validation
    from cnnlab.models import build_model

    train = limit(_cached_split("train"), images, seed=0).with_statistics()
    test = limit(_cached_split("test"), test_images, seed=0)
    arrays = {"x_train": train.inputs.numpy(), "y_train": train.targets.numpy(),
              "x_test": test.inputs.numpy(), "y_test": test.targets.numpy(),
              "mean": np.array(train.mean), "std": np.array(train.std),
              "classes": np.array(train.classes), "num_classes": np.array(len(train.classes))}
    spec = {"workload": workload.name, "model": workload.model, "augment": workload.augment,
            "epochs": args.epochs or (workload.quick_epochs if args.quick else workload.epochs),
            "batch_size": BATCH_SIZE, "lr": LEARNING_RATE, "threads": args.threads,
            "workers": args.workers, "num_classes": len(train.classes),
            "transfer_size": args.transfer_size, "test_images": len(test)}

    torch.manual_seed(0)
    if workload.model == "transfer":
        from cnnlab._util import seed_everything
        from cnnlab.models.backbones import build_transfer_model

        backbone_weights, description = _backbone_weights(folder)
        # train_transfer carves a validation split; the other pipelines train on the same rest.
        validation = max(10, len(train) // 20)
        fit, _ = split_validation(train, validation, seed=0)
        arrays.update({"x_fit": fit.inputs.numpy(), "y_fit": fit.targets.numpy()})
        seed_everything(0)  # as train_transfer does before building: the same head weights
        model = build_transfer_model("resnet18", backbone_weights, num_classes=len(train.classes),
                                     head="linear", resize=args.transfer_size, freeze=True)
        # The model normalises with the backbone's statistics (ImageNet's for a weights file).
        spec.update({"transfer_mean": list(model.options["mean"]),
                     "transfer_std": list(model.options["std"])})
        spec.update({"backbone_weights": str(backbone_weights), "validation": validation,
                     "fit_images": len(fit), "backbone_description": description})
    else:
        options = {"cifar_stem": True} if workload.model == "resnet18" else {}
        model = build_model(workload.model, num_classes=len(train.classes), **options)
    weights = folder / f"weights-{workload.name}.npz"
    np.savez(weights, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()
                         if not k.endswith("num_batches_tracked")})
    data = folder / f"data-{workload.name}.npz"
    np.savez(data, **arrays)
    spec.update({"data": str(data), "weights": str(weights)})
    return spec


_SPLITS: dict = {}


def _cached_split(split: str):
    from cnnlab.data import load_images

    if split not in _SPLITS:
        _SPLITS[split] = load_images("cifar10", split, progress=False)
    return _SPLITS[split]


def _backbone_weights(folder: Path) -> tuple[Path, str]:
    """torchvision's ImageNet ResNet-18 weights where the hub cache has them, else random ones."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    model = torchvision.models.resnet18(weights=None)
    description = "random initialisation (seed 0): no ImageNet weights in the torch hub cache"
    try:
        from cnnlab.models.backbones import hub_weights_path

        path, _ = hub_weights_path("resnet18", "imagenet")
        if Path(path).exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            description = f"torchvision ImageNet weights ({Path(path).name})"
    except Exception as error:  # noqa: BLE001 - any trouble finding them: use the random set
        description += f" ({error})"
    target = folder / "backbone-resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target))
    return target, description


def run_variant(spec: dict, pipeline: str, folder: Path, keras: Path | None,
                keras_reason: str, timeout: int) -> Measurement:
    measurement = Measurement(spec["workload"], pipeline)
    if pipeline == "keras" and keras is None:
        measurement.skipped = keras_reason
        return measurement
    spec_path = folder / f"spec-{spec['workload']}-{pipeline}.json"
    spec_path.write_text(json.dumps({**spec, "pipeline": pipeline}))
    command = [str(keras), str(HERE / "_keras_child.py"), str(spec_path)] if pipeline == "keras" \
        else [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]),
           "CNNLAB_THREADS": str(spec["threads"]), "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                              check=False)
    except subprocess.TimeoutExpired:
        measurement.skipped = f"did not finish within {timeout} s (--child-timeout)"
        return measurement
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        measurement.skipped = f"failed: {lines[-1] if lines else f'exit {done.returncode}'}"
        return measurement
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "skipped" in result:
        measurement.skipped = result["skipped"]
        return measurement
    measurement.images = result["images"]
    measurement.epochs = spec["epochs"]
    measurement.train_seconds = result["train_seconds"]
    measurement.epoch_seconds = result["epoch_seconds"]
    measurement.test_accuracy = result["test_accuracy"]
    measurement.test_images = result["test_images"]
    measurement.peak_memory_mib = result["peak_memory_mib"]
    measurement.cores = result.get("cores", math.nan)
    measurement.notes = result.get("notes", "")
    return measurement


def select(only: list[str]) -> tuple[list[Workload], list[str]]:
    """``--only`` names workloads and/or pipelines; none named means all of that kind."""
    workload_names = {w.name for w in WORKLOADS}
    unknown = [name for name in only if name not in workload_names and name not in PIPELINES]
    if unknown:
        raise SystemExit(f"--only {', '.join(unknown)}: unknown; workloads: "
                         f"{', '.join(sorted(workload_names))}; pipelines: {', '.join(PIPELINES)}")
    workloads = [w for w in WORKLOADS if w.name in only] or list(WORKLOADS)
    pipelines = [p for p in PIPELINES if p in only] or list(PIPELINES)
    return workloads, pipelines


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and one epoch: a few minutes on 2 cores")
    parser.add_argument("--images", type=int, default=None,
                        help="training images for every workload (default: per workload)")
    parser.add_argument("--test-images", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs for every workload (default: per workload)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="a workload (lenet, lenet-augment, resnet18, transfer) or pipeline "
                        "(cnnlab, dataloader, keras); repeatable")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each variant, in rotated order (the load drifts); the "
                        "table shows the run with the median images/s")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="compute threads per variant (torch, TensorFlow); default: the "
                        "machine's cores, what each library's own default uses")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--transfer-size", type=int, default=64,
                        help="backbone input size for the transfer workload (pixels)")
    parser.add_argument("--keras-venv", type=Path, default=HERE / ".venv-keras")
    parser.add_argument("--no-keras-install", action="store_true",
                        help="use the Keras environment only if it already exists")
    parser.add_argument("--child-timeout", type=int, default=3600, help="seconds per variant")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    workloads, pipelines = select(args.only)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores. Absolute numbers depend on "
          "the load (see the load averages before and after); the ratios below are measured "
          "side by side in this one invocation")
    print(f"before: {_uptime()}", flush=True)
    keras, keras_reason = (None, "not selected")
    if "keras" in pipelines:
        keras, keras_reason = keras_python(args.keras_venv, not args.no_keras_install)
        print(f"keras: {keras_reason}", flush=True)

    results: list[Measurement] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnnlab-compare-") as temporary:
        folder = Path(temporary)
        for workload in workloads:
            images = args.images or (workload.quick_images if args.quick else workload.images)
            test_images = args.test_images or (workload.quick_test_images if args.quick
                                               else workload.test_images)
            spec = prepare(workload, images, test_images, args, folder)
            if workload.model == "transfer":
                print(f"transfer backbone: {spec['backbone_description']}")
            rounds: dict[str, list[Measurement]] = {pipeline: [] for pipeline in pipelines}
            for round_index in range(args.repeats):
                for pipeline in rotated(pipelines, round_index):
                    measurement = run_variant(spec, pipeline, folder, keras, keras_reason,
                                              args.child_timeout)
                    rounds[pipeline].append(measurement)
                    state = measurement.skipped or (
                        f"{measurement.images_per_second:,.0f} images/s, test accuracy "
                        f"{measurement.test_accuracy:.4f}")
                    print(f"  {workload.name:<14} {pipeline:<10} {state}", flush=True)
            results.extend(median_measurement(rounds[pipeline]) for pipeline in pipelines)

    print()
    print(format_results(results))
    print()
    print(format_ratios(compute_ratios(results)))
    for m in results:
        if m.notes:
            print(f"note: {m.workload} {m.pipeline}: {m.notes}")
    print(f"\nwall time {time.perf_counter() - started:.0f} s; threads per variant "
          f"{args.threads}, DataLoader workers {args.workers}, batch {BATCH_SIZE}, Adam lr "
          f"{LEARNING_RATE}")
    print(f"after: {_uptime()}")
    if args.json:
        args.json.write_text(json.dumps({
            "results": [asdict(m) | {"images_per_second": m.images_per_second}
                        for m in results],
            "ratios": [asdict(r) for r in compute_ratios(results)]}, indent=1))


if __name__ == "__main__":
    from cnnlab._util import run_script

    run_script(main)
