"""Weight penalties (issue 13, item 4): npcnn/regularizers.py and kernel_regularizer / bias_regularizer.

* L1, L2, L1L2: the penalty (float64) and its gradient (w's dtype) against the formulas, and the
  gradient against central differences of the penalty; L1's subgradient is 0 at 0;
* ``get``: Keras's names ('l1', 'l2', 'l1_l2', 'l1l2', the class names), config dicts, instances,
  None; clear errors for the rest; factors must be finite and >= 0;
* Dense and Conv2D put them in ``layer.regularizers`` (no bias entry without a bias);
* in a model, with the real classes: evaluate and the loss fit reports are CE + penalty, the gradient
  the optimizer receives is the CE gradient + dR/dw, SGD's step shrinks the weights by 2 lr l2 w, and
  the whole-model gradient check passes (the penalty on both sides).
"""

from __future__ import annotations

import numpy as np
import pytest

import npcnn
from npcnn import gradcheck, regularizers
from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from npcnn.models import Sequential
from npcnn.optimizers import SGD
from npcnn.regularizers import L1, L1L2, L2


@pytest.fixture
def w():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3)).astype(np.float32)
    a[0, 0] = 0.0
    return a


def test_penalties_and_gradients_follow_the_formulas(w):
    w64 = w.astype(np.float64)
    cases = [
        (L1(0.03), 0.03 * np.abs(w64).sum(), 0.03 * np.sign(w64)),
        (L2(0.02), 0.02 * (w64 ** 2).sum(), 2 * 0.02 * w64),
        (L1L2(0.03, 0.02), 0.03 * np.abs(w64).sum() + 0.02 * (w64 ** 2).sum(), 0.03 * np.sign(w64) + 0.04 * w64),
    ]
    for reg, penalty, grad in cases:
        value = reg(w)
        assert isinstance(value, float) and value == pytest.approx(penalty, rel=1e-14)
        g = reg.gradient(w)
        assert g.dtype == np.float32 and g.shape == w.shape
        np.testing.assert_allclose(g, grad, rtol=1e-6)
        assert reg.gradient(w64).dtype == np.float64
    assert L1(0.5).gradient(w)[0, 0] == 0.0  # the subgradient at exactly 0


@pytest.mark.parametrize("reg", [L1(0.1), L2(0.1), L1L2(0.05, 0.2)])
def test_gradient_matches_central_differences(reg):
    v = gradcheck.spread_input((3, 4), np.random.default_rng(1))  # away from L1's kink at 0
    num = gradcheck.numerical_gradient(lambda: reg(v), v)
    assert gradcheck.relative_error(reg.gradient(v), num) < 1e-8


def test_defaults_and_aliases_are_keras():
    assert L1().l1 == 0.01 and L2().l2 == 0.01 and (L1L2().l1, L1L2().l2) == (0.0, 0.0)
    assert L2(None).l2 == 0.01
    assert regularizers.l1 is L1 and regularizers.l2 is L2
    assert regularizers.l1_l2() == L1L2(0.01, 0.01)  # tf.keras's function defaults
    assert repr(L1L2(0.1, 0.2)) == "L1L2(l1=0.1, l2=0.2)"
    assert L2(0.3).get_config() == {"l2": 0.3} and L2.from_config({"l2": 0.3}) == L2(0.3)


@pytest.mark.parametrize("name, expected", [
    ("l1", L1(0.01)), ("l2", L2(0.01)), ("L2", L2(0.01)), ("L1", L1(0.01)),
    ("l1_l2", L1L2(0.01, 0.01)), ("l1l2", L1L2(0.0, 0.0)), ("L1L2", L1L2(0.0, 0.0)),
])
def test_get_names(name, expected):
    assert regularizers.get(name) == expected


