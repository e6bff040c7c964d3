"""npcnn layers, with Keras's names, arguments and weight layouts (channels-last).

The contract every layer follows is in :mod:`npcnn.layers.base`; adding a layer is its file here,
its kernel file in :mod:`npcnn.kernels`, a docs page, its tests, and one line below.
"""

from npcnn.layers.activations import ELU, GELU, Activation, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from npcnn.layers.base import Context, Layer, LayerState
from npcnn.layers.convolutional import Conv2D, Convolution2D
from npcnn.layers.core import Dense, Flatten
from npcnn.layers.input import Input, InputLayer
from npcnn.layers.normalization import BatchNormalization
from npcnn.layers.pooling import (
    AveragePooling2D,
    AvgPool2D,
    GlobalAveragePooling2D,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    GlobalMaxPooling2D,
    MaxPool2D,
    MaxPooling2D,
)
from npcnn.layers.preprocessing import RandomFlip, RandomTranslation
from npcnn.layers.regularization import Dropout
from npcnn.layers.reshaping import ZeroPadding2D

__all__ = ["Layer", "LayerState", "Context", "Conv2D", "Convolution2D", "MaxPooling2D", "MaxPool2D", "Flatten",
           "Dense", "ReLU", "Softmax", "Sigmoid", "Tanh", "Activation", "BatchNormalization", "Dropout",
           # issue 13, layers
           "AveragePooling2D", "AvgPool2D", "GlobalAveragePooling2D", "GlobalAvgPool2D", "GlobalMaxPooling2D",
           "GlobalMaxPool2D", "ZeroPadding2D", "ELU", "GELU", "LeakyReLU", "RandomFlip", "RandomTranslation",
           "Input", "InputLayer"]


# --- configs (issue 13 item 8): class name -> class, from __all__ (aliases such as MaxPool2D included)
def layer_classes():
    """{class name or alias: layer class} for every layer in ``__all__`` (and Linear, behind 'linear')."""
    from npcnn.layers.activations import Linear

    found = {"Linear": Linear}
    for name in __all__:
        obj = globals().get(name)
        if isinstance(obj, type) and issubclass(obj, Layer) and obj is not Layer:
            found[name] = obj
            found.setdefault(obj.__name__, obj)
    return found


def serialize(layer):
    """``{'class_name': 'Conv2D', 'config': layer.get_config()}`` (Keras's layer serialisation)."""
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def deserialize(config):
    """A new layer from :func:`serialize`'s dict (Keras's ``layers.deserialize``).

    Raises:
        ValueError: not a ``{'class_name', 'config'}`` dict, an unknown class (the closest known one is
            suggested) or arguments the layer refuses (the layer and the message are named).
    """
    from npcnn.utils import did_you_mean

    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str) \
            or not isinstance(config.get("config", {}), dict):
        raise ValueError(f"deserialize: a layer config is {{'class_name': ..., 'config': {{...}}}}, got {config!r}")
    classes = layer_classes()
    cls = classes.get(config["class_name"])
    if cls is None:
        raise ValueError(f"deserialize: unknown layer class {config['class_name']!r}"
                         + did_you_mean(config["class_name"], classes))
    from npcnn.serialization import from_keras_layer_config

    try:
        return cls.from_config(from_keras_layer_config(cls, config.get("config") or {}))
    except TypeError as e:
        raise ValueError(f"deserialize: {config['class_name']} refuses its config: {e}") from None


__all__ += ["serialize", "deserialize", "layer_classes"]
