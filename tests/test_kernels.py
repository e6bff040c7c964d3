"""The Numba kernels against their NumPy twins, kernel by kernel (the functions in npcnn.kernels).

* agreement on random shapes (hypothesis): float32 to a relative error below 1e-5 (sums of up
  to a few hundred float32 products, in another order), float64 below 1e-12;
* col2im is the adjoint of im2col on both backends: <im2col(x), c> == <x, col2im(c)>;
* vector-Jacobian gradient checks (central differences, float64) through both backends;
* the conventions: first maximum wins ties, -inf pool padding, ReLU gradient 0 at exactly 0;
* the prange and the serial drivers give the same results; backward never writes its inputs;
* the layers reuse their column and argmax buffers from one step to the next.

Sizes stay small and examples few: the first Numba call compiles (cached on disk after that).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npcnn
from npcnn import gradcheck
from npcnn.kernels import activations, conv, im2col, pool, softmax_ce, workspace
from npcnn.layers import Conv2D, MaxPooling2D

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def assert_grads_agree(ga, gb, dtype):
    """Backward results (dx or None, dkernel, dbias) of a twin (ga) and its Numba version (gb)."""
    for a, b in zip(ga, gb):
        if a is None:
            assert b is None
            continue
        assert b.dtype == dtype and b.shape == a.shape
        assert rel_err(a, b) < TOL[dtype] * 10


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(a).max(initial=0), np.abs(b).max(initial=0), 1e-30)
    return float(np.abs(a - b).max(initial=0) / scale)


@st.composite
def geometries(draw, max_window=4):
    """x shape (N, H, W, C), window, strides, pads and output size; stride may be below the window."""
    kh, kw = draw(st.integers(1, max_window)), draw(st.integers(1, max_window))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["valid", "same"]))
    lo_h, lo_w = (kh, kw) if padding == "valid" else (1, 1)
    h, w = draw(st.integers(lo_h, lo_h + 7)), draw(st.integers(lo_w, lo_w + 7))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    oh, ow, pads = im2col.conv_geometry((n, h, w, c), (kh, kw), (sh, sw), padding)
    return (n, h, w, c), (kh, kw), (sh, sw), pads, (oh, ow)


dtypes = st.sampled_from([np.float32, np.float64])


@pytest.fixture(params=["parallel", "serial"])
def driver(request, monkeypatch):
    """Run a test with every kernel on its prange driver, then on its serial one."""
    monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", 0 if request.param == "parallel" else 1 << 62)
    return request.param


# ----------------------------------------------------------------------------- agreement
@settings(max_examples=30, **SETTINGS)
@given(geo=geometries(), dtype=dtypes, seed=st.integers(0, 2**16))
def test_im2col_col2im_agree(geo, dtype, seed):
    shape, k, s, pads, out_hw = geo
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    cols = im2col.im2col_numba(x, k, s, pads, out_hw)
    assert cols.dtype == dtype
    np.testing.assert_array_equal(cols, im2col.im2col_numpy(x, k, s, pads, out_hw))  # a pure copy
    c = rng.standard_normal(cols.shape).astype(dtype)
    dx = im2col.col2im_numba(c, shape, k, s, pads, out_hw)
    assert dx.dtype == dtype and dx.shape == shape
    assert rel_err(dx, im2col.col2im_numpy(c, shape, k, s, pads, out_hw)) < TOL[dtype]


@settings(max_examples=30, **SETTINGS)
@given(geo=geometries(), dtype=dtypes, seed=st.integers(0, 2**16), backend=st.sampled_from(["numpy", "numba"]))
def test_col2im_is_the_adjoint_of_im2col(geo, dtype, seed, backend):
    shape, k, s, pads, out_hw = geo
    fwd = im2col.im2col_numba if backend == "numba" else im2col.im2col_numpy
    adj = im2col.col2im_numba if backend == "numba" else im2col.col2im_numpy
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    c = rng.standard_normal((shape[0] * out_hw[0] * out_hw[1], k[0] * k[1] * shape[3])).astype(dtype)
    lhs = np.vdot(fwd(x, k, s, pads, out_hw).astype(np.float64), c.astype(np.float64))
    rhs = np.vdot(x.astype(np.float64), adj(c, shape, k, s, pads, out_hw).astype(np.float64))
    assert abs(lhs - rhs) <= 1e-5 * max(1.0, abs(lhs)) * (10 if dtype == np.float32 else 1e-6)


@settings(max_examples=30, **SETTINGS)
@given(geo=geometries(), dtype=dtypes, seed=st.integers(0, 2**16), filters=st.integers(1, 6),
       relu=st.booleans(), use_bias=st.booleans())
def test_conv_agrees(geo, dtype, seed, filters, relu, use_bias):
    shape, k, s, pads, out_hw = geo
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    kernel = rng.standard_normal(k + (shape[3], filters)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype) if use_bias else None
    ya, ca = conv.conv2d_forward_numpy(x, kernel, bias, s, pads, out_hw, relu=relu)
    ws = workspace.Workspace()  # one for the forward and the backward, as a layer has
    yb, cb = conv.conv2d_forward_numba(x, kernel, bias, s, pads, out_hw, relu=relu, ws=ws)
    assert yb.dtype == dtype and yb.shape == ya.shape
    assert rel_err(ya, yb) < TOL[dtype]
    dout = rng.standard_normal(ya.shape).astype(dtype)
    for need_dx in (True, False):
        ga = conv.conv2d_backward_numpy(dout, ca, need_dx)
        gb = conv.conv2d_backward_numba(dout, cb, need_dx, ws=ws)
        assert_grads_agree(ga, gb, dtype)


@settings(max_examples=30, **SETTINGS)
@given(geo=geometries(), dtype=dtypes, seed=st.integers(0, 2**16), ties=st.booleans())
def test_maxpool_agrees(geo, dtype, seed, ties):
    shape, k, s, pads, out_hw = geo
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    if ties:  # after a ReLU whole windows are 0: the first position must win
        x = np.maximum(x, 0).round(0)
    ya, ca = pool.maxpool2d_forward_numpy(x, k, s, pads, out_hw)
    yb, cb = pool.maxpool2d_forward_numba(x, k, s, pads, out_hw, ws=workspace.Workspace())
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ca[1], cb[1])
    assert cb[1].dtype == np.int32
    dout = rng.standard_normal(ya.shape).astype(dtype)
    da, db = pool.maxpool2d_backward_numpy(dout, ca), pool.maxpool2d_backward_numba(dout, cb)
    assert db.dtype == dtype and db.shape == shape
    assert rel_err(da, db) < TOL[dtype]


@settings(max_examples=20, **SETTINGS)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=4), dtype=dtypes, seed=st.integers(0, 2**16))
def test_relu_agrees(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::3] = 0  # exact zeros: gradient 0 there
    ya, ca = activations.relu_forward_numpy(x)
    yb, cb = activations.relu_forward_numba(x)
    np.testing.assert_array_equal(ya, yb)
    dy = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(activations.relu_backward_numpy(dy, ca), activations.relu_backward_numba(dy, cb))
    assert activations.relu_backward_numba(dy, cb)[x == 0].sum() == 0


@settings(max_examples=20, **SETTINGS)
@given(n=st.integers(1, 40), k=st.integers(2, 12), dtype=dtypes, scale=st.sampled_from([1.0, 30.0, 1e4]),
       seed=st.integers(0, 2**16))
def test_softmax_ce_agrees(n, k, dtype, scale, seed):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, k)) * scale).astype(dtype)
    y = rng.integers(0, k, n)
    la, da = softmax_ce.sparse_softmax_ce_numpy(z, y)
    lb, db = softmax_ce.sparse_softmax_ce_numba(z, y)
    assert np.isfinite(lb) and type(lb) is type(la) and db.dtype == dtype
    assert abs(float(la) - float(lb)) <= 1e-5 * max(1.0, abs(float(la))) * (1 if dtype == np.float32 else 1e-6)
    # every entry of (p - onehot) / N lies in [-1/N, 1/N]: its rounding is relative to 1/N, also when all
    # entries are ~0 (huge logits: p is one-hot and equals the label's one-hot)
    scale = max(np.abs(da).max(), np.abs(db).max(), 1.0 / n)
    assert np.abs(da.astype(np.float64) - db).max() / scale < 1e-5 * (1 if dtype == np.float32 else 1e-6)


# ----------------------------------------------------------------------------- conventions
def test_maxpool_padding_is_minus_inf_and_first_max_wins(driver):
    x = -np.ones((1, 3, 3, 2), np.float32)  # all negative: a 0 padding would win
    oh, ow, pads = im2col.conv_geometry(x.shape, (2, 2), (2, 2), "same")
    y, cache = pool.maxpool2d_forward_numba(x, (2, 2), (2, 2), pads, (oh, ow))
    assert (y == -1).all()
    z = np.zeros((1, 2, 2, 1), np.float32)  # one window of four tied zeros
    y, cache = pool.maxpool2d_forward_numba(z, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1))
    dx = pool.maxpool2d_backward_numba(np.ones((1, 1, 1, 1), np.float32), cache)
    assert dx[0, :, :, 0].tolist() == [[1, 0], [0, 0]]


@pytest.mark.parametrize("shape,padding", [((2, 13, 13, 3), "valid"), ((2, 13, 13, 3), "same"),
                                           ((1, 8, 6, 2), "valid"), ((1, 7, 9, 2), "same")])
def test_maxpool_backward_tiled_and_general_paths(shape, padding, driver):
    """stride = pool: the one-pass path when the windows tile the image, the general one with padding."""
    rng = np.random.default_rng(7)
    x = np.maximum(rng.standard_normal(shape), 0).round(1).astype(np.float32)  # many ties
    oh, ow, pads = im2col.conv_geometry(x.shape, (2, 2), (2, 2), padding)
    ya, ca = pool.maxpool2d_forward_numpy(x, (2, 2), (2, 2), pads, (oh, ow))
    yb, cb = pool.maxpool2d_forward_numba(x, (2, 2), (2, 2), pads, (oh, ow))
    dout = rng.standard_normal(ya.shape).astype(np.float32)
    np.testing.assert_array_equal(pool.maxpool2d_backward_numpy(dout, ca), pool.maxpool2d_backward_numba(dout, cb))


def test_fused_relu_gradient_is_zero_at_zero(driver):
    x = np.zeros((1, 2, 2, 1), np.float32)
    kernel = np.ones((1, 1, 1, 1), np.float32)
    y, cache = conv.conv2d_forward_numba(x, kernel, np.zeros(1, np.float32), (1, 1), (0, 0, 0, 0), (2, 2), relu=True)
    dx, dk, db = conv.conv2d_backward_numba(np.ones_like(y), cache)
    assert (y == 0).all() and (dx == 0).all() and dk.sum() == 0 and db.sum() == 0


# ----------------------------------------------------------------------------- gradient checks
def _vjp_check(forward, backward_grads, inputs, rng):
    """f = sum(forward(*inputs) * dy); compare backward's gradients with central differences."""
    y = forward(*inputs)[0]
    dy = rng.standard_normal(y.shape)
    grads = backward_grads(dy)
    errors = []
    for v, g in zip(inputs, grads):
        num = gradcheck.numerical_gradient(lambda: float(np.sum(forward(*inputs)[0] * dy)), v)
        errors.append(gradcheck.relative_error(g, num))
    return errors


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("k,s,padding,relu", [((3, 2), (1, 2), "same", True), ((2, 3), (2, 1), "valid", False),
                                              ((3, 3), (1, 1), "same", False)])
