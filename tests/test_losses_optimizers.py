"""Softmax cross-entropy stability and fused gradient; Adam (Keras's rule) and SGD updates; max-pool ties."""

import numpy as np
import pytest

from npcnn import kernels as K
from npcnn.layers import MaxPooling2D, ReLU
from npcnn.losses import SparseCategoricalCrossentropy
from npcnn.optimizers import SGD, Adam


def reference_ce(logits, labels):
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return -np.mean(np.log(p[np.arange(len(z)), labels])), p


def test_fused_loss_value_and_gradient(backend, rng):
    z = rng.standard_normal((5, 7)).astype(np.float32)
    y = np.array([0, 6, 3, 3, 1])
    loss, dz = K.sparse_softmax_ce(z, y)
    ref, p = reference_ce(z, y)
    assert loss == pytest.approx(ref, rel=1e-6)
    onehot = np.eye(7)[y]
    np.testing.assert_allclose(dz, (p - onehot) / 5, atol=1e-7)
    assert dz.dtype == np.float32


@pytest.mark.parametrize("scale,expected", [(1e4, 1e4), (-1e4, (1e4 + 1 + np.log1p(np.exp(-1.0))) / 2)])
def test_loss_finite_for_huge_logits(backend, scale, expected):
    z = np.array([[scale, 0.0, -scale], [0.0, scale, 1.0]], dtype=np.float32)
    y = np.array([2, 1])
    loss, dz = K.sparse_softmax_ce(z, y)
    assert np.isfinite(loss) and np.all(np.isfinite(dz))
    assert loss == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(dz.sum(axis=1), 0, atol=1e-6)


def test_probability_loss_clips_like_keras():
    loss = SparseCategoricalCrossentropy()
    p = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    value = loss(np.array([1, 1]), p)
    assert np.isfinite(value) and value == pytest.approx(-np.log(1e-7) / 2, rel=1e-3)


def keras_adam_reference(p, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-7):
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    return p


def test_adam_matches_keras_rule(rng):
    p = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    param = p.copy()
    opt = Adam(learning_rate=0.01)
    for g in grads:
        opt.apply([param], [g])
    np.testing.assert_allclose(param, keras_adam_reference(p, grads, lr=0.01), rtol=1e-12, atol=1e-14)
    assert opt.iterations == 5


def test_adam_epsilon_outside_bias_correction():
    # With a tiny gradient the two conventions differ: Keras adds eps to the uncorrected sqrt(v).
    g = np.full(1, 1e-6)
    param = np.zeros(1)
    Adam(learning_rate=1.0, epsilon=1e-7).apply([param], [g])
    keras = -1.0 * np.sqrt(1 - 0.999) / (1 - 0.9) * (0.1 * 1e-6) / (np.sqrt(0.001) * 1e-6 + 1e-7)
    torch_style = -1.0 * 1e-6 / (1e-6 + 1e-7)
    assert param[0] == pytest.approx(keras, rel=1e-9)
    assert abs(param[0] - torch_style) > 1e-3


def test_adam_keeps_float32(rng):
    p = rng.standard_normal(5).astype(np.float32)
    opt = Adam()
    opt.apply([p], [rng.standard_normal(5).astype(np.float32)])
    assert p.dtype == np.float32 and all(s.dtype == np.float32 for s in opt._slots_for(p).values())


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_keras_rule(rng, nesterov):
    p0 = rng.standard_normal(4)
    grads = [rng.standard_normal(4) for _ in range(3)]
    p, v = p0.copy(), np.zeros(4)
    for g in grads:
        v = 0.9 * v - 0.1 * g
        p = p + (0.9 * v - 0.1 * g if nesterov else v)
    param = p0.copy()
    opt = SGD(learning_rate=0.1, momentum=0.9, nesterov=nesterov)
    for g in grads:
        opt.apply([param], [g])
    np.testing.assert_allclose(param, p, rtol=1e-12)


def test_plain_sgd(rng):
    param = np.ones(3)
    SGD(learning_rate=0.5).apply([param], [np.array([1.0, 2.0, -2.0])])
    np.testing.assert_allclose(param, [0.5, 0.0, 2.0])


def test_optimizer_state_roundtrip(rng):
    a, b = rng.standard_normal(3), rng.standard_normal((2, 2))
    opt = Adam()
    opt.apply([a, b], [np.ones(3), np.ones((2, 2))])
    state = opt.get_state([a, b])
    fresh = Adam()
    a2, b2 = a.copy(), b.copy()
    fresh.set_state([a2, b2], state)
    g = [rng.standard_normal(3), rng.standard_normal((2, 2))]
    opt.apply([a, b], g)
    fresh.apply([a2, b2], g)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)


def test_maxpool_ties_route_to_first_max(backend):
    """A window full of equal values (zeros after a ReLU) sends its gradient to one element: the first."""
    x = np.zeros((1, 4, 4, 2), dtype=np.float32)
    x[0, 2, 3, 1] = 5.0
    layer = MaxPooling2D((2, 2))
    layer.build((4, 4, 2))
    layer.need_input_grad = True
    y = layer.forward(x, training=True)
    dy = np.arange(1, 9, dtype=np.float32).reshape(1, 2, 2, 2)
    dy_copy = dy.copy()
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dy, dy_copy)
    assert y[0, 1, 1, 1] == 5.0
    expected = np.zeros_like(x)
    for oh in range(2):
        for ow in range(2):
            for c in range(2):
                if (oh, ow, c) == (1, 1, 1):
                    expected[0, 2, 3, 1] = dy[0, 1, 1, 1]
                else:
                    expected[0, 2 * oh, 2 * ow, c] = dy[0, oh, ow, c]
    np.testing.assert_array_equal(dx, expected)
    assert np.count_nonzero(dx) == 8


def test_maxpool_same_padding_is_minus_inf(backend):
    x = -np.ones((1, 3, 3, 1), dtype=np.float32) * np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    layer = MaxPooling2D((2, 2), padding="same")
    y = layer.forward(x)
    assert y.shape == (1, 2, 2, 1)
    assert y[0, 1, 1, 0] == -9.0  # a zero pad would have won


def test_relu_gradient_at_zero_is_zero(backend):
    layer = ReLU()
    x = np.array([[-1.0, 0.0, 2.0]], dtype=np.float32)
    layer.forward(x, training=True)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), [[0.0, 0.0, 1.0]])
