"""The models layer: network definitions registered by name, layers, initialisation."""

from cnnlab.models import classic, deep, resnet  # noqa: F401  (registers the models)
from cnnlab.models.layers import count_parameters, initialise, make_activation
from cnnlab.models.registry import available_models, build_model, model_options, register_model

__all__ = ["available_models", "build_model", "model_options", "register_model",
           "count_parameters", "initialise", "make_activation"]
