"""Every layer's backward against central differences in float64, over varied shapes, on both backends."""

import numpy as np
import pytest
from conftest import seed_model

import npcnn
from npcnn import gradcheck
from npcnn.layers import Activation, Conv2D, Dense, Flatten, MaxPooling2D, ReLU, Softmax
from npcnn.models import Sequential


def assert_all_pass(results):
    bad = [r for r in results if not r.passed]
    assert not bad, "gradient check failed: " + ", ".join(f"{r.layer}/{r.tensor}: {r.error:.2e}" for r in bad)


CONV_CASES = [
    # (filters, kernel, strides, padding, input_shape, batch, activation)
    (3, (3, 3), (1, 1), "valid", (5, 5, 2), 1, None),
    (4, (3, 2), (1, 1), "valid", (6, 5, 3), 2, "relu"),
    (2, (2, 3), (2, 2), "valid", (7, 8, 2), 3, None),
    (3, (3, 3), (2, 1), "same", (7, 6, 2), 2, "relu"),
    (2, (4, 4), (3, 3), "same", (9, 10, 1), 1, None),
    (5, (1, 1), (1, 1), "valid", (3, 4, 3), 2, None),
    (2, (5, 3), (1, 2), "same", (5, 7, 2), 2, "softmax"),
]


@pytest.mark.parametrize("filters,kernel,strides,padding,shape,batch,act", CONV_CASES)
def test_conv2d(backend, filters, kernel, strides, padding, shape, batch, act):
    layer = Conv2D(filters, kernel, strides=strides, padding=padding, activation=act)
    assert_all_pass(gradcheck.check_layer(layer, shape, batch_size=batch))


def test_conv2d_no_bias(backend):
    assert_all_pass(gradcheck.check_layer(Conv2D(3, 3, use_bias=False), (5, 6, 2)))


POOL_CASES = [
    ((2, 2), None, "valid", (4, 4, 2), 1),
    ((2, 2), None, "valid", (5, 7, 3), 2),  # sizes the stride does not divide
    ((3, 3), (2, 2), "valid", (7, 6, 2), 2),  # overlapping windows
    ((3, 2), (1, 2), "same", (5, 5, 1), 3),
    ((2, 2), (2, 2), "same", (5, 3, 2), 1),  # -inf padding
]


@pytest.mark.parametrize("pool,strides,padding,shape,batch", POOL_CASES)
def test_maxpool(backend, pool, strides, padding, shape, batch):
    layer = MaxPooling2D(pool, strides=strides, padding=padding)
    assert_all_pass(gradcheck.check_layer(layer, shape, batch_size=batch))


@pytest.mark.parametrize("units,act,shape,batch", [(4, None, (5,), 1), (3, "relu", (7,), 3),
                                                   (6, "softmax", (4,), 2), (2, "tanh", (3,), 2),
                                                   (2, "sigmoid", (3,), 2)])
def test_dense(backend, units, act, shape, batch):
    assert_all_pass(gradcheck.check_layer(Dense(units, activation=act), shape, batch_size=batch))


@pytest.mark.parametrize("layer", [ReLU(), Softmax(), Flatten(), Activation("relu"), Activation("tanh")],
                         ids=lambda layer: type(layer).__name__)
def test_parameterless(backend, layer):
    shape = (3, 4, 2) if isinstance(layer, Flatten) else (5,)
    assert_all_pass(gradcheck.check_layer(layer, shape, batch_size=2))


def test_seed_model_small(backend, rng):
    npcnn.set_random_seed(0)
    model = seed_model(input_shape=(18, 18, 3), filters=(4, 6, 5), units=8, classes=10)
    # Non-zero biases: with zero biases a layer whose inputs are all ReLU zeros sits exactly on
    # the next ReLU's kink, where central differences are not defined.
    for w in model.params[1::2]:
        w[...] = rng.uniform(-0.2, 0.2, w.shape)
    x = rng.standard_normal((3, 18, 18, 3))
    y = np.array([1, 7, 3])
    assert_all_pass(gradcheck.check_model(model, x, y, max_checks=20))


def test_model_from_logits(rng):
    model = Sequential([Conv2D(3, (3, 3), activation="relu", input_shape=(6, 6, 2)), Flatten(), Dense(4)])
    from npcnn.losses import SparseCategoricalCrossentropy

    model.compile("sgd", SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    assert_all_pass(gradcheck.check_model(model, rng.standard_normal((2, 6, 6, 2)), [0, 3]))


def test_model_softmax_layer_fused(rng):
    model = Sequential([Flatten(input_shape=(3, 3, 1)), Dense(4), Activation("softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    assert_all_pass(gradcheck.check_model(model, rng.standard_normal((3, 3, 3, 1)), [0, 3, 2]))


def test_gradcheck_detects_a_broken_backward(monkeypatch):
    """The check must be able to fail: a backward off by a factor of 1.01 is caught."""
    layer = Dense(3)
    orig = Dense.backward_op

    def broken(self, dz, state, ctx):
        dx = orig(self, dz, state, ctx)
        state.grads["kernel"] = state.grads["kernel"] * 1.01
        return dx

    monkeypatch.setattr(Dense, "backward_op", broken)
    results = gradcheck.check_layer(layer, (4,))
    by = {r.tensor: r for r in results}
    assert by["input"].passed and not by["kernel"].passed


def test_relative_error():
    assert gradcheck.relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert gradcheck.relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.2])) == pytest.approx(0.1 / 1.1)