def test_conv_kernel_gradcheck(backend, k, s, padding, relu, driver):
    rng = np.random.default_rng(1)
    x = gradcheck.spread_input((2, 5, 6, 2), rng)
    kernel = rng.standard_normal(k + (2, 3))
    bias = rng.standard_normal(3) * 0.1
    oh, ow, pads = im2col.conv_geometry(x.shape, k, s, padding)
    fwd = conv.conv2d_forward_numba if backend == "numba" else conv.conv2d_forward_numpy
    bwd = conv.conv2d_backward_numba if backend == "numba" else conv.conv2d_backward_numpy

    def forward(x, kernel, bias):
        return fwd(x, kernel, bias, s, pads, (oh, ow), relu=relu)

    cache = forward(x, kernel, bias)[1]
    errors = _vjp_check(forward, lambda dy: bwd(dy, cache), (x, kernel, bias), rng)
    assert max(errors) < gradcheck.THRESHOLD, errors


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("p,s,padding", [((2, 2), (2, 2), "valid"), ((3, 2), (1, 2), "same"), ((3, 3), (2, 2), "same")])
def test_pool_kernel_gradcheck(backend, p, s, padding, driver):
    rng = np.random.default_rng(2)
    x = gradcheck.spread_input((2, 5, 7, 3), rng)  # no ties, so the max is differentiable
    oh, ow, pads = im2col.conv_geometry(x.shape, p, s, padding)
    fwd = pool.maxpool2d_forward_numba if backend == "numba" else pool.maxpool2d_forward_numpy
    bwd = pool.maxpool2d_backward_numba if backend == "numba" else pool.maxpool2d_backward_numpy

    def forward(x):
        return fwd(x, p, s, pads, (oh, ow))

    cache = forward(x)[1]
    errors = _vjp_check(forward, lambda dy: (bwd(dy, cache),), (x,), rng)
    assert max(errors) < gradcheck.THRESHOLD, errors


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_softmax_ce_gradcheck(backend):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((4, 7)) * 3
    y = rng.integers(0, 7, 4)
    fn = softmax_ce.sparse_softmax_ce_numba if backend == "numba" else softmax_ce.sparse_softmax_ce_numpy
    _, dz = fn(z, y)
    num = gradcheck.numerical_gradient(lambda: float(fn(z, y)[0]), z)
    assert gradcheck.relative_error(dz, num) < gradcheck.THRESHOLD


