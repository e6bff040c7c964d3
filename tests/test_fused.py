"""Conv2D + ReLU + MaxPooling2D fused (npcnn.kernels.fused) against the two layers run apart.

* the Numba op agrees with its twin (the conv and pool twins in turn) on random geometries of
  both the convolution and the pooling, float32 to 1e-5 relative, float64 to 1e-12;
* vector-Jacobian gradient checks (central differences, float64) through the Numba op;
* a model trains the same with the fusion on and off: bit for bit on the NumPy backend (the
  twin is the separate kernels), to float32 rounding on the Numba backend;
* caches made by one backend's forward are read by the other's backward;
* the switch (``npcnn.plan.FUSE``, ``NPCNN_FUSE=0``) and the plan's gradient shape check.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import seed_model
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import SETTINGS, TOL, assert_grads_agree, rel_err

import npcnn
from npcnn import gradcheck
from npcnn import plan as plan_mod
from npcnn.kernels import fused, im2col, workspace
from npcnn.layers import Context, Conv2D, MaxPooling2D


@st.composite
def conv_pool_geometries(draw):
    """x shape, the conv's (kernel, strides, pads, out_hw), the pool's (size, strides, pads, out_hw)."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    cpad = draw(st.sampled_from(["valid", "same"]))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    h, w = draw(st.integers(kh + 1, kh + 8)), draw(st.integers(kw + 1, kw + 8))
    oh, ow, pads = im2col.conv_geometry((n, h, w, c), (kh, kw), (sh, sw), cpad)
    ph, pw = draw(st.integers(1, min(3, oh))), draw(st.integers(1, min(3, ow)))
    psh, psw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ppad = draw(st.sampled_from(["valid", "same"]))
    poh, pow_, ppads = im2col.conv_geometry((n, oh, ow, 1), (ph, pw), (psh, psw), ppad)
    return (n, h, w, c), ((kh, kw), (sh, sw), pads, (oh, ow)), ((ph, pw), (psh, psw), ppads, (poh, pow_))


def _args(geo, rng, dtype, filters, use_bias):
    shape, (k, s, pads, out_hw), pool_geo = geo
    x = rng.standard_normal(shape).astype(dtype)
    kernel = rng.standard_normal(k + (shape[3], filters)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype) if use_bias else None
    return (x, kernel, bias, s, pads, out_hw) + pool_geo


@settings(max_examples=40, **SETTINGS)
@given(geo=conv_pool_geometries(), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16), filters=st.integers(1, 5), use_bias=st.booleans())
def test_fused_numba_agrees_with_the_separate_twins(geo, dtype, seed, filters, use_bias):
    rng = np.random.default_rng(seed)
    args = _args(geo, rng, dtype, filters, use_bias)
    pa, ca = fused.conv2d_relu_maxpool_forward_numpy(*args)
    ws = workspace.Workspace()  # the fused block's one ws, for the forward and the backward
    pb, cb = fused.conv2d_relu_maxpool_forward_numba(*args, ws=ws)
    assert pb.dtype == dtype and pb.shape == pa.shape
    assert rel_err(pa, pb) < TOL[dtype]
    dp = rng.standard_normal(pa.shape).astype(dtype)
    for need_dx in (True, False):
        ga = fused.conv2d_relu_maxpool_backward_numpy(dp, ca, need_dx)
        gb = fused.conv2d_relu_maxpool_backward_numba(dp, cb, need_dx, ws=ws)
        assert_grads_agree(ga, gb, dtype)


