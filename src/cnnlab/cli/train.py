"""``cnnlab train``: train a model on a dataset and leave a run directory."""

from __future__ import annotations

import argparse
import json
import sys

from cnnlab._util import CnnlabError

TASKS = ("classify", "binary", "segment", "text", "speech", "tabular")
DEFAULT_EPOCHS = 10  # cnnlab train without --epochs (the fast preset uses its recipe's)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def validation_amount(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a count >= 1 or a fraction in (0, 1), "
                                         f"got {text}")
    return value if value < 1 else int(value)


def add_parser(subparsers) -> None:
    from cnnlab.augment.affine import PRESETS
    from cnnlab.train.config import OPTIMIZERS, SCHEDULES

    parser = subparsers.add_parser(
        "train", help="train a model and write a run directory",
        description="Train a model on a dataset. The run directory receives config.json, "
        "metrics.csv, curves.png, summary.json (test metrics and fit verdict) and the weights.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = parser.add_argument_group("what to train")
    what.add_argument("--task", choices=TASKS, default="classify",
                      help="the learning task")
    what.add_argument("--model", default="lenet5",
                      help="model name (cnnlab inspect --list-models shows them)")
    what.add_argument("--data", default="cifar10",
                      help="dataset name (cifar10) or a path: a folder of class folders, a folder "
                      "with train/ and test/, cifar-10-batches-py, or an .npz")
    what.add_argument("--augment", default="none", choices=sorted(PRESETS),
                      help="augmentation preset applied on the device per batch")
    what.add_argument("--limit", type=positive_int, default=None,
                      help="train on a deterministic stratified subset of N training images")
    what.add_argument("--validation", type=validation_amount, default=0.1,
                      help="validation split carved from train: a fraction or a count")
    what.add_argument("--resize", type=positive_int, default=None,
                      help="resize every image to N x N pixels")
    what.add_argument("--skip-bad", action="store_true",
                      help="skip unreadable image files (listed in skipped.json) instead of "
                      "stopping")
    what.add_argument("--out", default=None, help="run directory (default runs/<model>-<data>)")
    what.add_argument("--resume", metavar="RUN", default=None,
                      help="continue the run in this directory from its checkpoint")

    model = parser.add_argument_group("model options (only those the model takes)")
    model.add_argument("--activation", default=None, help="relu, leaky_relu, gelu, tanh, sigmoid")
    model.add_argument("--pooling", default=None, help="lenet5: max or avg")
    model.add_argument("--depth", type=positive_int, default=None,
                       help="plain: convolutions; small_cnn: convolutions per stage")
    model.add_argument("--norm", default=None, help="none, batch or group")
    model.add_argument("--init", default=None,
                       help="default, xavier, kaiming, orthogonal, normal, large")
    model.add_argument("--residual", action="store_true", default=None,
                       help="plain: add skip connections (a ResNet of the same depth)")
    model.add_argument("--widths", default=None, help="small_cnn: channels per stage, e.g. 32,64")
    model.add_argument("--dropout", type=float, default=None, help="dropout before the head")
    model.add_argument("--downsample", default=None, help="small_cnn: max, avg, stride or none")
    model.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other model option (JSON value), repeatable")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=positive_int, default=None,
                       help=f"training epochs (default {DEFAULT_EPOCHS}; with --preset fast, "
                       "the recipe's own number)")
    optim.add_argument("--batch-size", type=positive_int, default=128)
    optim.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    optim.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate")
    optim.add_argument("--weight-decay", type=float, default=0.0)
    optim.add_argument("--schedule", choices=SCHEDULES, default="none")
    optim.add_argument("--warmup-epochs", type=float, default=0.0)
    optim.add_argument("--label-smoothing", type=float, default=0.0)
    optim.add_argument("--clip-norm", type=positive_float, default=None,
                       help="clip the global gradient norm")
    optim.add_argument("--clip-value", type=positive_float, default=None,
                       help="clip each gradient element to [-V, V]")
    optim.add_argument("--early-stopping", type=positive_int, default=None, metavar="EPOCHS",
                       help="stop when validation loss has not improved for this many epochs")

    # ---- binary task options (--task binary; owned with cnnlab.runs.binary) ----
    binary = parser.add_argument_group(
        "binary task options (--task binary: good vs. defective, judged by escapes)")
    binary.add_argument("--positive", default="defective",
                        help="the class folder to catch (the positive class)")
    binary.add_argument("--imbalance", choices=("pos_weight", "sampler", "none"),
                        default="pos_weight",
                        help="pos_weight: weight positives by negatives/positives of train; "
                        "sampler: class-balanced epochs; none: the data as it is")
    binary.add_argument("--contrast", choices=("none", "per_image"), default="none",
                        help="per_image: standardise each image on its own (photographs under "
                        "several exposures)")
    binary.add_argument("--focal-gamma", type=float, default=0.0,
                        help="focal loss exponent (0: plain binary cross-entropy)")
    binary.add_argument("--min-recall", type=float, default=0.99,
                        help="recall of positives the min_recall threshold must reach on "
                        "validation (0.99: at most 1%% escape)")
    binary.add_argument("--min-precision", type=float, default=0.95,
                        help="precision the min_precision threshold must reach on validation")
    binary.add_argument("--cost-escape", type=float, default=10.0,
                        help="cost of one positive (defect) that passes, for min_cost")
    binary.add_argument("--cost-false-alarm", type=float, default=1.0,
                        help="cost of one negative (good part) flagged, for min_cost")
    binary.add_argument("--defect-rate", type=float, default=None,
                        help="share of positives on the real line, for escapes and discards "
                        "per 10,000 parts (default: the share in the data)")
    # ---- end of binary task options ----

    other = parser.add_argument_group("segment, text, speech and tabular tasks")
    other.add_argument("--loss", default="bce",
                       help="segment: bce, iou, dice, bce+dice, lovasz or focal")
    other.add_argument("--target", default=None, help="tabular: the target column of the CSV")
    other.add_argument("--pattern", default=None,
                       help="speech: a regular expression with a named group 'label' matched "
                       "against each WAV file name")

    run = parser.add_argument_group("running")
    run.add_argument("--preset", choices=("fast",), default=None,
                     help="fast: the accuracy-per-minute CIFAR-10 recipe (cnnlab.runs.fast); "
                     "fixes model, optimiser, schedule and augmentation")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    run.add_argument("--threads", type=positive_int, default=None,
                     help="torch threads (default: CNNLAB_THREADS or torch's choice)")
    run.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                     help="store activations channels-last (default: off; faster per step on "
                     "the CPU, but torch 2.14.1's oneDNN can abort with it there: see "
                     "TrainConfig.channels_last)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--no-amp", action="store_true", help="disable mixed precision on GPU")
    run.add_argument("--nproc", type=positive_int, default=None,
                     help="train with N data-parallel processes on this machine (launches "
                     "torchrun; gloo on CPU, NCCL on GPUs)")
    run.add_argument("--monitor", action="append", default=[], choices=["gradients"],
                     help="watch gradients and activations while training")
    output = run.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="print only the final summary")
    output.add_argument("--jsonl", action="store_true",
                        help="print one JSON object per epoch and the summary as JSON")

    # ---- transfer options (cnnlab.runs.transfer, cnnlab.models.backbones) ----
    add_transfer_options(parser)
    # ---- end of transfer options ----
    parser.set_defaults(handler=run_command)


