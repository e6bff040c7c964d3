import numpy as np
import pytest

import npcnn
from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from npcnn.models import Sequential


@pytest.fixture(params=["numpy", "numba"])
def backend(request):
    """Run a test once per kernel backend."""
    with npcnn.use_backend(request.param):
        yield request.param


def seed_model(input_shape=(32, 32, 3), filters=(32, 64, 64), units=64, classes=10, compile=True):
    """The Keras CIFAR-10 tutorial model (optionally shrunk for fast checks)."""
    f1, f2, f3 = filters
    model = Sequential()
    model.add(Conv2D(f1, (3, 3), activation="relu", input_shape=input_shape))
    model.add(MaxPooling2D((2, 2)))
    model.add(Conv2D(f2, (3, 3), activation="relu"))
    model.add(MaxPooling2D((2, 2)))
    model.add(Conv2D(f3, (3, 3), activation="relu"))
    model.add(Flatten())
    model.add(Dense(units, activation="relu"))
    model.add(Dense(classes, activation="softmax"))
    if compile:
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture
def rng():
    return np.random.default_rng(0)
