"""The models layer: network definitions registered by name, layers, initialisation."""

from cnnlab.models import (  # noqa: F401  (each module registers its models)
    audio_cnn,
    backbones,
    classic,
    deep,
    resnet,
    tabular,
    text_cnn,
    unet,
)
from cnnlab.models.layers import count_parameters, initialise, make_activation
from cnnlab.models.registry import available_models, build_model, model_options, register_model

__all__ = ["available_models", "build_model", "model_options", "register_model",
           "count_parameters", "initialise", "make_activation"]
