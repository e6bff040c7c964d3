"""Data sets, as ``keras.datasets``: ``from npcnn.datasets import cifar10``."""

from npcnn.datasets import cifar10

__all__ = ["cifar10"]
