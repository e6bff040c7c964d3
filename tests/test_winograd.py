"""Winograd F(2x2, 3x3) convolution (npcnn.kernels.winograd): the twins agree with each other and with
im2col, the gradient passes central differences in float64, each transform's adjoint is its adjoint,
and the Numba convolution picks the algorithm where (and only where) it is eligible."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import held_after_one_step

import npcnn
from npcnn import gradcheck
from npcnn.kernels import conv, im2col, winograd
from npcnn.kernels.workspace import Workspace
from npcnn.layers import Activation, BatchNormalization, Conv2D, Dense, Flatten, MaxPooling2D
from npcnn.models import Sequential

# (N, H, W, C, F, padding): even and odd sizes, 'same' and 'valid', a single tile, a 1-pixel-wide output
GEOMETRIES = [(2, 8, 8, 16, 5, "same"), (3, 8, 6, 16, 4, "valid"), (2, 5, 9, 17, 3, "same"),
              (1, 3, 3, 16, 2, "valid"), (2, 7, 3, 16, 3, "valid"), (2, 1, 4, 3, 2, "same")]


def _data(geo, dtype, seed=0, bias=True):
    N, H, W, C, F, padding = geo
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    kernel = rng.standard_normal((3, 3, C, F)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype) if bias else None
    oh, ow, pads = im2col.conv_geometry(x.shape, (3, 3), (1, 1), padding)
    return x, kernel, b, pads, (oh, ow), rng


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(1e-30, np.abs(b).max()))


@pytest.fixture
def enabled():
    previous = winograd.set_enabled(True)
    yield
    winograd.set_enabled(previous)


@pytest.mark.parametrize("geo", GEOMETRIES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_twin_is_the_im2col_convolution_in_float64(geo, relu, bias):
    x, kernel, b, pads, out_hw, rng = _data(geo, np.float64, bias=bias)
    ya, ca = conv.conv2d_forward_numpy(x, kernel, b, (1, 1), pads, out_hw, relu=relu)
    yw, cw = winograd.winograd_forward_numpy(x, kernel, b, pads, out_hw, relu=relu)
    assert yw.shape == ya.shape and yw.dtype == np.float64
    assert _rel(yw, ya) < 1e-13
    dy = rng.standard_normal(ya.shape)
    for need_dx in (True, False):
        ga = conv.conv2d_backward_numpy(dy, ca, need_dx)
        gw = winograd.winograd_backward_numpy(dy, cw, need_dx)
        assert (gw[0] is None) == (not need_dx)
        for a, w in zip(ga, gw):
            if a is not None:
                assert w.shape == a.shape and _rel(w, a) < 1e-12


@pytest.mark.parametrize("geo", GEOMETRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parallel", [False, True])
def test_numba_agrees_with_the_twin_and_reuses_its_buffers(geo, dtype, parallel, monkeypatch):
    from npcnn.kernels import workspace

    monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", 0)  # the prange drivers on small arrays too
    tol = 2e-5 if dtype == np.float32 else 1e-12
    ws = Workspace(parallel=parallel)
    for seed in (0, 1):  # the second call overwrites the buffers of the first
        x, kernel, b, pads, out_hw, rng = _data(geo, dtype, seed)
        ya, ca = winograd.winograd_forward_numpy(x, kernel, b, pads, out_hw, relu=True)
        yb, cb = winograd.winograd_forward_numba(x, kernel, b, pads, out_hw, relu=True, ws=ws)
        assert yb.dtype == dtype and yb.shape == ya.shape and _rel(yb, ya) < tol
        dy = rng.standard_normal(ya.shape).astype(dtype)
        ga = winograd.winograd_backward_numpy(dy, ca)
        gb = winograd.winograd_backward_numba(dy, cb, ws=ws)
        for a, w in zip(ga, gb):
            assert w.dtype == dtype and w.shape == a.shape and _rel(w, a) < tol
        # the twin's backward reads the Numba forward's cache and the other way round
        assert _rel(winograd.winograd_backward_numpy(dy, cb)[1], ga[1]) < tol
        assert _rel(winograd.winograd_backward_numba(dy, ca, ws=Workspace())[1], ga[1]) < tol


def test_float32_accuracy_is_that_of_im2col():
    """Against a float64 reference, the float32 Winograd result is within a few times im2col's error."""
    geo = (4, 16, 16, 32, 32, "same")
    x, kernel, _, pads, out_hw, rng = _data(geo, np.float32)
    kernel *= np.float32(np.sqrt(2 / (9 * 32)))
    ref, ref_cache = conv.conv2d_forward_numpy(x.astype(np.float64), kernel.astype(np.float64), None, (1, 1), pads,
                                               out_hw)
    dy = rng.standard_normal(ref.shape)
    ref_g = conv.conv2d_backward_numpy(dy, ref_cache)
    y_i, c_i = conv.conv2d_forward_numpy(x, kernel, None, (1, 1), pads, out_hw)
    y_w, c_w = winograd.winograd_forward_numba(x, kernel, None, pads, out_hw)
    g_i = conv.conv2d_backward_numpy(dy.astype(np.float32), c_i)
    g_w = winograd.winograd_backward_numba(dy.astype(np.float32), c_w)
    assert _rel(y_w, ref) < 4 * _rel(y_i, ref) + 1e-7
    for gi, gw, gr in zip(g_i, g_w, ref_g):
        assert _rel(gw, gr) < 4 * _rel(gi, gr) + 1e-7


