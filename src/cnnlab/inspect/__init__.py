"""The inspect layer: static analysis of a module at one input size.

Per-layer output shapes, parameters (trainable and frozen), receptive fields
(size, jump, start, from the real graph so that branches merge correctly)
and multiply-accumulates; a small text form for what-if stacks of layers;
a picture of one unit's theoretical and effective receptive field.
"""

from cnnlab.inspect._analyse import find_module, inspect, layer_names, parse_input_shape
from cnnlab.inspect._result import InspectResult, LayerRow

__all__ = ["InspectResult", "LayerRow", "find_module", "inspect", "layer_names",
           "parse_input_shape"]