def model_options(args) -> dict:
    options = {name: getattr(args, name) for name in
               ("activation", "pooling", "depth", "norm", "init", "residual", "widths",
                "dropout", "downsample")}
    for item in args.model_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise CnnlabError(f"--model-option {item!r} must look like KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return {k: v for k, v in options.items() if v is not None}


def train_config(args):
    from cnnlab.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing, clip_norm=args.clip_norm,
        clip_value=args.clip_value, early_stopping_patience=args.early_stopping,
        device=args.device, seed=args.seed, threads=args.threads, amp=not args.no_amp,
        channels_last=args.channels_last, compile=args.compile)


def progress_callbacks(args) -> list:
    from cnnlab.cli._progress import ConsoleProgress, JsonLinesProgress
    from cnnlab.train.distributed import is_main_process

    if not is_main_process():
        return []
    if args.jsonl:
        return [JsonLinesProgress()]
    if args.quiet:
        return []
    return [ConsoleProgress()]


def launch_torchrun(args) -> int:
    """Re-run this command under torchrun with ``--nproc`` processes (the flag removed)."""
    import subprocess

    argv, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        argv.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.nproc}", "-m", "cnnlab.cli.main", *argv]
    return subprocess.run(command, check=False).returncode


def run_command(args) -> int:
    import os

    if args.preset == "fast":  # the accuracy-per-minute recipe: src/cnnlab/cli/_fast.py
        from cnnlab.cli._fast import run_preset
        return run_preset(args)  # --epochs left unset: the recipe's own epochs
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_torchrun(args)
    if uses_transfer(args):  # transfer options: see the block at the end of this file
        return run_transfer_command(args)
    if args.task != "classify":
        from cnnlab.cli import _tasks

        return _tasks.run_task(args)
    from cnnlab.runs import RunSpec, train_run

    spec = RunSpec(model=args.model, model_options=model_options(args), data=args.data,
                   augment=None if args.augment == "none" else args.augment, limit=args.limit,
                   validation=args.validation, resize=args.resize, skip_bad=args.skip_bad)
    out = args.resume or args.out or f"runs/{args.model}-{_data_name(args.data)}"
    callbacks = progress_callbacks(args) + monitor_callbacks(args, out)
    result = train_run(spec, train_config(args), out, resume=args.resume is not None,
                       callbacks=callbacks, progress=not (args.quiet or args.jsonl))
    from cnnlab.train.distributed import is_main_process

    if is_main_process():
        print_summary(result.summary, out, args.jsonl)
    return 0


def monitor_callbacks(args, out: str) -> list:
    if not args.monitor:
        return []
    from cnnlab.diagnose.monitor import GradientMonitor

    return [GradientMonitor(out)]


def _data_name(data: str) -> str:
    from pathlib import Path

    return Path(data).name or "data"


