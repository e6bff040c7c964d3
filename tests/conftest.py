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


def held_after_one_step(model, x):
    """One training step of x (labels 0, 1, ..., 9, 0, ...) on the Numba backend, unsharded (1 thread), so
    that one list of per-call states holds the buffers. Returns (held, states): held maps (step index,
    buffer name) to the bytes the step's workspace keeps, a block's inner states (ConvBNReLU) included."""
    with npcnn.use_backend("numba"):
        previous = npcnn.get_num_threads()
        npcnn.set_num_threads(1)
        try:
            model.train_on_batch(x, np.arange(len(x)) % 10)
        finally:
            npcnn.set_num_threads(previous)
    (states,) = model._free_states
    held = {(i, name): b.nbytes for i, st in enumerate(states)
            for inner in [st] + (st.inner or []) for name, b in inner.ws.items()}
    return held, states