# ----------------------------------------------------------------------------- drivers, purity, buffers
def test_parallel_and_serial_drivers_agree(monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 9, 8, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    oh, ow, pads = im2col.conv_geometry(x.shape, (3, 3), (1, 1), "same")
    results = []
    for threshold in (0, 1 << 62):
        monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", threshold)
        y, cache = conv.conv2d_forward_numba(x, kernel, bias, (1, 1), pads, (oh, ow), relu=True)
        grads = conv.conv2d_backward_numba(np.ones_like(y), cache)
        p, pcache = pool.maxpool2d_forward_numba(y, (2, 2), (2, 2), (0, 0, 0, 0), (4, 4))
        results.append([y, *grads, p, pool.maxpool2d_backward_numba(np.ones_like(p), pcache)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)  # same chunks, same order: bit-identical


def test_backward_never_writes_its_inputs(driver):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 6, 2)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 2, 3)).astype(np.float32)
    ws = workspace.Workspace()  # the backward shares the forward's ws, whose buffers the cache holds
    y, cache = conv.conv2d_forward_numba(x, kernel, None, (1, 1), (1, 1, 1, 1), (6, 6), relu=True, ws=ws)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    before = [dout.copy(), cache[1].copy(), y.copy()]
    first = [g.copy() for g in conv.conv2d_backward_numba(dout, cache, ws=ws)]  # dx is a ws buffer
    second = conv.conv2d_backward_numba(dout, cache, ws=ws)
    for a, b in zip([dout, cache[1], y], before):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    p, pcache = pool.maxpool2d_forward_numba(y, (2, 2), (2, 2), (0, 0, 0, 0), (3, 3))
    dp = rng.standard_normal(p.shape).astype(np.float32)
    dp_before = dp.copy()
    pool.maxpool2d_backward_numba(dp, pcache)
    np.testing.assert_array_equal(dp, dp_before)


