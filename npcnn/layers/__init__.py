"""npcnn layers, with Keras's names, arguments and weight layouts (channels-last).

The contract every layer follows is in :mod:`npcnn.layers.base`; adding a layer is its file here,
its kernel file in :mod:`npcnn.kernels`, a docs page, its tests, and one line below.
"""

from npcnn.layers.activations import ELU, GELU, Activation, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from npcnn.layers.base import Context, Layer, LayerState
from npcnn.layers.convolutional import Conv2D, Convolution2D
from npcnn.layers.core import Dense, Flatten
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
           "GlobalMaxPool2D", "ZeroPadding2D", "ELU", "GELU", "LeakyReLU", "RandomFlip", "RandomTranslation"]
