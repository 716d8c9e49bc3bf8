"""``cnnlab inspect``: shapes, parameters, receptive fields and MACs of a model or a layer spec."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab._util import CnnlabError, write_text_atomic


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="per-layer shapes, parameters, receptive fields and MACs",
        description="Inspect a network at one input size: one row per layer (leaf modules, "
        "residual additions, concatenations, flattens) with output shape, parameters "
        "(trainable and frozen), receptive field, jump (effective stride), start and MACs. "
        "MODEL is a cnnlab model, a torchvision model (resnet18), module:factory, or a layer "
        "spec such as \"conv3x3-16, conv3x3-32\" (see docs/inspect.md for the grammar).",
        epilog="examples:\n"
        "  cnnlab inspect resnet18 --input 3x224x224\n"
        "  cnnlab inspect \"conv3x3-16, conv3x3-32\" --input 3xNxN\n"
        "  cnnlab inspect resnet18 --input 3x224x224 --draw rf.png --layer layer3\n"
        "  cnnlab inspect resnet50 --layers",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="model name, module:factory, or a layer spec")
    parser.add_argument("--input", default=None, metavar="CxHxW",
                        help="one input without the batch, channels first (default 3x32x32; "
                        "3xNxN for a layer spec; names such as N are allowed only in a spec)")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="keyword option for the model factory, e.g. num_classes=10 "
                        "(repeatable)")
    parser.add_argument("--input-dtype", choices=("float", "long"), default="float",
                        help="long: integer inputs such as token ids (every axis a position)")
    parser.add_argument("--trace", choices=("auto", "fx", "run"), default="auto",
                        help="how to get the graph: torch.fx, a recorded forward pass, or fx "
                        "with the recorded pass as fallback")
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print JSON instead of a table")
    output.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    output.add_argument("--out", default=None, metavar="FILE",
                        help="write to FILE instead of the terminal (.json, .csv or text)")
    output.add_argument("--layers", action="store_true",
                        help="list the layer names --layer accepts (submodules) and stop")
    output.add_argument("--list-models", action="store_true",
                        help="list cnnlab's and torchvision's model names and stop")
    draw = parser.add_argument_group("receptive-field picture")
    draw.add_argument("--draw", default=None, metavar="PNG",
                      help="write a picture of one unit's theoretical and gradient-measured "
                      "receptive field")
    draw.add_argument("--layer", default=None, metavar="NAME",
                      help="the layer whose unit to draw (default: the last layer with "
                      "positions)")
    draw.add_argument("--unit", default=None, metavar="Y,X",
                      help="output position of the unit (default: the centre)")
    draw.add_argument("--image", default=None, metavar="FILE",
                      help="input image for the gradient (default: random inputs, averaged)")
    draw.add_argument("--samples", type=int, default=8,
                      help="random inputs to average when no --image is given")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cnnlab._util import set_threads
    from cnnlab.inspect import known_model_names

    if args.list_models:
        _emit("\n".join(known_model_names()) + "\n", args.out)
        return 0
    if not args.model:
        raise CnnlabError("name a MODEL (e.g. resnet18), module:factory or a layer spec "
                          "(e.g. \"conv3x3-16, conv3x3-32\"); --list-models lists the names")
    if args.json and args.csv:
        raise CnnlabError("choose one of --json and --csv")
    set_threads(None)

    if _is_spec(args.model):
        return _run_spec(args)
    return _run_model(args)


def _is_spec(text: str) -> bool:
    """A layer spec, or an attempt at one whose error should show the spec grammar."""
    import re

    from cnnlab.inspect import looks_like_spec

    if looks_like_spec(text):
        return True
    first = text.split(",")[0].strip().lower()
    # conv3x3-16 but not convnext_tiny: a spec's kernel size follows the keyword at once.
    return "," in text or bool(re.match(r"(dw|t)?conv\d|(max|avg)pool\d|(fc|linear)-", first))


def _run_spec(args: argparse.Namespace) -> int:
    from cnnlab.inspect import analyse_spec, render_spec_table, render_text
    from cnnlab.inspect._spec_render import spec_csv

    if args.draw or args.layers:
        raise CnnlabError("--draw and --layers need a model; for a layer spec, inspect it as "
                          "is (the spec has no weights)")
    result = analyse_spec(args.model, args.input or "3xNxN")
    if _wants(args, "json"):
        import json

        _emit(json.dumps(result.to_dict(), indent=2) + "\n", args.out)
    elif _wants(args, "csv"):
        _emit(spec_csv(result), args.out)
    else:
        _emit_table(render_spec_table(result), args.out, render_text)
    return 0


def _run_model(args: argparse.Namespace) -> int:
    import torch

    from cnnlab.inspect import (
        MetaDeviceError,
        draw_receptive_field,
        inspect,
        layer_names,
        load_model,
        parse_options,
        render_table,
        render_text,
    )

    options = parse_options(args.option)
    input_shape = args.input or "3x32x32"
    # Weights do not matter for the table, so the model is built on the meta device
    # (instant even for VGG-16); the picture needs real weights for its gradients.
    model = load_model(args.model, options, meta=not args.draw)
    dtype = torch.long if args.input_dtype == "long" else torch.float32

    if args.layers:
        lines = [f"{name}\t{type(module).__name__}" for name, module in model.named_modules()
                 if name]
        _emit("\n".join(lines) + "\n", args.out)
        return 0
    try:
        result = inspect(model, input_shape, input_dtype=dtype, name=args.model,
                         trace=args.trace)
    except MetaDeviceError:
        if args.draw:
            raise
        # Some models (detection heads with nonzero) need real values: build them for real.
        model = load_model(args.model, options)
        result = inspect(model, input_shape, input_dtype=dtype, name=args.model,
                         trace=args.trace)

    if args.draw:
        layer = args.layer or _default_layer(result, set(layer_names(model)))
        unit = _parse_unit(args.unit)
        picture = draw_receptive_field(model, input_shape, layer, Path(args.draw), unit=unit,
                                       image=args.image, samples=args.samples,
                                       title=f"{args.model}: {layer}")
        if _wants(args, "json"):
            import json

            _emit(json.dumps(picture.to_dict(), indent=2) + "\n", args.out)
            return 0
        print(_picture_summary(picture))
        return 0

    if _wants(args, "json"):
        _emit(result.to_json(), args.out)
    elif _wants(args, "csv"):
        _emit(result.to_csv(), args.out)
    else:
        _emit_table(render_table(result), args.out, render_text)
    return 0


def _wants(args: argparse.Namespace, kind: str) -> bool:
    if getattr(args, kind):
        return True
    return bool(args.out) and Path(args.out).suffix.lower() == f".{kind}" \
        and not (args.json or args.csv)


def _emit(text: str, out: str | None) -> None:
    if out:
        write_text_atomic(out, text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _emit_table(table, out: str | None, render_text) -> None:
    if out or not sys.stdout.isatty():
        # Files and pipes get the full table; rich would squeeze it to 80 columns.
        _emit(render_text(table, width=200), out)
        return
    from rich.console import Console

    Console().print(table)


def _parse_unit(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise CnnlabError(f"--unit {text!r} must be indices separated by commas, e.g. 3,3") \
            from None


def _default_layer(result, module_names: set[str]) -> str:
    for row in reversed(result.rows):
        if (row.name in module_names and row.spans is not None and len(row.spans) == 2
                and all(span.axis is not None for span in row.spans)):
            return row.name
    raise CnnlabError(f"{result.model} has no layer with two-dimensional positions to draw; "
                      "name one with --layer")


def _picture_summary(picture) -> str:
    def size(box) -> str:
        return "x".join(str(last - first + 1) for first, last in box) if box else "-"

    return (
        f"wrote {picture.path}: {picture.layer}, unit {picture.unit}\n"
        f"  theoretical field {size(picture.theoretical_box)} px at {picture.theoretical_box}\n"
        f"  pixels with a non-zero gradient: {size(picture.gradient_box)} px "
        f"({picture.mass_inside_theoretical:.1%} of |gradient| inside the theoretical box)\n"
        f"  {picture.mass:.0%} of |gradient| within {size(picture.effective_box)} px "
        f"(averaged over {picture.samples} input(s))"
    )