@pytest.mark.parametrize("backend", ["numba"])
def test_training_steps_reuse_their_buffers(backend, monkeypatch):
    """A model's per-call states keep their workspaces from step to step (same batch size)."""
    from npcnn import plan as plan_mod
    from npcnn.layers import Dense, Flatten
    from npcnn.models import Sequential

    monkeypatch.setattr(plan_mod, "FUSE", False)  # the layers one by one: conv + ReLU, then the pool
    rng = np.random.default_rng(6)
    model = Sequential([Conv2D(4, 3, activation="relu", input_shape=(8, 8, 3)), MaxPooling2D(), Flatten(),
                        Dense(3)])
    model.compile("adam", "sparse_categorical_crossentropy")
    previous = npcnn.set_num_threads(1)  # one state list, unsharded
    try:
        with npcnn.use_backend(backend):
            ids = []
            for _ in range(3):
                model.train_on_batch(rng.standard_normal((4, 8, 8, 3)).astype(np.float32), [0, 1, 2, 0])
                (conv_st, pool_st, *_), = model._free_states
                ids.append((id(conv_st.ws["im2col.cols"]), id(conv_st.ws["conv.dz"]), id(pool_st.ws["pool.argmax"]),
                            id(pool_st.ws["pool.dx"])))
            assert ids[0] == ids[1] == ids[2]
            model.train_on_batch(rng.standard_normal((2, 8, 8, 3)).astype(np.float32), [0, 1])  # new batch size
            assert model._free_states[0][0].ws["im2col.cols"].shape[0] == 2 * 6 * 6
    finally:
        npcnn.set_num_threads(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 3, 4, 5), (17, 6), (7,), (0,)])