@pytest.mark.parametrize("geo", [(2, 5, 6, 16, 3, "same"), (1, 6, 5, 16, 2, "valid")])
def test_gradient_by_central_differences_float64(geo):
    x, kernel, b, pads, out_hw, rng = _data(geo, np.float64)
    y, cache = winograd.winograd_forward_numba(x, kernel, b, pads, out_hw)
    r = rng.standard_normal(y.shape)  # loss = <r, y>

    def loss():
        return float(np.vdot(r, winograd.winograd_forward_numba(x, kernel, b, pads, out_hw)[0]))

    dx, dk, db = winograd.winograd_backward_numba(r, cache)
    for v, g in ((x, dx), (kernel, dk), (b, db)):
        idx = rng.choice(v.size, size=min(v.size, 25), replace=False)
        num = gradcheck.numerical_gradient(loss, v, indices=idx).reshape(-1)[idx]
        ana = g.reshape(-1)[idx]
        assert np.abs(num - ana).max() <= 1e-7 * max(1.0, np.abs(ana).max())


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_transforms_are_adjoint(padding):
    """<T(a), c> == <a, T*(c)> for the input transform (padding included) and the output transform."""
    x, _, _, pads, out_hw, rng = _data((2, 7, 6, 16, 4, padding), np.float64)
    N, H, W, C = x.shape
    TH, TW = winograd.tiles(out_hw)
    T = N * TH * TW
    xp = np.empty((N, 2 * TH + 2, 2 * TW + 2, C))
    V = winograd.planes(None, "", T, C, np.float64)
    winograd._in_ser(x, pads[0], pads[2], TH, TW, xp, V)
    c = rng.standard_normal((16, T, C))
    dx = np.empty_like(x)
    winograd._in_adjoint_ser(c, pads[0], pads[2], TH, TW, np.empty_like(xp), dx)
    assert np.isclose(np.vdot(V, c), np.vdot(x, dx), rtol=1e-12)
    F = 4
    M = rng.standard_normal((16, T, F))
    y = np.empty((N,) + tuple(out_hw) + (F,))
    winograd._out_ser(M, TH, TW, np.zeros(F), False, False, y)
    dy = rng.standard_normal(y.shape)
    dM = np.empty_like(M)
    winograd._out_adjoint_ser(dy, TH, TW, dM)
    assert np.isclose(np.vdot(y, dy), np.vdot(M, dM), rtol=1e-12)
    k = rng.standard_normal((3, 3, C, F))
    U = np.empty((16, C, F))
    winograd._kernel_transform(k, U)
    np.testing.assert_allclose(U, winograd.kernel_transform(k), rtol=1e-14, atol=1e-14)
    dU = rng.standard_normal((16, C, F))
    dk = np.empty_like(k)
    winograd._kernel_transform_adjoint(dU, dk)
    np.testing.assert_allclose(dk, winograd.kernel_transform_adjoint(dU), rtol=1e-13, atol=1e-13)
    assert np.isclose(np.vdot(U, dU), np.vdot(k, dk), rtol=1e-12)