def print_summary(summary: dict, out: str, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"event": "summary", "run": out, **summary}, default=str)
                         + "\n")
        return
    verdict = summary.get("fit_verdict", {})
    test = summary.get("test")
    print(f"run: {out}")
    if test:
        print(f"test: accuracy {test['accuracy']:.4f}, loss {test['loss']:.4f}")
    print(f"time: {summary['wall_seconds']:.1f} s training, median "
          f"{summary['train_images_per_second']:,.0f} images/s, peak memory "
          f"{summary['peak_memory_bytes'] / 2**20:,.0f} MiB")
    if verdict:
        print(f"fit: {verdict['verdict']}: {verdict['reason']}")
    for gradient in summary.get("gradient_verdicts") or []:
        if isinstance(gradient, dict) and gradient.get("kind") not in (None, "none"):
            print(f"gradients: {gradient['kind']}: {gradient.get('summary') or gradient}")


# ---- transfer options (cnnlab.runs.transfer, cnnlab.models.backbones) ----------------------


def add_transfer_options(parser) -> None:
    transfer = parser.add_argument_group(
        "transfer options (any of these switches to transfer learning: --model names the "
        "backbone, e.g. resnet50, and --resize its input size, applied on the device)")
    transfer.add_argument("--weights", default=None, metavar="imagenet|PATH|RUN|none",
                          help="backbone weights: imagenet (torchvision's, from the torch hub "
                          "cache), a .safetensors/.pt file, a cnnlab run directory, or none "
                          "(default with other transfer options: imagenet)")
    transfer.add_argument("--freeze", action="store_true",
                          help="keep the backbone fixed, batch-norm statistics included")
    transfer.add_argument("--head", choices=("linear", "mlp"), default=None,
                          help="linear: one layer on pooled features; mlp: 256 ReLU units, "
                          "dropout (--dropout, default 0.5), classifier (default linear)")
    transfer.add_argument("--layer", default=None,
                          help="feature layer: a torchvision name (layer2.3) or a Keras "
                          "ResNet-50 alias (conv3_block4_out); default: the final feature map")
    transfer.add_argument("--fine-tune-from", default=None, metavar="STAGE",
                          help="train the backbone from this stage on (layer3, conv4, "
                          "blocks.1); earlier stages stay fixed")
    transfer.add_argument("--backbone-lr", type=positive_float, default=None,
                          help="learning rate of the backbone when fine-tuning (default: a "
                          "tenth of --lr)")
    transfer.add_argument("--cache-features", action=argparse.BooleanOptionalAction,
                          default=None,
                          help="compute a frozen backbone's features once and train the head "
                          "on them (default: on where it applies: --freeze, no --augment)")
    transfer.add_argument("--feature-cache", default=None, metavar="DIR|memory",
                          help="where cached features are kept (default: the cnnlab cache's "
                          "features/ folder)")


def uses_transfer(args) -> bool:
    """Transfer options given, or --resume of a transfer run."""
    if any(getattr(args, name, None) for name in (
            "weights", "freeze", "head", "layer", "fine_tune_from", "backbone_lr")):
        return True
    if args.resume:
        from pathlib import Path

        config = Path(args.resume) / "config.json"
        return config.exists() and "transfer" in json.loads(config.read_text())
    return False


def run_transfer_command(args) -> int:
    if args.task != "classify":
        raise CnnlabError(f"transfer options work with image classification, not --task "
                          f"{args.task}; drop --weights/--freeze/--layer/--head or the --task")
    from cnnlab.runs.transfer import TransferSpec, train_transfer

    options = model_options(args)
    dropout = options.pop("dropout", None)
    # --model keeps its default (lenet5, not a backbone) when a cnnlab run names the backbone.
    backbone = None if args.model == "lenet5" else args.model
    spec = TransferSpec(
        backbone=backbone, weights=args.weights or "imagenet", data=args.data,
        resize=args.resize, layer=args.layer, head=args.head or "linear", freeze=args.freeze,
        fine_tune_from=args.fine_tune_from, backbone_lr=args.backbone_lr,
        cache_features=args.cache_features, feature_cache=args.feature_cache,
        dropout=0.5 if dropout is None else dropout, backbone_options=options,
        augment=None if args.augment == "none" else args.augment, limit=args.limit,
        validation=args.validation, skip_bad=args.skip_bad)
    out = args.resume or args.out or \
        f"runs/{backbone or 'transfer'}-{_data_name(args.data)}-transfer"
    callbacks = progress_callbacks(args) + monitor_callbacks(args, out)
    result = train_transfer(spec, train_config(args), out, resume=args.resume is not None,
                            callbacks=callbacks, progress=not (args.quiet or args.jsonl))
    print_summary(result.summary, out, args.jsonl)
    if not args.jsonl:
        transfer = result.summary["transfer"]
        print(f"weights: {transfer['weights']} (hash {transfer['weights_hash']}), features at "
              f"{transfer['layer']} ({transfer['feature_channels']} channels)")
        events = transfer["cache_events"]
        if events:
            print("feature cache: " + ", ".join(
                f"{e['split']} {e['source']} ({e['seconds']:.1f} s)" for e in events))
    return 0
