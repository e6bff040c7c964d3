import os

import numpy as np
import pytest
from hypothesis import settings

import npcnn
from npcnn.models import cifar10_cnn

# CI runs the property tests on a fixed set of examples (derandomize); locally they explore new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    """Run a test once per kernel backend."""
    with npcnn.use_backend(request.param):
        yield request.param


def seed_model(input_shape=(32, 32, 3), filters=(32, 64, 64), units=64, classes=10, compile=True):
    """The Keras CIFAR-10 tutorial model (optionally shrunk for fast checks)."""
    return cifar10_cnn(input_shape, filters, units, classes, compile=compile)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