def test_eligibility(enabled):
    assert winograd.eligible((3, 3, 32, 32), (1, 1), (32, 32))
    assert winograd.eligible((3, 3, 16, 8), (1, 1), (8, 8))
    assert not winograd.eligible((3, 3, 3, 32), (1, 1), (32, 32))      # 3 input channels
    assert not winograd.eligible((3, 3, 32, 64), (2, 2), (16, 16))     # stride 2
    assert not winograd.eligible((5, 5, 32, 64), (1, 1), (16, 16))     # 5x5
    assert not winograd.eligible((3, 3, 64, 64), (1, 1), (4, 4))       # 16 outputs
    assert not winograd.eligible((3, 3, 32, 64), (1, 1), (13, 13))     # odd size
    winograd.set_enabled(False)
    assert not winograd.eligible((3, 3, 32, 32), (1, 1), (32, 32))
    with pytest.raises(TypeError):
        winograd.set_enabled("yes")


def test_numba_convolution_uses_winograd_where_eligible(enabled):
    x, kernel, b, pads, out_hw, rng = _data((2, 8, 8, 16, 4, "same"), np.float32)
    y, cache = conv.conv2d_forward_numba(x, kernel, b, (1, 1), pads, out_hw, relu=True, ws=Workspace())
    assert isinstance(cache, winograd.WinogradCache)
    y2, cache2 = conv.conv2d_forward_numpy(x, kernel, b, (1, 1), pads, out_hw, relu=True)
    assert isinstance(cache2, conv.ConvCache) and _rel(y, y2) < 2e-5
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for g, g2 in zip(conv.conv2d_backward_numba(dy, cache), conv.conv2d_backward_numpy(dy, cache2)):
        assert _rel(g, g2) < 2e-5
    # a backend switched between forward and backward: the twin's backward reads the Winograd cache
    for g, g2 in zip(conv.conv2d_backward_numpy(dy, cache), conv.conv2d_backward_numpy(dy, cache2)):
        assert _rel(g, g2) < 2e-5
    winograd.set_enabled(False)
    _, cache3 = conv.conv2d_forward_numba(x, kernel, b, (1, 1), pads, out_hw, ws=Workspace())
    assert isinstance(cache3, conv.ConvCache)


def test_conv_layer_gradcheck_on_the_numba_backend(enabled):
    layer = Conv2D(3, 3, padding="same", activation="relu")
    assert layer.uses_winograd((8, 8, 16)) and not layer.uses_winograd((7, 7, 16))
    with npcnn.use_backend("numba"):
        results = gradcheck.check_layer(layer, (8, 8, 16), batch_size=2, max_checks=20)
    assert all(r.passed for r in results), [str(r) for r in results]


def _deep_ish():
    return Sequential([  # the first conv runs by im2col (3 channels), without a bias as under a BN
        Conv2D(16, 3, padding="same", use_bias=False, input_shape=(8, 8, 3)), BatchNormalization(),
        Activation("relu"),
        Conv2D(16, 3, padding="same"), BatchNormalization(), Activation("relu"), MaxPooling2D(),
        Conv2D(16, 3, padding="same", activation="relu"), MaxPooling2D(), Flatten(),
        Dense(10, activation="softmax")])


@pytest.mark.parametrize("fuse", [True, False])
def test_workspace_estimate_counts_the_winograd_buffers(fuse, monkeypatch, enabled):
    from npcnn import plan as plan_mod

    monkeypatch.setattr(plan_mod, "FUSE", fuse)
    npcnn.set_random_seed(0)
    model = _deep_ish()
    model.compile("adam", "sparse_categorical_crossentropy")
    held, _ = held_after_one_step(model, np.random.default_rng(0).random((6, 8, 8, 3), dtype=np.float32))
    assert any(name == "wino.V" for _, name in held)
    assert model.plan.workspace_bytes(model.input_shape, 6) == held


def test_models_train_the_same_with_and_without_winograd(enabled):
    """A few steps of a BN model: Winograd and im2col give the same weights to float32 tolerance, and a
    prediction after training agrees too (the folded inference path runs the Winograd kernel)."""
    x = np.random.default_rng(1).random((16, 8, 8, 3), dtype=np.float32)
    y = np.arange(16) % 10
    weights, preds = [], []
    for on in (True, False):
        winograd.set_enabled(on)
        npcnn.set_random_seed(0)
        model = _deep_ish()
        model.compile(npcnn.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
        with npcnn.use_backend("numba"):
            for _ in range(3):
                model.train_on_batch(x, y)
            preds.append(model.predict(x, verbose=0))
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-4, atol=1e-5)