@pytest.mark.parametrize("driver", ["parallel", "serial"])
@pytest.mark.parametrize("pool_size,pool_strides,padding", [((2, 2), (2, 2), "valid"), ((3, 2), (1, 2), "same")])
def test_fused_numba_gradcheck(driver, pool_size, pool_strides, padding, monkeypatch):
    monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", 0 if driver == "parallel" else 1 << 62)
    rng = np.random.default_rng(5)
    x = gradcheck.spread_input((2, 7, 6, 2), rng)
    kernel, bias = rng.standard_normal((3, 2, 2, 3)), rng.standard_normal(3) * 0.1 - 2.5
    oh, ow, pads = im2col.conv_geometry(x.shape, (3, 2), (1, 1), "valid")
    poh, pow_, ppads = im2col.conv_geometry((2, oh, ow, 3), pool_size, pool_strides, padding)

    def forward(x, kernel, bias):
        return fused.conv2d_relu_maxpool_forward_numba(x, kernel, bias, (1, 1), pads, (oh, ow), pool_size,
                                                       pool_strides, ppads, (poh, pow_))

    p, cache = forward(x, kernel, bias)
    assert (p > 0).any() and (p == 0).any()  # both sides of the ReLU are exercised
    dp = rng.standard_normal(p.shape)
    grads = fused.conv2d_relu_maxpool_backward_numba(dp, cache)
    for v, g in zip((x, kernel, bias), grads):
        num = gradcheck.numerical_gradient(lambda: float(np.sum(forward(x, kernel, bias)[0] * dp)), v)
        assert gradcheck.relative_error(g, num) < gradcheck.THRESHOLD


def test_fused_ties_after_relu_send_no_gradient():
    """Windows whose maximum is <= 0 after the bias give 0 and pass no gradient, as the layers do."""
    x = -np.ones((1, 4, 4, 1), np.float32)
    kernel = np.ones((1, 1, 1, 1), np.float32)
    bias = np.zeros(1, np.float32)
    args = (x, kernel, bias, (1, 1), (0, 0, 0, 0), (4, 4), (2, 2), (2, 2), (0, 0, 0, 0), (2, 2))
    p, cache = fused.conv2d_relu_maxpool_forward_numba(*args)
    np.testing.assert_array_equal(p, 0)
    dx, dk, db = fused.conv2d_relu_maxpool_backward_numba(np.ones_like(p), cache)
    np.testing.assert_array_equal(dx, 0)
    np.testing.assert_array_equal(dk, 0)
    np.testing.assert_array_equal(db, 0)


@pytest.mark.parametrize("forward_backend,backward_backend", [("numba", "numpy"), ("numpy", "numba")])
def test_caches_cross_backends(forward_backend, backward_backend):
    rng = np.random.default_rng(7)
    geo = ((2, 9, 8, 3), ((3, 3), (1, 1), (1, 1, 1, 1), (9, 8)), ((2, 2), (2, 2), (0, 0, 0, 0), (4, 4)))
    args = _args(geo, rng, np.float64, 4, True)
    fwd = {"numpy": fused.conv2d_relu_maxpool_forward_numpy, "numba": fused.conv2d_relu_maxpool_forward_numba}
    bwd = {"numpy": fused.conv2d_relu_maxpool_backward_numpy, "numba": fused.conv2d_relu_maxpool_backward_numba}
    p, cache = fwd[forward_backend](*args)
    dp = rng.standard_normal(p.shape)
    expect = fused.conv2d_relu_maxpool_backward_numpy(dp, fused.conv2d_relu_maxpool_forward_numpy(*args)[1])
    for a, b in zip(expect, bwd[backward_backend](dp, cache)):
        assert rel_err(a, b) < 1e-12


# ----------------------------------------------------------------------------- in the model
def _train(monkeypatch, enabled, steps=3):
    monkeypatch.setattr(plan_mod, "FUSE", enabled)
    calls = []
    original = plan_mod.ConvReLUMaxPool.forward

    def spy(self, x, state, ctx):
        calls.append(ctx.training)
        return original(self, x, state, ctx)

    monkeypatch.setattr(plan_mod.ConvReLUMaxPool, "forward", spy)
    npcnn.set_random_seed(11)
    model = seed_model(input_shape=(18, 18, 3), filters=(4, 6, 5), units=8)
    rng = np.random.default_rng(2)
    x = rng.random((16, 18, 18, 3), dtype=np.float32)
    y = rng.integers(0, 10, 16)
    losses = [model.train_on_batch(x, y)[0] for _ in range(steps)]
    ran_fused = calls.count(True) >= 2 * steps  # both pairs, every step (in every data-parallel shard)
    return model, losses, model.predict(x, verbose=0), ran_fused