def test_adam_update_agrees_to_the_bit(dtype, shape):
    """The fused Numba Adam does the twin's float operations in the twin's order: equal results."""
    from npcnn.kernels import optim

    rng = np.random.default_rng(3)
    p, g = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    m = (rng.standard_normal(shape) * 0.1).astype(dtype)
    v = (np.abs(rng.standard_normal(shape)) * 0.01).astype(dtype)
    v.flat[:1] = 0  # sqrt(0) + epsilon: the division stays finite
    a, b = [x.copy() for x in (p, g, m, v)], [x.copy() for x in (p, g, m, v)]
    for alpha in (1e-3, 2.5e-3, 0.1):
        optim.adam_update_numpy(*a, 0.9, 0.999, alpha, 1e-7)
        optim.adam_update_numba(*b, 0.9, 0.999, alpha, 1e-7)
    for x, y in zip(a, b):
        assert x.dtype == dtype and np.array_equal(x, y)
    assert p.size == 0 or not np.array_equal(a[0], p)  # it did move


def test_adam_update_numba_non_contiguous_falls_back_in_place():
    from npcnn.kernels import optim

    rng = np.random.default_rng(4)
    base = rng.standard_normal((6, 8)).astype(np.float32)
    p = base[:, ::2]  # a strided view: updated in place through the twin
    g = rng.standard_normal(p.shape).astype(np.float32)
    m, v = np.zeros_like(g), np.zeros_like(g)
    expect = [x.copy() for x in (p, g, m, v)]
    optim.adam_update_numpy(*expect, 0.9, 0.999, 1e-3, 1e-7)
    optim.adam_update_numba(p, g, m, v, 0.9, 0.999, 1e-3, 1e-7)
    assert np.array_equal(base[:, ::2], expect[0]) and np.array_equal(m, expect[2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradient_bookkeeping_kernels_agree(dtype):
    """Summing shard gradients and the NaN/Inf check: Numba equals the twin, NaN/inf anywhere found."""
    from npcnn.kernels import optim

    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((5, 7)).astype(dtype)
    np.testing.assert_array_equal(optim.add_arrays_numba([a, b]), optim.add_arrays_numpy([a, b]))
    three = [a, b, a[::-1].copy()]
    np.testing.assert_array_equal(optim.add_arrays_numba(three), optim.add_arrays_numpy(three))
    assert optim.add_arrays_numba([a, b]).dtype == dtype
    for fn in (optim.all_finite_numpy, optim.all_finite_numba):
        assert fn(a) and fn(np.zeros(0, dtype)) and fn(np.array([np.finfo(dtype).max, -np.finfo(dtype).tiny], dtype))
        for bad in (np.nan, np.inf, -np.inf):
            for pos in (0, 17, 34):
                c = a.copy()
                c.flat[pos] = bad
                assert not fn(c), (fn.__name__, bad, pos)
        assert not fn(np.full((3,), np.nan, dtype)[::2])  # strided: the twin's path


@pytest.mark.parametrize("shape", [(3, 30, 30, 32), (2, 7, 9, 5), (1, 2, 2, 1), (2, 3, 5, 3)])
@pytest.mark.parametrize("values", ["random", "ties", "special"])
def test_maxpool_2x2_fast_path_equals_the_general_path_and_the_twin(shape, values, driver):
    """The 2x2 / stride 2 / 'valid' forward has its own loop: same outputs and argmax as the
    general loop (ties: first position; NaN/inf as the general kernel) and as the twin."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape).astype(np.float32)
    if values == "ties":  # after a ReLU whole windows are 0, others hold repeated values
        x = np.maximum(x, 0).round(0)
    elif values == "special":
        x.flat[::7] = np.inf
        x.flat[3::11] = -np.inf
    oh, ow = shape[1] // 2, shape[2] // 2
    out, cache = pool.maxpool2d_forward_numba(x, (2, 2), (2, 2), (0, 0, 0, 0), (oh, ow))
    general_out = np.empty_like(out)
    general_arg = np.empty(out.shape, np.int32)
    for n in range(shape[0]):
        pool._maxpool_fwd_image(x, n, 2, 2, 2, 2, 0, 0, general_out, general_arg)
    np.testing.assert_array_equal(out, general_out)
    np.testing.assert_array_equal(cache[1], general_arg)
    twin_out, twin_cache = pool.maxpool2d_forward_numpy(x, (2, 2), (2, 2), (0, 0, 0, 0), (oh, ow))
    np.testing.assert_array_equal(out, twin_out)
    np.testing.assert_array_equal(cache[1], twin_cache[1])
