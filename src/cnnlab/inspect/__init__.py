"""The inspect layer: static analysis of a module at one input size.

Per-layer output shapes, parameters (trainable and frozen), receptive fields
(size, jump, start, from the real graph so that branches merge correctly)
and multiply-accumulates; a small text form for what-if stacks of layers;
a picture of one unit's theoretical and effective receptive field.

>>> from cnnlab.inspect import inspect, render_table
>>> result = inspect(model, "3x32x32")
>>> result.total_params, result.row("layer2").receptive_field
"""

from cnnlab.inspect._analyse import (
    MetaDeviceError,
    find_module,
    inspect,
    layer_names,
    parse_input_shape,
)
from cnnlab.inspect._draw import FieldPicture, draw_receptive_field, gradient_map
from cnnlab.inspect._load import known_model_names, load_model, parse_options
from cnnlab.inspect._render import render_table, render_text
from cnnlab.inspect._result import InspectResult, LayerRow
from cnnlab.inspect._spec import (
    GRAMMAR,
    SpecResult,
    analyse_spec,
    build_spec_model,
    looks_like_spec,
    parse_spec,
)
from cnnlab.inspect._spec_render import render_spec_table

__all__ = [
    "GRAMMAR", "FieldPicture", "InspectResult", "LayerRow", "MetaDeviceError", "SpecResult",
    "analyse_spec",
    "build_spec_model", "draw_receptive_field", "find_module", "gradient_map", "inspect",
    "known_model_names", "layer_names", "load_model", "looks_like_spec", "parse_input_shape",
    "parse_options", "parse_spec", "render_spec_table", "render_table", "render_text",
]