def test_model_trains_the_same_fused_or_not(backend, monkeypatch):
    m1, l1, p1, ran_fused = _train(monkeypatch, True)
    assert ran_fused
    m0, l0, p0, ran_fused = _train(monkeypatch, False)
    assert not ran_fused
    w1, w0 = m1.get_weights(), m0.get_weights()
    if backend == "numpy":  # the twin is the separate kernels: the very same arithmetic
        assert l1 == l0
        for a, b in zip(w1, w0):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(p1, p0)
    else:
        np.testing.assert_allclose(l1, l0, rtol=1e-5)
        for a, b in zip(w1, w0):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(p1, p0, rtol=1e-4, atol=1e-6)


def test_model_gradcheck_through_the_fused_op(backend, monkeypatch):
    """The whole-model check (float64, central differences) runs the fused pairs."""
    calls = []
    original = plan_mod.ConvReLUMaxPool.backward

    def spy(self, dp, state, ctx):
        calls.append(dp.dtype)
        return original(self, dp, state, ctx)

    monkeypatch.setattr(plan_mod.ConvReLUMaxPool, "backward", spy)
    npcnn.set_random_seed(3)
    model = seed_model(input_shape=(18, 18, 3), filters=(3, 4, 3), units=5, classes=4)
    x = gradcheck.spread_input((3, 18, 18, 3), np.random.default_rng(0))
    rows = gradcheck.check_model(model, x, np.array([0, 3, 1]))
    assert calls == [np.float64, np.float64]  # both conv + pool pairs, in float64
    assert len(rows) == 10 and all(r.passed for r in rows), rows


def test_fused_step_checks_the_gradient_shape(rng):
    model = npcnn.models.Sequential([Conv2D(2, 3, activation="relu", input_shape=(8, 8, 3)), MaxPooling2D(),
                                     npcnn.layers.Flatten()])
    plan = model.plan
    assert isinstance(plan.steps[0], plan_mod.ConvReLUMaxPool)
    assert not isinstance(npcnn.models.Sequential([Conv2D(2, 3, input_shape=(8, 8, 3)), MaxPooling2D(),
                                                    npcnn.layers.Flatten()]).plan.steps[0], plan_mod.ConvReLUMaxPool)
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    states = plan.new_states()
    p = plan.steps[0].forward(x, states[0], Context(True))
    assert p.shape == (2, 3, 3, 2)
    plan.forward(x, states, Context(True))
    with pytest.raises(ValueError, match=r"dy has shape \(2, 3, 3\).*\(2, 18\)"):
        plan.backward(np.zeros((2, 3, 3)), states, Context(True))
    plan.forward(x, states, Context(False))
    with pytest.raises(RuntimeError, match="needs a preceding forward"):
        plan.backward(np.zeros((2, 18), np.float32), states, Context(True))


def test_model_output_never_aliases_a_workspace_buffer(rng):
    """A model ending in conv + pool + Flatten returns its own array, not a view of the fused
    op's reusable output buffer: a second call leaves the first result alone."""
    model = npcnn.models.Sequential([Conv2D(3, 3, activation="relu", input_shape=(8, 8, 2)), MaxPooling2D(),
                                     npcnn.layers.Flatten()])
    x1, x2 = rng.standard_normal((2, 4, 8, 8, 2)).astype(np.float32)
    with npcnn.use_backend("numba"):
        a = model(x1)
        kept = a.copy()
        b = model(x2)
    assert isinstance(model.plan.steps[0], plan_mod.ConvReLUMaxPool)
    np.testing.assert_array_equal(a, kept)
    assert not np.array_equal(a, b)


def test_model_input_gradient_never_aliases_a_workspace_buffer(rng):
    """model.backward's input gradient, when it comes from a fused pair, is the caller's own array."""
    model = npcnn.models.Sequential([Conv2D(3, 3, activation="relu", input_shape=(8, 8, 2)), MaxPooling2D(),
                                     npcnn.layers.Flatten(), npcnn.layers.Dense(4)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with npcnn.use_backend("numba"):  # input_grad=True: as a study of d loss / d image would
        x = rng.standard_normal((3, 8, 8, 2)).astype(np.float32)
        model.forward(x, training=True)
        d1 = model.backward(np.ones((3, 4), np.float32), input_grad=True)
        kept = d1.copy()
        model.forward(x * 2 - 1, training=True)
        d2 = model.backward(np.full((3, 4), -3, np.float32), input_grad=True)
    assert np.abs(kept).sum() > 0 and not np.array_equal(d1, d2)
    np.testing.assert_array_equal(d1, kept)
