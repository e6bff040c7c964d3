"""npcnn layers, with Keras's names, arguments and weight layouts (channels-last)."""

from npcnn.layers.base import Layer
from npcnn.layers.convolutional import Conv2D
from npcnn.layers.core import Activation, Dense, Flatten, ReLU, Softmax
from npcnn.layers.pooling import MaxPooling2D

MaxPool2D = MaxPooling2D
Convolution2D = Conv2D

__all__ = ["Layer", "Conv2D", "Convolution2D", "MaxPooling2D", "MaxPool2D", "Flatten", "Dense",
           "ReLU", "Softmax", "Activation"]
