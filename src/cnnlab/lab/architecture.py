"""Study "architecture": the arithmetic of convolutional networks, computed, not recalled.

No training: every number comes from :mod:`cnnlab.inspect` (the traced graph
of real torchvision and cnnlab networks, on the meta device) or from its
layer-spec arithmetic. The questions are the ones architecture lectures
answer from memory:

- how parameters and multiply-adds are spread over classic networks;
- what weight sharing saves, against the same connections without sharing
  (locally connected) and against fully connected layers;
- why stacks of 3x3 convolutions replaced 5x5 and 7x7 kernels;
- what the position of a stride does to the receptive field and the cost;
- how large ResNet fields are, and how much of a field the gradient of an
  untrained network actually uses (the effective receptive field).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from cnnlab._util import CnnlabError
from cnnlab.inspect import (
    InspectResult,
    analyse_spec,
    draw_receptive_field,
    inspect,
    load_model,
)
from cnnlab.lab.study import Figure, Study, StudyContext, StudyResult, Table, register

log = logging.getLogger(__name__)

CHANNELS = 64  # width of the kernel-size and stride comparisons
IMAGE = "3x224x224"

# (label, source, input, factory options); torchvision names are spelled in full so
# that cnnlab's own models of the same name are not picked instead.
NETWORKS = [
    ("LeNet-5", "lenet5", "3x32x32", {}),
    ("VGG-16", "torchvision.models:vgg16", IMAGE, {}),
    ("ResNet-18", "torchvision.models:resnet18", IMAGE, {}),
    ("ResNet-50", "torchvision.models:resnet50", IMAGE, {}),
    ("DenseNet-121", "torchvision.models:densenet121", IMAGE, {}),
    ("GoogLeNet", "torchvision.models:googlenet", IMAGE,
     {"aux_logits": False, "init_weights": False}),
    ("MobileNetV3-Small", "torchvision.models:mobilenet_v3_small", IMAGE, {}),
    ("EfficientNet-B0", "torchvision.models:efficientnet_b0", IMAGE, {}),
]
LENET_SPEC = "conv5-6, relu, maxpool2, conv5-16, relu, maxpool2, fc-120, relu, fc-84, fc-10"


def run(ctx: StudyContext) -> StudyResult:
    started = time.perf_counter()
    numbers: dict[str, Any] = {}
    tables: list[Table] = []
    figures: list[Figure] = []

    tables.append(_networks_table(ctx, numbers))
    tables.append(_sharing_table(ctx, numbers))
    tables.append(_kernel_table(numbers))
    tables.append(_stride_table(numbers))
    stage_table, growth = _resnet_stages(ctx, numbers)
    tables.append(stage_table)
    figures.append(_growth_figure(ctx.out_dir / "field_growth.png", growth, numbers))
    figures.append(_effective_field(ctx, numbers))

    return StudyResult(
        name="architecture",
        title=STUDY.title,
        question=STUDY.question,
        setup={
            "source": "cnnlab.inspect on the traced graphs (meta device, no weights needed) "
                      "and the layer-spec arithmetic; no training",
            "channels in kernel and stride comparisons": CHANNELS,
            "effective field": "gradient of one centre unit w.r.t. the input, untrained "
                               "ResNet-18 (torchvision initialisation), random normal inputs",
        },
        tables=tables,
        figures=figures,
        findings=_findings(numbers, ctx),
        numbers=numbers,
        wall_seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------- classic networks

def _networks_table(ctx: StudyContext, numbers: dict[str, Any]) -> Table:
    chosen = ctx.pick(smoke=NETWORKS[:1] + NETWORKS[2:3], cpu=NETWORKS, full=NETWORKS)
    rows = []
    for label, source, shape, options in chosen:
        model = _load(source, options)
        result = inspect(model, shape, name=label)
        linear = sum(r.params for r in result.rows if r.type in ("Linear", "linear"))
        stage = _last_spatial_row(result)
        entry = {
            "input": shape, "params": result.total_params, "macs": result.total_macs,
            "linear_share": linear / result.total_params,
            "last_stage_field": _first(stage.receptive_field) if stage else None,
            "last_stage_jump": _first(stage.jump) if stage else None,
            "inspect_seconds": round(result.seconds, 3),
        }
        numbers[f"network_{label}"] = entry
        rows.append([label, shape, f"{entry['params'] / 1e6:.2f}", f"{entry['macs'] / 1e9:.3f}",
                     f"{100 * entry['linear_share']:.1f}",
                     _text(entry["last_stage_field"]), _text(entry["last_stage_jump"]),
                     f"{entry['inspect_seconds']:.2f}"])
    return Table(
        title="Parameters, multiply-adds and receptive fields of classic networks",
        columns=["network", "input", "parameters (M)", "MACs (G)", "in linear layers (%)",
                 "field of last spatial layer (px)", "jump (px)", "inspect (s)"],
        rows=rows,
        caption="MACs: multiply-accumulates of one image in convolutions and linear layers. "
                "The last spatial layer is the last one before global pooling or flattening; "
                "its field is the theoretical one, which may exceed the image. MobileNetV3 and "
                "EfficientNet gate their channels with squeeze-and-excitation blocks computed "
                "from the whole map, so from the first such block on every unit depends on "
                "the whole input.",
    )


def _load(source: str, options: dict[str, Any]) -> torch.nn.Module:
    if source == "lenet5":
        try:
            return load_model("lenet5", meta=True)
        except CnnlabError as error:  # the models layer may lack it: fall back to the spec
            log.info("lenet5 is not available (%s); using the layer spec", error)
            from cnnlab.inspect import build_spec_model

            return build_spec_model(LENET_SPEC, "3x32x32")
    return load_model(source, options, meta=True)


def _last_spatial_row(result: InspectResult):
    for row in reversed(result.rows):
        if row.spans and all(s.axis is not None and s.step is not None and s.exact
                             for s in row.spans) and row.output_shape and \
                all(size > 1 for size in row.output_shape[1:]):
            return row
    return None


def _first(values) -> float | None:
    if not values or values[0] is None:
        return None
    value = values[0]
    return int(value) if value.denominator == 1 else float(value)


def _text(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:g}"


# ---------------------------------------------------------------- weight sharing

def _sharing_table(ctx: StudyContext, numbers: dict[str, Any]) -> Table:
    cases = [
        ("one conv3x3-64", "conv3x3-64/p1", "3x32x32"),
        ("one conv3x3-64", "conv3x3-64/p1", IMAGE),
        ("VGG-16 first block", "conv3x3-64/p1, relu, conv3x3-64/p1", IMAGE),
        ("LeNet-5 convolutions", "conv5-6, relu, maxpool2, conv5-16, relu, maxpool2", "3x32x32"),
    ]
    rows = []
    for label, spec, shape in cases:
        result = analyse_spec(spec, shape)
        saving = result.saving()
        entry = {
            "spec": spec, "input": shape, "shared": result.total_params,
            "locally_connected": result.total_locally_connected,
            "fully_connected": result.total_fully_connected,
            "locally_connected_ratio": saving["locally_connected"],
            "fully_connected_ratio": saving["fully_connected"],
        }
        numbers[f"sharing_{label}_{shape}"] = entry
        rows.append([label, spec, shape, f"{entry['shared']:,}",
                     f"{entry['locally_connected']:,}", f"{entry['fully_connected']:,}",
                     f"{entry['locally_connected_ratio']:,.0f}",
                     f"{entry['fully_connected_ratio']:,.0f}"])
    return Table(
        title="What weight sharing saves: parameters of the same stack three ways",
        columns=["stack", "spec", "input", "convolution", "locally connected",
                 "fully connected", "locally / conv", "fully / conv"],
        rows=rows,
        caption="Locally connected: the same connections as the convolution but a separate "
                "kernel and bias at every output position. Fully connected: every output unit "
                "connected to every input unit. Symbolic forms: `cnnlab inspect SPEC --input "
                "3xNxN`.",
    )


# ---------------------------------------------------------------- kernel sizes

def _kernel_table(numbers: dict[str, Any]) -> Table:
    rows = []
    shape = f"{CHANNELS}x56x56"
    for depth in (1, 2, 3):
        large = 2 * depth + 1
        designs = [(f"{depth} x conv3x3", ", ".join([f"conv3x3-{CHANNELS}/p1"] * depth), depth)]
        if depth > 1:
            designs.append((f"1 x conv{large}x{large}", f"conv{large}-{CHANNELS}/p{depth}", 1))
        for label, spec, nonlinear in designs:
            result = analyse_spec(spec, shape)
            entry = {"field": int(result.rows[-1].receptive_field[0]),
                     "params": result.total_params, "macs": result.total_macs,
                     "nonlinearities": nonlinear}
            numbers[f"kernel_{label}"] = entry
            rows.append([label, entry["field"], f"{entry['params']:,}",
                         f"{entry['macs'] / 1e6:,.1f}", nonlinear])
    return Table(
        title=f"Stacked 3x3 convolutions against one larger kernel ({CHANNELS} channels in and "
              "out, 56x56 maps)",
        columns=["design", "receptive field (px)", "parameters", "MACs (M)",
                 "nonlinearities (one per layer)"],
        rows=rows,
        caption="Same padding, stride 1; parameters include biases.",
    )


# ---------------------------------------------------------------- stride position

def _stride_table(numbers: dict[str, Any]) -> Table:
    depth = 6
    rows = []
    placements: list[tuple[str, list[int]]] = [("no stride", [])]
    placements += [(f"stride 2 at layer {i}", [i]) for i in (1, 3, 6)]
    placements += [("stride 2 at layers 1 and 2", [1, 2]), ("stride 2 at layers 5 and 6", [5, 6])]
    for label, strided in placements:
        items = [f"conv3x3-{CHANNELS}/p1" + ("/s2" if i in strided else "")
                 for i in range(1, depth + 1)]
        result = analyse_spec(", ".join(items), f"{CHANNELS}x64x64")
        last = result.rows[-1]
        entry = {"field": int(last.receptive_field[0]), "jump": int(last.jump[0]),
                 "output": int(last.output_shape[1]), "macs": result.total_macs}
        numbers[f"stride_{label}"] = entry
        rows.append([label, entry["field"], entry["jump"], f"{entry['output']}x{entry['output']}",
                     f"{entry['macs'] / 1e6:,.0f}"])
    return Table(
        title=f"Where the stride goes: six conv3x3-{CHANNELS} layers on 64x64 maps",
        columns=["design", "receptive field (px)", "jump (px)", "output size", "MACs (M)"],
        rows=rows,
        caption="Each 3x3 layer adds 2 x jump pixels to the field, and a stride multiplies the "
                "jump of every layer after it: an early stride grows the field of all later "
                "layers and cuts their cost, at the price of resolution.",
    )


# ---------------------------------------------------------------- ResNet stages

def _resnet_stages(ctx: StudyContext, numbers: dict[str, Any]) -> tuple[Table, dict]:
    stages = ["conv1", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    rows = []
    growth: dict[str, list[tuple[int, float]]] = {}
    for label, source in (("ResNet-18", "torchvision.models:resnet18"),
                          ("ResNet-50", "torchvision.models:resnet50")):
        result = inspect(load_model(source, meta=True), IMAGE, name=label)
        for stage in stages:
            row = result.row(stage)
            field, jump = _first(row.receptive_field), _first(row.jump)
            numbers[f"stage_{label}_{stage}"] = {"field": field, "jump": jump,
                                                 "output": list(row.output_shape)}
            rows.append([label, stage, _text(field), _text(jump),
                         "x".join(map(str, row.output_shape)),
                         "yes" if field and field > 224 else "no"])
        growth[label] = [(index, float(row.receptive_field[0]))
                         for index, row in enumerate(
                             r for r in result.rows if r.type == "Conv2d"
                             and "downsample" not in r.name)]
    return Table(
        title="Receptive field by stage of ResNet-18 and ResNet-50 at 224x224",
        columns=["network", "stage output", "receptive field (px)", "jump (px)",
                 "output shape", "larger than the image"],
        rows=rows,
        caption="Fields from the traced graph: where a residual branch (a 1x1 shortcut) and "
                "the main path meet, the field is their union with the true alignment.",
    ), growth


def _growth_figure(path: Path, growth: dict, numbers: dict[str, Any]) -> Figure:
    from matplotlib.figure import Figure as MatplotlibFigure

    from cnnlab._util import atomic_path

    figure = MatplotlibFigure(figsize=(8, 4.2), dpi=100)
    axes = figure.add_subplot()
    for label, points in growth.items():
        axes.plot([p[0] + 1 for p in points], [p[1] for p in points], marker=".",
                  label=f"{label} (main-path convolutions)")
    plain = [1 + 2 * n for n in range(1, 18)]
    axes.plot(range(1, 18), plain, linestyle="--", label="plain 3x3 stack, stride 1")
    axes.axhline(224, color="0.5", linewidth=0.8)
    axes.text(1, 232, "224-px input", fontsize=8, color="0.4")
    axes.set_xlabel("convolution layers from the input")
    axes.set_ylabel("theoretical receptive field (px)")
    axes.set_title("Receptive field growth: strides multiply what each later layer adds")
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    numbers["growth_plain_3x3_after_16"] = plain[15]
    return Figure("Receptive field against depth", path.name,
                  "Theoretical field of each main-path convolution of ResNet-18 and ResNet-50 "
                  "at 224x224, against a plain stack of 3x3 convolutions without stride.")


def _effective_field(ctx: StudyContext, numbers: dict[str, Any]) -> Figure:
    size = ctx.pick(smoke=64, cpu=224, full=224)
    samples = ctx.pick(smoke=1, cpu=4, full=16)
    torch.manual_seed(ctx.seed)
    model = load_model("torchvision.models:resnet18")
    path = ctx.out_dir / "effective_field.png"
    picture = draw_receptive_field(model, f"3x{size}x{size}", "layer3", path, samples=samples,
                                   seed=ctx.seed, title=f"ResNet-18 (untrained) layer3, "
                                   f"{size}x{size} input")
    first, last = picture.theoretical_box[0]
    theoretical = last - first + 1
    # Only pixels of the image can carry gradient: compare with the part of the field inside it.
    visible = min(last, size - 1) - max(first, 0) + 1
    effective = picture.effective_box[0][1] - picture.effective_box[0][0] + 1 \
        if picture.effective_box else None
    numbers["effective_field"] = {
        "input": size, "samples": picture.samples, "theoretical": theoretical,
        "theoretical_in_image": visible, "effective_95": effective,
        "mass_inside_theoretical": picture.mass_inside_theoretical,
    }
    return Figure("Theoretical and effective receptive field of one ResNet-18 unit", path.name,
                  f"Centre unit of layer3 (dashed: theoretical field, {theoretical} px); colour: "
                  f"mean |gradient| over {picture.samples} random input(s); green: the smallest "
                  "centred square holding 95% of it.")


# ---------------------------------------------------------------- findings

def _findings(numbers: dict[str, Any], ctx: StudyContext) -> list[str]:
    findings = []
    two, five = numbers["kernel_2 x conv3x3"], numbers["kernel_1 x conv5x5"]
    three, seven = numbers["kernel_3 x conv3x3"], numbers["kernel_1 x conv7x7"]
    findings.append(
        f"Two stacked 3x3 convolutions see {two['field']}x{two['field']} pixels, as one 5x5 "
        f"does, with {two['params']:,} parameters instead of {five['params']:,} "
        f"({1 - two['params'] / five['params']:.0%} fewer) and two nonlinearities instead of "
        f"one; three 3x3 layers match a 7x7 field with {three['params']:,} instead of "
        f"{seven['params']:,} parameters ({1 - three['params'] / seven['params']:.0%} fewer). "
        "This is the arithmetic behind VGG's choice of 3x3 kernels.")

    single = numbers[f"sharing_one conv3x3-64_{IMAGE}"]
    findings.append(
        f"Weight sharing: one conv3x3-64 layer on a 224x224 RGB image has {single['shared']:,} "
        f"parameters. With the same connections but no sharing it would need "
        f"{single['locally_connected']:,} ({single['locally_connected_ratio']:,.0f} times as "
        f"many: one kernel per output position), and as a fully connected layer "
        f"{single['fully_connected']:,} ({single['fully_connected_ratio']:,.0f} times).")

    first = numbers["stride_stride 2 at layer 1"]
    last = numbers["stride_stride 2 at layer 6"]
    none = numbers["stride_no stride"]
    findings.append(
        f"Stride position: six 3x3 layers without stride see {none['field']} px at "
        f"{none['macs'] / 1e6:,.0f} M MACs; with the stride-2 layer first they see "
        f"{first['field']} px at {first['macs'] / 1e6:,.0f} M MACs "
        f"({none['macs'] / first['macs']:.1f} times cheaper), with it last {last['field']} px "
        f"at {last['macs'] / 1e6:,.0f} M MACs. A stride doubles what every later layer adds to "
        "the field and quarters the later layers' cost, at the price of a coarser map.")

    r18, r50 = numbers["stage_ResNet-18_layer4"], numbers["stage_ResNet-50_layer4"]
    findings.append(
        f"ResNet-18's last stage has a theoretical field of {r18['field']} px and ResNet-50's "
        f"{r50['field']} px, both larger than the 224-px input: every final unit can see the "
        "whole image (and padding), so the usual worry about a too-small field does not apply "
        "to these networks at this size.")

    effective = numbers["effective_field"]
    if effective["effective_95"] is not None:
        share = effective["effective_95"] / effective["theoretical_in_image"]
        if share < 0.5:
            verdict = "much smaller than the theoretical field, as Luo et al. (2016) report"
        else:
            verdict = ("not much smaller than the theoretical field here, unlike the sharp "
                       "concentration Luo et al. (2016) report")
        clipped = "" if effective["theoretical_in_image"] == effective["theoretical"] else \
            f" ({effective['theoretical_in_image']} px of it inside the image)"
        findings.append(
            f"Effective field: for the centre unit of ResNet-18's layer3 "
            f"({effective['input']}x{effective['input']} input, untrained, "
            f"{effective['samples']} random input(s)), 95% of the gradient magnitude lies in a "
            f"{effective['effective_95']}-px square against a theoretical field of "
            f"{effective['theoretical']} px{clipped}: {share:.0%} of its width, {verdict}. "
            f"{effective['mass_inside_theoretical']:.1%} of the gradient lies inside the "
            "theoretical box, as it must.")

    networks = {k[len("network_"):]: v for k, v in numbers.items() if k.startswith("network_")}
    if "VGG-16" in networks:
        vgg = networks["VGG-16"]
        findings.append(
            f"VGG-16 has {vgg['params'] / 1e6:.1f} M parameters, {vgg['linear_share']:.0%} of "
            f"them in its three fully connected layers, and needs {vgg['macs'] / 1e9:.1f} G "
            "MACs per image; the convolutions do nearly all the arithmetic with a small share "
            "of the parameters.")
    if ctx.profile == "smoke":
        findings.append("Smoke profile: two networks and a 64x64 effective-field measurement "
                        "with one input; the arithmetic tables are complete.")
    return findings


STUDY = register(Study(
    name="architecture",
    title="Architecture arithmetic: parameters, weight sharing, receptive fields",
    question="What do convolution's weight sharing, 3x3 kernels, strides and depth buy in "
             "parameters, multiply-adds and receptive field, computed exactly for real networks?",
    budget_seconds={"smoke": 30, "cpu": 60, "full": 120},
    run=run,
))
