"""``cnnlab train --task ...`` and ``cnnlab evaluate`` for tasks other than image classification."""

from __future__ import annotations

from pathlib import Path

from cnnlab._util import CnnlabError


def run_task(args) -> int:
    if args.task == "binary":
        return train_binary_cli(args)
    if args.task == "segment":
        return train_segment_cli(args)
    if args.task in ("text", "speech", "tabular"):
        return train_beyond_cli(args)
    raise CnnlabError(f"--task {args.task} is not available in this version of the CLI")


def evaluate_task(args, task: str) -> int:
    if task == "binary":
        return evaluate_binary_cli(args)
    if task == "segment":
        import json

        from cnnlab.train.segmentation import evaluate_segmentation

        result = evaluate_segmentation(args.run, device=args.device)
        print(json.dumps(result, indent=2, default=str) if args.json else _format_flat(result))
        return 0
    raise CnnlabError(f"evaluating {task} runs is not available in this version of the CLI")


def _format_flat(result: dict) -> str:
    return "\n".join(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}"
                     for key, value in result.items() if not isinstance(value, (dict, list)))


def train_segment_cli(args) -> int:
    """``cnnlab train --task segment --data seg-membrane --loss iou``."""
    import json

    from cnnlab.train.segmentation import train_segmentation

    model = "unet_tiny" if args.model == "lenet5" else args.model
    out = args.out or f"runs/segment-{args.loss}-{Path(args.data).name or 'data'}"
    data = "seg-membrane" if args.data == "cifar10" else args.data
    result = train_segmentation(data, args.loss, out, args.epochs, model=model, size=args.resize,
                                batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                device=args.device, threads=args.threads,
                                progress=not (args.quiet or args.jsonl))
    metrics = result.summary.get("segmentation", {})
    if args.jsonl:
        print(json.dumps({"event": "summary", "run": out, **metrics}, default=str))
    else:
        print(f"run: {out}")
        print(_format_flat(metrics))
    return 0


def train_beyond_cli(args) -> int:
    """``cnnlab train --task text|speech|tabular --data PATH``: the CNN beside its baseline."""
    import json

    common = dict(epochs=args.epochs, seed=args.seed, device=args.device,
                  out_dir=args.out or f"runs/{args.task}-{Path(args.data).name or 'data'}",
                  progress=not (args.quiet or args.jsonl))
    if args.task == "text":
        from cnnlab.lab.text import train_text

        result = train_text(args.data, **common)
    elif args.task == "speech":
        from cnnlab.lab.speech import train_speech

        result = train_speech(args.data, pattern=args.pattern, **common)
    else:
        if not args.target:
            raise CnnlabError("--task tabular needs --target COLUMN, the column to predict")
        from cnnlab.lab.tabular import train_tabular

        result = train_tabular(args.data, target=args.target, **common)
    print(json.dumps(result, indent=2, default=str))
    return 0


def train_binary_cli(args) -> int:
    """``cnnlab train --task binary``: calls :func:`cnnlab.runs.binary.train_binary_spec`."""
    import json
    from pathlib import Path

    from cnnlab.cli.train import (
        model_options,
        monitor_callbacks,
        progress_callbacks,
        train_config,
    )
    from cnnlab.runs.binary import BinarySpec, policy_table_text, train_binary_spec

    if args.limit is not None:
        raise CnnlabError("--limit is not available with --task binary: a subset by image would "
                          "cut groups of photographs of one part apart; train on a smaller "
                          "folder instead")
    spec = BinarySpec(
        data=args.data, positive=args.positive, model=args.model,
        model_options=model_options(args), size=args.resize or 64,
        contrast=args.contrast, augment=None if args.augment == "none" else args.augment,
        imbalance=args.imbalance,
        focal_gamma=args.focal_gamma, skip_bad=args.skip_bad, min_recall=args.min_recall,
        min_precision=args.min_precision, cost_escape=args.cost_escape,
        cost_false_alarm=args.cost_false_alarm, defect_rate=args.defect_rate)
    out = args.resume or args.out or f"runs/binary-{args.model}-{Path(args.data).name or 'data'}"
    callbacks = progress_callbacks(args) + monitor_callbacks(args, out)
    summary = train_binary_spec(spec, train_config(args), out, resume=args.resume is not None,
                                callbacks=callbacks, progress=not (args.quiet or args.jsonl))
    if args.jsonl:
        print(json.dumps({"event": "summary", "run": out, **summary}, default=str))
        return 0
    print(f"run: {out}")
    print(policy_table_text(summary))
    print(f"time: {summary['wall_seconds']:.1f} s training; figures: "
          f"{summary['figures']['pr_roc']}, {summary['figures']['confusion']}")
    return 0


def evaluate_binary_cli(args) -> int:
    """``cnnlab evaluate RUN`` for a binary run: calls ``cnnlab.runs.binary.evaluate_binary``."""
    import json

    from cnnlab.runs.binary import evaluate_binary, policy_table_text

    if getattr(args, "split", "test") != "test":
        raise CnnlabError(f"--split {args.split} does not apply to binary runs: thresholds are "
                          "chosen on validation and reported on test")
    result = evaluate_binary(
        args.run, min_recall=args.min_recall,
        min_precision=getattr(args, "min_precision", None),
        cost_escape=getattr(args, "cost_escape", None),
        cost_false_alarm=getattr(args, "cost_false_alarm", None),
        defect_rate=getattr(args, "defect_rate", None),
        rescore=getattr(args, "rescore", False), device=args.device)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(policy_table_text(result))
    print(f"figures: {result['figures']['pr_roc']}, {result['figures']['confusion']}")
    return 0
