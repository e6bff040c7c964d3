"""Property-based tests (hypothesis): random shapes, kernels, strides and paddings for Conv2D and MaxPooling2D.

For every drawn geometry, on both backends:
* the layer passes the float64 central-difference gradient check (``npcnn.gradcheck.check_layer``);
* the Numba and NumPy kernels, called through the dispatchers in ``npcnn.kernels``, agree on the
  forward output and on every backward gradient (float32: relative error below 1e-5): conv,
  max-pool, and Dense followed by each activation (with a Workspace per kernel user);
* a 'valid' geometry whose output would be empty is refused by the layer with a ValueError that
  names the shapes, before any kernel runs.

Sizes stay small and examples few (``max_examples`` 15-25, no deadline: the first Numba call compiles).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import npcnn
from npcnn import gradcheck
from npcnn import kernels as K
from npcnn.layers import Conv2D, MaxPooling2D

BACKENDS = ("numpy", "numba")
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def geometries(draw, max_window=4):
    """(N, H, W, C), window (KH, KW), strides (SH, SW), padding, with a non-empty output."""
    padding = draw(st.sampled_from(["valid", "same"]))
    kh, kw = draw(st.integers(1, max_window)), draw(st.integers(1, max_window))
    lo_h, lo_w = (kh, kw) if padding == "valid" else (1, 1)
    h, w = draw(st.integers(lo_h, lo_h + 6)), draw(st.integers(lo_w, lo_w + 6))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (n, h, w, c), (kh, kw), (sh, sw), padding


def assert_all_pass(results):
    bad = [r for r in results if not r.passed]
    assert not bad, ", ".join(f"{r.layer}/{r.tensor} {r.shape}: {r.error:.2e}" for r in bad)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(a).max(initial=0), np.abs(b).max(initial=0), 1e-30)
    return float(np.abs(a - b).max(initial=0) / scale)


# ----------------------------------------------------------------------------- gradient checks
@settings(max_examples=20, **SETTINGS)
@given(geo=geometries(), filters=st.integers(1, 4), act=st.sampled_from([None, "relu"]),
       use_bias=st.booleans(), backend=st.sampled_from(BACKENDS))
def test_conv2d_gradcheck(geo, filters, act, use_bias, backend):
    shape, kernel, strides, padding = geo
    layer = Conv2D(filters, kernel, strides=strides, padding=padding, activation=act, use_bias=use_bias)
    with npcnn.use_backend(backend):
        assert_all_pass(gradcheck.check_layer(layer, shape[1:], batch_size=shape[0], max_checks=25))


@settings(max_examples=20, **SETTINGS)
@given(geo=geometries(), same_strides=st.booleans(), backend=st.sampled_from(BACKENDS))
def test_maxpool_gradcheck(geo, same_strides, backend):
    shape, pool, strides, padding = geo
    layer = MaxPooling2D(pool, strides=None if same_strides else strides, padding=padding)
    with npcnn.use_backend(backend):
        assert_all_pass(gradcheck.check_layer(layer, shape[1:], batch_size=shape[0], max_checks=25))


# ----------------------------------------------------------------------------- backends agree
def _both(name, *args, **kwargs):
    out = {}
    for b in BACKENDS:
        with npcnn.use_backend(b):
            out[b] = getattr(K, name)(*[a.copy() if isinstance(a, np.ndarray) else a for a in args], **kwargs)
    return out["numpy"], out["numba"]


@settings(max_examples=25, **SETTINGS)
@given(geo=geometries(), filters=st.integers(1, 4), relu=st.booleans(), use_bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_conv_backends_agree(geo, filters, relu, use_bias, seed):
    shape, kernel, strides, padding = geo
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(kernel + (shape[-1], filters)).astype(np.float32)
    b = rng.standard_normal(filters).astype(np.float32) if use_bias else None
    oh, ow, pads = K.conv_geometry(shape, kernel, strides, padding)
    outs, grads = {}, {}
    for backend in BACKENDS:
        with npcnn.use_backend(backend):
            y, cache = K.conv2d_forward(x.copy(), w.copy(), None if b is None else b.copy(), strides, pads, (oh, ow),
                                        relu=relu)
            assert y.shape == (shape[0], oh, ow, filters) and y.dtype == np.float32
            dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32)
            dy_before = dy.copy()
            grads[backend] = K.conv2d_backward(dy, cache, True)
            np.testing.assert_array_equal(dy, dy_before)  # backward never writes into dout
            outs[backend] = y.copy()
    assert rel_err(outs["numpy"], outs["numba"]) < 1e-5
    for name, a, c in zip(("dx", "dkernel", "dbias"), grads["numpy"], grads["numba"]):
        assert (a is None) == (c is None), name
        if a is None:
            continue
        assert a.shape == c.shape, name
        if name == "dbias":  # a sum of N*OH*OW terms that may cancel: its rounding scales with sum |terms|
            scale = np.abs(dy.astype(np.float64)).reshape(-1, filters).sum(0).max()
            assert np.abs(a.astype(np.float64) - c).max() / scale < 1e-5, name
        else:
            assert rel_err(a, c) < 1e-5, name


@settings(max_examples=25, **SETTINGS)
@given(geo=geometries(), same_strides=st.booleans(), seed=st.integers(0, 2**16))
def test_pool_backends_agree(geo, same_strides, seed):
    shape, pool, strides, padding = geo
    strides = pool if same_strides else strides
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    oh, ow, pads = K.conv_geometry(shape, pool, strides, padding)
    assume(oh > 0 and ow > 0)
    outs, grads = {}, {}
    for backend in BACKENDS:
        with npcnn.use_backend(backend):
            y, cache = K.maxpool2d_forward(x.copy(), pool, strides, pads, (oh, ow))
            dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32)
            outs[backend] = y.copy()
            grads[backend] = K.maxpool2d_backward(dy, cache).copy()
    assert np.isfinite(outs["numpy"]).all()  # -inf padding never wins: every window holds a real value
    np.testing.assert_array_equal(outs["numpy"], outs["numba"])
    np.testing.assert_allclose(grads["numpy"], grads["numba"], rtol=1e-6, atol=1e-6)
    # every upstream value lands on exactly one input: the totals agree
    np.testing.assert_allclose(grads["numpy"].sum(), dy.sum(), rtol=1e-4, atol=1e-4)


@settings(max_examples=20, **SETTINGS)
@given(n=st.integers(1, 8), d=st.integers(1, 20), u=st.integers(1, 6), use_bias=st.booleans(),
       act=st.sampled_from(["relu", "sigmoid", "tanh", "softmax"]), seed=st.integers(0, 2**16))
def test_dense_and_activation_backends_agree(n, d, u, use_bias, act, seed):
    """Dense, then an activation, through the dispatchers, each kernel user with its own Workspace.

    Each kernel gets the same inputs on both backends (the twin's outputs feed the next kernel), and
    each result is compared at the scale of what it sums: |x| @ |W| for x @ W (a sum of d products may
    cancel to nearly 0, where a relative error means nothing), |dy| for an activation's gradient.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, u)).astype(np.float32)
    b = rng.standard_normal(u).astype(np.float32) if use_bias else None
    dy = rng.standard_normal((n, u)).astype(np.float32)

    def close(a, c, scale):
        assert c.dtype == np.float32 and a.shape == c.shape
        assert np.abs(a.astype(np.float64) - c).max(initial=0) <= 1e-5 * max(float(np.max(scale, initial=0)), 1e-30)

    res = {}
    for backend in BACKENDS:
        ws_dense, ws_act = K.Workspace(), K.Workspace()
        with npcnn.use_backend(backend):
            z, dcache = K.dense_forward(x, w, b, ws=ws_dense)
            z = z.copy()
            zin = res["numpy"]["z"] if backend == "numba" else z
            y, acache = getattr(K, f"{act}_forward")(zin, ws=ws_act)
            yin = res["numpy"]["y"] if backend == "numba" else y.copy()
            dz = getattr(K, f"{act}_backward")(dy, yin, ws=ws_act)
            dzin = res["numpy"]["dz"] if backend == "numba" else dz
            dx, dk, db = K.dense_backward(dzin, dcache, True, ws=ws_dense)
        res[backend] = dict(z=z, y=y.copy(), dz=dz.copy(), dx=dx.copy(), dk=dk, db=db)
    a, c, dzin = res["numpy"], res["numba"], res["numpy"]["dz"]
    close(a["z"], c["z"], np.abs(x) @ np.abs(w) + (0 if b is None else np.abs(b)))
    close(a["y"], c["y"], max(1.0, np.abs(a["z"]).max()))  # outputs in [0, 1], [-1, 1], or relu's [0, |z|]
    close(a["dz"], c["dz"], 2 * np.abs(dy).max())
    close(a["dx"], c["dx"], np.abs(dzin) @ np.abs(w).T)
    close(a["dk"], c["dk"], np.abs(x).T @ np.abs(dzin))
    close(a["db"], c["db"], np.abs(dzin).sum(axis=0))


# ----------------------------------------------------------------------------- empty outputs are refused
@settings(max_examples=20, **SETTINGS)
@given(h=st.integers(1, 5), w=st.integers(1, 5), kh=st.integers(1, 7), kw=st.integers(1, 7),
       kind=st.sampled_from(["conv", "pool"]))
def test_valid_window_larger_than_input_is_refused(h, w, kh, kw, kind):
    assume(kh > h or kw > w)
    layer = Conv2D(2, (kh, kw)) if kind == "conv" else MaxPooling2D((kh, kw))
    with pytest.raises(ValueError, match=rf"does not fit the input \({h}, {w}\): the output would be empty"):
        layer.build((h, w, 2))
