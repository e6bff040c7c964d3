"""Runnable example programs: ``python -m npcnn.examples.cifar10``."""