def test_get_other_forms():
    assert regularizers.get(None) is None
    reg = L2(0.5)
    assert regularizers.get(reg) is reg
    assert regularizers.get({"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}}) == L1L2(0.1, 0.2)
    assert regularizers.get(L1) == L1()

    class Custom:
        def __call__(self, w):
            return 0.0

        def gradient(self, w):
            return np.zeros_like(w)

    custom = Custom()
    assert regularizers.get(custom) is custom


@pytest.mark.parametrize("identifier, error, match", [
    ("l3", ValueError, "unknown regularizer 'l3'. Did you mean"),
    ({"class_name": "Orthogonal"}, ValueError, "class_name"),
    (lambda w: 0.0, TypeError, "gradient"),
    (3, TypeError, "a regularizer is None, a name"),
])
def test_get_errors(identifier, error, match):
    with pytest.raises(error, match=match):
        regularizers.get(identifier)


@pytest.mark.parametrize("make", [lambda: L2(-0.1), lambda: L1(float("nan")), lambda: L1L2(0.1, float("inf")),
                                  lambda: L2("0.1"), lambda: L1(True)])
def test_factors_must_be_finite_and_non_negative(make):
    with pytest.raises(ValueError, match="finite number >= 0"):
        make()


def test_layers_keep_them_in_regularizers():
    d = Dense(3, kernel_regularizer=L2(0.1), bias_regularizer="l1")
    assert d.regularizers == {"kernel": L2(0.1), "bias": L1(0.01)}
    assert Dense(3, use_bias=False, bias_regularizer="l1").regularizers == {}
    c = Conv2D(2, 3, kernel_regularizer="l1_l2")
    assert c.regularizers == {"kernel": L1L2(0.01, 0.01)} and c.kernel_regularizer == L1L2(0.01, 0.01)
    assert Conv2D(2, 3).regularizers == {} and Dense(2).bias_regularizer is None
    with pytest.raises(ValueError, match="Dense: unknown regularizer"):
        Dense(3, kernel_regularizer="l22")
    with pytest.raises(ValueError, match="Conv2D: unknown regularizer"):
        Conv2D(3, 2, bias_regularizer="xx")


def model(kernel_reg=None, bias_reg=None, conv_reg=None):
    npcnn.set_random_seed(7)
    m = Sequential([Conv2D(3, (3, 2), activation="relu", kernel_regularizer=conv_reg, input_shape=(6, 5, 2)),
                    MaxPooling2D(), Flatten(),
                    Dense(4, activation="softmax", kernel_regularizer=kernel_reg, bias_regularizer=bias_reg)])
    m.compile(SGD(learning_rate=0.1), "sparse_categorical_crossentropy")
    return m


def data():
    rng = np.random.default_rng(2)
    return rng.standard_normal((8, 6, 5, 2)).astype(np.float32), np.arange(8) % 4


def test_reported_loss_is_cross_entropy_plus_penalty(backend):
    x, y = data()
    plain = model()
    ce = plain.evaluate(x, y, verbose=0)
    reg = model(kernel_reg=L2(0.01))
    np.testing.assert_array_equal(reg.layers[-1].params["kernel"], plain.layers[-1].params["kernel"])
    k = reg.layers[-1].params["kernel"].astype(np.float64)
    assert reg.evaluate(x, y, verbose=0) == pytest.approx(ce + 0.01 * np.sum(k ** 2), rel=1e-6)
    # fit reports the loss of its batches before each step: with one batch, the loss at the start
    hist = reg.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert hist.history["loss"][0] == pytest.approx(ce + 0.01 * np.sum(k ** 2), rel=1e-5)


def test_the_optimizer_gets_the_penalty_gradient(backend):
    x, y = data()
    plain, reg = model(), model(kernel_reg=L2(0.05), bias_reg=L1(0.02), conv_reg=L1L2(0.01, 0.03))
    plain._loss_and_grad(x, y)
    reg._loss_and_grad(x, y)
    expected = []
    for layer in reg.layers:
        for key, p in layer.params.items():
            r = layer.regularizers.get(key)
            expected.append(r.gradient(p) if r is not None else np.zeros_like(p))
    for g_plain, g_reg, g_pen in zip(plain.grads, reg.grads, expected):
        np.testing.assert_allclose(g_reg - g_plain, g_pen, rtol=1e-5, atol=1e-7)
    # one SGD step on the penalty alone (a zero learning signal elsewhere is not needed: compare with plain)
    before = [p.copy() for p in reg.layers[-1].params.values()]
    k_plain = plain.layers[-1].params["kernel"].copy()
    plain.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    reg.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    step_plain = plain.layers[-1].params["kernel"] - k_plain
    step_reg = reg.layers[-1].params["kernel"] - before[0]
    np.testing.assert_allclose(step_reg - step_plain, -0.1 * 2 * 0.05 * before[0], rtol=1e-4, atol=1e-7)


def test_whole_model_gradcheck_includes_the_penalty(backend):
    x, y = data()
    x = gradcheck.spread_input(x.shape, np.random.default_rng(3))
    reg = model(kernel_reg=L2(0.05), bias_reg=L1L2(0.02, 0.1), conv_reg=L1(0.03))
    reg.layers[-1].params["bias"][:] = np.linspace(-0.5, 0.5, 4)  # away from L1's kink at 0
    assert all(r.passed for r in gradcheck.check_model(reg, x, y))
