"""The kernel contract of npcnn.kernels (docs/kernels.md), kernel by kernel and as a whole.

* the registry: every registered name has a NumPy twin and a Numba version with one signature
  (ending in ``ws=None``) and a dispatcher; unknown names and backends get clear errors;
* the kernels new in the Numba backend (dense, softmax forward/backward, sigmoid, tanh,
  sparse_ce_from_probs) agree with their twins on random shapes, float32 to 1e-5 and float64 to
  1e-12 (relative to the largest value, or to 1 for sigmoid and tanh, whose outputs lie in
  [-1, 1]), with ``ws=None`` and with one Workspace reused twice, and pass float64
  vector-Jacobian gradient checks on both backends;
* ``override`` reaches the composite kernels (conv -> im2col/col2im, the fused op -> conv/pool) on
  both backends, is restored after the block and after an exception, and nests;
* ``Workspace(parallel=False)`` runs the serial drivers only, with the same results as
  ``parallel=True``; the buffer names are distinct, so one Workspace serves a whole fused block
  (and every kernel at once) with no two buffers aliasing; with a ws the outputs are its buffers,
  without one they are fresh; buffers are reused while the shapes stay;
* the caches are the named tuples, shared by both twins.
"""

from __future__ import annotations

import importlib
import inspect
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import SETTINGS, TOL, rel_err

import npcnn
from npcnn import gradcheck
from npcnn import kernels as K
from npcnn.kernels import conv, dense, fused, im2col, pool, registry, workspace
from npcnn.kernels.workspace import Workspace

dtypes = st.sampled_from([np.float32, np.float64])


# ----------------------------------------------------------------------------- the registry
def test_every_registered_kernel_has_both_twins_with_one_signature():
    names = K.kernel_names()
    assert {"im2col", "col2im", "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
            "relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
            "softmax_forward", "softmax_backward", "dense_forward", "dense_backward", "sparse_softmax_ce",
            "sparse_ce_from_probs", "adam_update", "add_arrays", "all_finite",
            "conv2d_relu_maxpool_forward", "conv2d_relu_maxpool_backward"} <= set(names)
    for name in names:
        impls = registry._REGISTRY[name]
        assert set(impls) == {"numpy", "numba"}, name
        a, b = impls["numpy"], impls["numba"]
        assert a is not b, f"{name}: the Numba entry is the twin itself"
        sa, sb = inspect.signature(a), inspect.signature(b)
        assert list(sa.parameters) == list(sb.parameters), name
        assert [p.default for p in sa.parameters.values()] == [p.default for p in sb.parameters.values()], name
        ws = sa.parameters.get("ws")
        assert ws is not None and ws.default is None, f"{name} takes no ws=None"
        assert list(sa.parameters)[-1] == "ws", name
        assert callable(getattr(K, name)), name
        assert name in K.__all__


def test_each_module_registers_its_KERNELS():
    for module in K.MODULES:
        for name, (a, b) in module.KERNELS.items():
            assert K.get_kernel(name, "numpy") is a and K.get_kernel(name, "numba") is b
            assert a.__name__ == f"{name}_numpy" and b.__name__ == f"{name}_numba"


def test_get_kernel_errors_name_the_valid_choices():
    with pytest.raises(KeyError, match="unknown kernel 'col2imm'. Did you mean 'col2im'"):
        K.get_kernel("col2imm")
    with pytest.raises(ValueError, match="conv2d_forward"):  # the same error is also a ValueError
        K.get_kernel("no_such_kernel")
    with pytest.raises(ValueError, match=r"backend must be one of \('numpy', 'numba'\), got 'cuda'"):
        K.get_kernel("col2im", "cuda")
    with pytest.raises(KeyError, match="unknown kernel"):
        with K.override("col2imm", lambda *a, **k: None):
            pass
    with pytest.raises(AttributeError):
        K.no_such_kernel  # noqa: B018


def test_dispatchers_follow_the_backend_at_call_time(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    calls = []

    def spy(x, ws=None):
        calls.append(ws)
        return x, x

    with K.override("relu_forward", spy, backend="numba"):
        with npcnn.use_backend("numba"):
            K.relu_forward(x)
        with npcnn.use_backend("numpy"):
            y, _ = K.relu_forward(x)
    assert calls == [None] and (y >= 0).all()


def test_im2col_is_a_module_and_a_dispatcher(rng):
    from npcnn.kernels import im2col as module

    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    args = (x, (3, 2), (1, 2), (1, 1, 0, 1), (5, 2))
    assert module is im2col and hasattr(module, "im2col_numpy")
    for backend in ("numpy", "numba"):
        with npcnn.use_backend(backend):
            np.testing.assert_array_equal(K.im2col(*args), im2col.im2col_numpy(*args))


def test_register_a_new_kernel_gets_a_dispatcher():
    def twice_numpy(x, ws=None):
        return 2 * x

    def twice_numba(x, ws=None):
        return x + x

    try:
        K.register("twice_for_test", "numpy", twice_numpy)
        K.register("twice_for_test", "numba", twice_numba)
        with npcnn.use_backend("numpy"):
            assert K.twice_for_test(3) == 6
        assert K.get_kernel("twice_for_test", "numba") is twice_numba
        with pytest.raises(ValueError, match="backend"):
            K.register("twice_for_test", "gpu", twice_numba)
        with pytest.raises(ValueError, match="backend"):
            K.register("never_registered", "gpu", twice_numba)
        assert "never_registered" not in K.kernel_names()
    finally:
        registry._REGISTRY.pop("twice_for_test", None)
        vars(K).pop("twice_for_test", None)


# ----------------------------------------------------------------------------- the new twins agree
def _agree(a, b, dtype, exact=False):
    if a is None:
        assert b is None
        return
    assert np.asarray(b).dtype == dtype and np.shape(a) == np.shape(b)
    if exact:
        np.testing.assert_array_equal(a, b)
    else:
        assert rel_err(a, b) < TOL[dtype]


def _run_twice(call, make_inputs, dtype, compare):
    """call(backend, inputs, ws) -> results; compare(twin results, Numba results). Numba runs with
    ws=None and with one Workspace on two different inputs (the first results compared before the
    second call reuses the buffers)."""
    ws = Workspace()
    for k in range(2):
        inputs = make_inputs(k)
        expect = call("numpy", inputs, None)
        compare(expect, call("numba", inputs, None))
        compare(expect, call("numba", inputs, ws))
    return ws


@settings(max_examples=25, **SETTINGS)
@given(n=st.integers(1, 9), d=st.integers(1, 17), u=st.integers(1, 7), dtype=dtypes, use_bias=st.booleans(),
       need_dx=st.booleans(), seed=st.integers(0, 2**16))
def test_dense_agrees(n, d, u, dtype, use_bias, need_dx, seed):
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((d, u)).astype(dtype)
    bias = rng.standard_normal(u).astype(dtype) if use_bias else None

    def make(k):
        return rng.standard_normal((n, d)).astype(dtype), rng.standard_normal((n, u)).astype(dtype)

    def call(backend, inputs, ws):
        x, dy = inputs
        fwd, bwd = K.get_kernel("dense_forward", backend), K.get_kernel("dense_backward", backend)
        y, cache = fwd(x, kernel, bias, ws=ws)
        assert isinstance(cache, dense.DenseCache) and cache.x is x
        y = y.copy()
        # the scales of the sums: a sum of d products may cancel to ~0, where a relative error means nothing
        ax, ady = np.abs(x).astype(np.float64), np.abs(dy).astype(np.float64)
        scales = (ax @ np.abs(kernel) + (0 if bias is None else np.abs(bias)), ady @ np.abs(kernel).T,
                  ax.T @ ady, ady.sum(axis=0))
        return (y,) + bwd(dy, cache, need_dx, ws=ws) + (scales,)

    def compare(a, b):
        for p, q, scale in zip(a, b, a[-1]):
            if p is None:
                assert q is None
                continue
            assert q.dtype == dtype and q.shape == p.shape
            assert np.abs(p.astype(np.float64) - q).max(initial=0) <= TOL[dtype] * max(scale.max(initial=0), 1e-30)

    ws = _run_twice(call, make, dtype, compare)
    assert set(ws) <= {"dense.out", "dense.dx", "dense.db_partial"}


@settings(max_examples=25, **SETTINGS)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), dtype=dtypes, op=st.sampled_from(["sigmoid", "tanh"]),
       scale=st.sampled_from([1.0, 30.0]), seed=st.integers(0, 2**16))
def test_sigmoid_and_tanh_agree(shape, dtype, op, scale, seed):
    rng = np.random.default_rng(seed)

    def make(k):
        return (rng.standard_normal(shape) * scale).astype(dtype), rng.standard_normal(shape).astype(dtype)

    def call(backend, inputs, ws):
        x, dy = inputs
        y, cache = K.get_kernel(f"{op}_forward", backend)(x, ws=ws)
        assert cache is y and y.dtype == dtype and y.shape == x.shape
        dx = K.get_kernel(f"{op}_backward", backend)(dy, cache, ws=ws)
        return y.copy(), dx

    def compare(a, b):
        # At the scale of the outputs' range, 1: for very negative x, 1 + tanh(x / 2) cancels, and the
        # twin's and Numba's tanh (one rounding each, not the same library) differ by an ulp of 1.
        for p, q in zip(a, b):
            assert q.dtype == dtype and q.shape == p.shape
            assert np.abs(p.astype(np.float64) - q).max(initial=0) <= TOL[dtype] * max(1.0, np.abs(p).max(initial=0))

    ws = _run_twice(call, make, dtype, compare)
    assert set(ws) == {f"{op}.out", f"{op}.dx"}


@settings(max_examples=25, **SETTINGS)
@given(n=st.integers(1, 40), k=st.integers(1, 12), dtype=dtypes, scale=st.sampled_from([1.0, 30.0, 1e3]),
       seed=st.integers(0, 2**16))
def test_softmax_agrees(n, k, dtype, scale, seed):
    rng = np.random.default_rng(seed)

    def make(i):
        return (rng.standard_normal((n, k)) * scale).astype(dtype), rng.standard_normal((n, k)).astype(dtype)

    def call(backend, inputs, ws):
        z, dp = inputs
        p, cache = K.get_kernel("softmax_forward", backend)(z, ws=ws)
        assert cache is p and np.isfinite(p).all()
        return p.copy(), K.get_kernel("softmax_backward", backend)(dp, cache, ws=ws)

    def compare(a, b):
        _agree(a[0], b[0], dtype)
        np.testing.assert_allclose(b[0].sum(axis=1), 1, rtol=10 * TOL[dtype])
        # dz is a difference of products of O(1) values: compared at the scale of p * dp
        scale = max(1.0, float(np.abs(a[0] * a[1]).max()))
        assert np.abs(a[1] - b[1]).max() <= 10 * TOL[dtype] * scale and b[1].dtype == dtype

    ws = _run_twice(call, make, dtype, compare)
    assert set(ws) == {"softmax.out", "softmax.dz"}


@settings(max_examples=25, **SETTINGS)
@given(n=st.integers(1, 30), k=st.integers(2, 10), dtype=dtypes, seed=st.integers(0, 2**16))
def test_sparse_ce_from_probs_agrees(n, k, dtype, seed):
    rng = np.random.default_rng(seed)

    def make(i):
        probs = rng.random((n, k)).astype(dtype)
        probs /= probs.sum(axis=1, keepdims=True)
        labels = rng.integers(0, k, n)
        probs[0, labels[0]] = 0  # below epsilon: clipped, no gradient
        if n > 1:
            probs[1, labels[1]] = 1  # above 1 - epsilon: clipped too
        return probs, labels

    def call(backend, inputs, ws):
        probs, labels = inputs
        loss, d = K.get_kernel("sparse_ce_from_probs", backend)(probs, labels, ws=ws)
        return loss, d

    def compare(a, b):
        assert type(b[0]) is type(a[0]) is np.dtype(dtype).type
        assert abs(float(a[0]) - float(b[0])) <= TOL[dtype] * max(1.0, abs(float(a[0])))
        _agree(a[1], b[1], dtype, exact=True)  # the same float operations, element by element

    ws = _run_twice(call, make, dtype, compare)
    assert set(ws) == {"sparse_ce_from_probs.dprobs"}


def test_sparse_ce_from_probs_epsilon_is_passed_on(rng):
    probs = np.full((2, 4), 0.25, np.float32)
    labels = np.array([1, 3])
    for backend in ("numpy", "numba"):
        loss, d = K.get_kernel("sparse_ce_from_probs", backend)(probs, labels, 0.3)  # 0.25 < epsilon: clipped
        assert np.isclose(loss, -np.log(0.3), rtol=1e-6) and not d.any()


# ----------------------------------------------------------------------------- gradient checks of the new twins
def _vjp_errors(forward, backward, inputs, rng):
    """f = sum(forward(*inputs) * dy); backward(dy) -> gradients of ``inputs``; relative errors."""
    y = np.array(forward(*inputs), copy=True)
    dy = rng.standard_normal(y.shape)
    grads = backward(dy)
    errors = []
    for v, g in zip(inputs, grads):
        num = gradcheck.numerical_gradient(lambda: float(np.sum(forward(*inputs) * dy)), v)
        errors.append(gradcheck.relative_error(g, num))
    return errors


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_new_kernels_gradcheck(backend):
    rng = np.random.default_rng(11)
    get = lambda name: K.get_kernel(name, backend)  # noqa: E731
    x = rng.standard_normal((4, 5))
    kernel, bias = rng.standard_normal((5, 3)), rng.standard_normal(3)

    def dense_fwd(x, kernel, bias):
        return get("dense_forward")(x, kernel, bias)[0]

    def dense_bwd(dy):
        return get("dense_backward")(dy, get("dense_forward")(x, kernel, bias)[1])

    assert max(_vjp_errors(dense_fwd, dense_bwd, (x, kernel, bias), rng)) < gradcheck.THRESHOLD
    for op in ("sigmoid", "tanh", "softmax"):
        z = rng.standard_normal((3, 6)) * 2

        def fwd(z, op=op):
            return get(f"{op}_forward")(z)[0]

        def bwd(dy, op=op, z=z):
            return (get(f"{op}_backward")(dy, get(f"{op}_forward")(z)[1]),)

        assert max(_vjp_errors(fwd, bwd, (z,), rng)) < gradcheck.THRESHOLD, op
    probs = rng.random((4, 5)) * 0.8 + 0.1
    labels = rng.integers(0, 5, 4)
    _, d = get("sparse_ce_from_probs")(probs, labels)
    num = gradcheck.numerical_gradient(lambda: float(get("sparse_ce_from_probs")(probs, labels)[0]), probs)
    assert gradcheck.relative_error(d, num) < gradcheck.THRESHOLD


# ----------------------------------------------------------------------------- override
def _conv_args(rng, dtype=np.float32):
    x = rng.standard_normal((2, 7, 6, 3)).astype(dtype)
    kernel = rng.standard_normal((3, 2, 3, 4)).astype(dtype)
    bias = rng.standard_normal(4).astype(dtype)
    oh, ow, pads = K.conv_geometry(x.shape, (3, 2), (1, 1), "same")
    poh, pow_, ppads = K.conv_geometry((2, oh, ow, 4), (2, 2), (2, 2), "valid")
    return (x, kernel, bias, (1, 1), pads, (oh, ow)), ((2, 2), (2, 2), ppads, (poh, pow_))


def zero_col2im(cols, x_shape, kernel_size, strides, pads, out_hw, ws=None):
    """A broken col2im: forgets to scatter the gradient back."""
    return np.zeros(x_shape, cols.dtype)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_override_reaches_conv_and_the_fused_op(backend, rng):
    conv_args, pool_args = _conv_args(rng)
    with npcnn.use_backend(backend):
        y, cache = K.conv2d_forward(*conv_args, relu=True)
        p, fcache = K.conv2d_relu_maxpool_forward(*conv_args, *pool_args)
        dy, dp = np.ones_like(y), np.ones_like(p)
        dx, dk, _ = K.conv2d_backward(dy, cache)
        fdx, fdk, _ = K.conv2d_relu_maxpool_backward(dp, fcache)
        dx, fdx = dx.copy(), fdx.copy()
        assert np.abs(dx).sum() > 0 and np.abs(fdx).sum() > 0
        with K.override("col2im", zero_col2im):
            dx0, dk0, _ = K.conv2d_backward(dy, cache)
            fdx0, fdk0, _ = K.conv2d_relu_maxpool_backward(dp, fcache)
            assert not dx0.any() and not fdx0.any()
            np.testing.assert_array_equal(dk0, dk)  # the kernel gradient does not use col2im
            np.testing.assert_array_equal(fdk0, fdk)
        np.testing.assert_array_equal(K.conv2d_backward(dy, cache)[0], dx)  # restored
        np.testing.assert_array_equal(K.conv2d_relu_maxpool_backward(dp, fcache)[0], fdx)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_override_reaches_im2col_and_the_fused_ops_parts(backend, rng):
    conv_args, pool_args = _conv_args(rng)
    x, kernel, bias = conv_args[:3]
    calls = []

    def zero_im2col(x, kernel_size, strides, pads, out_hw, ws=None):
        return np.zeros((x.shape[0] * out_hw[0] * out_hw[1], kernel_size[0] * kernel_size[1] * x.shape[3]), x.dtype)

    def spy(name):
        real = K.get_kernel(name, backend)

        def call(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return call

    with npcnn.use_backend(backend):
        with K.override("im2col", zero_im2col, backend=backend):
            y, _ = K.conv2d_forward(*conv_args)
            np.testing.assert_array_equal(y, np.broadcast_to(bias, y.shape))
        names = ("conv2d_forward", "maxpool2d_forward", "maxpool2d_backward")
        with K.override(names[0], spy(names[0])), K.override(names[1], spy(names[1])), \
                K.override(names[2], spy(names[2])):
            p, cache = K.conv2d_relu_maxpool_forward(*conv_args, *pool_args)
            K.conv2d_relu_maxpool_backward(np.ones_like(p), cache)
    assert calls == list(names)


def test_override_is_restored_after_an_exception_and_nests():
    original = {b: K.get_kernel("col2im", b) for b in ("numpy", "numba")}
    first, second = (lambda *a, **k: "first"), (lambda *a, **k: "second")
    with pytest.raises(RuntimeError, match="inside"):
        with K.override("col2im", first):
            assert K.get_kernel("col2im", "numpy") is first and K.get_kernel("col2im", "numba") is first
            raise RuntimeError("inside")
    assert {b: K.get_kernel("col2im", b) for b in original} == original
    with K.override("col2im", first):
        with K.override("col2im", second, backend="numba"):
            assert K.get_kernel("col2im", "numba") is second and K.get_kernel("col2im", "numpy") is first
        assert K.get_kernel("col2im", "numba") is first
    assert {b: K.get_kernel("col2im", b) for b in original} == original


def test_override_and_gradcheck_catch_a_broken_col2im():
    """The documented example: with a broken col2im, Conv2D's input gradient fails the check."""
    rng = np.random.default_rng(3)
    x = gradcheck.spread_input((2, 5, 6, 2), rng)
    kernel = rng.standard_normal((3, 3, 2, 3))
    oh, ow, pads = K.conv_geometry(x.shape, (3, 3), (1, 1), "same")
    for backend in ("numpy", "numba"):
        with npcnn.use_backend(backend):
            def f():  # dy: this iteration's, assigned below before f is called
                return float(np.sum(K.conv2d_forward(x, kernel, None, (1, 1), pads, (oh, ow))[0] * dy))  # noqa: B023

            y, cache = K.conv2d_forward(x, kernel, None, (1, 1), pads, (oh, ow))
            dy = rng.standard_normal(y.shape)
            num = gradcheck.numerical_gradient(f, x)
            assert gradcheck.relative_error(K.conv2d_backward(dy, cache)[0], num) < gradcheck.THRESHOLD
            with K.override("col2im", zero_col2im):
                assert gradcheck.relative_error(K.conv2d_backward(dy, cache)[0], num) > 0.5


# ----------------------------------------------------------------------------- drivers
def _run_all_numba(ws, rng_seed=0):
    """Every Numba kernel with drivers, all on one Workspace; returns copies of every result."""
    rng = np.random.default_rng(rng_seed)
    out = []

    def keep(*arrays):
        out.extend(None if a is None else np.array(a, copy=True) for a in arrays)

    conv_args, pool_args = _conv_args(rng)
    x = conv_args[0]
    keep(K.get_kernel("im2col", "numba")(x, (3, 2), (1, 1), conv_args[4], conv_args[5], ws=ws))
    cols = rng.standard_normal(out[-1].shape).astype(np.float32)
    keep(K.get_kernel("col2im", "numba")(cols, x.shape, (3, 2), (1, 1), conv_args[4], conv_args[5], ws=ws))
    y, cache = conv.conv2d_forward_numba(*conv_args, relu=True, ws=ws)
    keep(y, *conv.conv2d_backward_numba(np.ones_like(y), cache, ws=ws))
    p, pcache = pool.maxpool2d_forward_numba(y, (3, 2), (1, 2), (1, 1, 0, 0), (7, 3), ws=ws)
    keep(p, pcache.argmax, pool.maxpool2d_backward_numba(np.ones_like(p), pcache, ws=ws))
    p, fcache = fused.conv2d_relu_maxpool_forward_numba(*conv_args, *pool_args, ws=ws)
    keep(p, *fused.conv2d_relu_maxpool_backward_numba(np.ones_like(p) * 0.5, fcache, ws=ws))
    z = rng.standard_normal((6, 11)).astype(np.float32) * 3
    for op in ("relu", "sigmoid", "tanh", "softmax"):
        y, c = K.get_kernel(f"{op}_forward", "numba")(z, ws=ws)
        keep(y, K.get_kernel(f"{op}_backward", "numba")(z * 0.5, c, ws=ws))
    d, dc = K.get_kernel("dense_forward", "numba")(z, rng.standard_normal((11, 4)).astype(np.float32),
                                                   rng.standard_normal(4).astype(np.float32), ws=ws)
    keep(d, *K.get_kernel("dense_backward", "numba")(np.ones_like(d), dc, ws=ws))
    return out


def _count_drivers(monkeypatch):
    """Wrap every prange driver (``_*_par``) of the kernel modules with a call counter."""
    counts = {}
    for modname in ("im2col", "conv", "pool", "activations", "dense", "fused"):
        mod = importlib.import_module(f"npcnn.kernels.{modname}")
        for attr, fn in list(vars(mod).items()):
            if attr.startswith("_") and attr.endswith("_par") and callable(fn):
                def wrapper(*args, _fn=fn, _key=f"{modname}.{attr}"):
                    counts[_key] = counts.get(_key, 0) + 1
                    return _fn(*args)

                monkeypatch.setattr(mod, attr, wrapper)
    return counts


def test_workspace_parallel_false_runs_serial_drivers_with_the_same_results(monkeypatch):
    monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", 0)  # every kernel large enough for prange
    counts = _count_drivers(monkeypatch)
    serial = _run_all_numba(Workspace(parallel=False))
    assert counts == {}, counts
    parallel = _run_all_numba(Workspace(parallel=True))
    assert {"im2col._im2col_par", "im2col._col2im_par", "conv._bias_relu_par", "conv._mask_db_par",
            "pool._maxpool_fwd_par", "activations._relu_fwd_par", "activations._softmax_bwd_par",
            "activations._sigmoid_fwd_par", "activations._tanh_bwd_par", "dense._mask_db_par",
            "dense._bias_relu_par"} <= set(counts)
    assert len(serial) == len(parallel)
    for a, b in zip(serial, parallel):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)  # same chunks, same order: bit-identical


def test_run_parallel_reads_the_workspace_then_the_thread_count(monkeypatch):
    import numba

    big = workspace.PARALLEL_MIN_ELEMENTS
    assert not workspace.run_parallel(big - 1, Workspace(parallel=True))
    assert workspace.run_parallel(big, Workspace(parallel=True))
    assert not workspace.run_parallel(big, Workspace(parallel=False))
    for threads in (1, 4):
        monkeypatch.setattr(numba, "get_num_threads", lambda threads=threads: threads)
        for ws in (None, {}, Workspace()):
            assert workspace.run_parallel(big, ws) == (threads > 1)
        assert workspace.run_parallel(big, Workspace(parallel=False)) is False
        assert workspace.run_parallel(big, Workspace(parallel=True)) is True


# ----------------------------------------------------------------------------- buffers
FUSED_BUFFERS = {"im2col.cols", "conv.out", "pool.out", "pool.argmax", "fused.dp_masked", "fused.db_partial",
                 "pool.dx", "conv.dcols", "col2im.dx"}


def _assert_no_aliasing(ws):
    for (na, a), (nb, b) in itertools.combinations(ws.items(), 2):
        assert not np.shares_memory(a, b), (na, nb)


def test_one_workspace_serves_the_fused_block_with_distinct_buffers(rng):
    conv_args, pool_args = _conv_args(rng)
    ws = Workspace()
    p, cache = fused.conv2d_relu_maxpool_forward_numba(*conv_args, *pool_args, ws=ws)
    dx, dk, db = fused.conv2d_relu_maxpool_backward_numba(np.ones_like(p), cache, ws=ws)
    assert set(ws) == FUSED_BUFFERS
    _assert_no_aliasing(ws)
    assert np.shares_memory(p, ws["pool.out"]) and np.shares_memory(dx, ws["col2im.dx"])
    assert np.shares_memory(cache.conv.cols, ws["im2col.cols"]) and cache.pool.argmax is ws["pool.argmax"]
    for g in (dk, db):  # parameter gradients are the caller's own arrays
        assert not any(np.shares_memory(g, b) for b in ws.values())
    # and the results equal the ones without a workspace
    p0, cache0 = fused.conv2d_relu_maxpool_forward_numba(*conv_args, *pool_args)
    np.testing.assert_array_equal(p, p0)
    for a, b in zip((dx, dk, db), fused.conv2d_relu_maxpool_backward_numba(np.ones_like(p0), cache0)):
        np.testing.assert_array_equal(a, b)


def test_every_kernel_on_one_workspace_never_aliases():
    ws = Workspace()
    _run_all_numba(ws)
    assert all(name.count(".") == 1 for name in ws), sorted(ws)
    _assert_no_aliasing(ws)
    assert FUSED_BUFFERS <= set(ws) and {"conv.dz", "relu.out", "dense.dx", "softmax.dz"} <= set(ws)


def test_outputs_are_buffers_with_a_workspace_and_fresh_without(rng):
    x1, x2 = rng.standard_normal((2, 5, 7)).astype(np.float32)
    ws = Workspace()
    y1 = K.get_kernel("relu_forward", "numba")(x1, ws=ws)[0]
    kept = y1.copy()
    y2 = K.get_kernel("relu_forward", "numba")(x2, ws=ws)[0]
    assert y2 is y1 is ws["relu.out"] and not np.array_equal(y1, kept)  # overwritten by the next call
    a = K.get_kernel("relu_forward", "numba")(x1)[0]
    b = K.get_kernel("relu_forward", "numba")(x1)[0]
    assert not np.shares_memory(a, b) and not np.shares_memory(a, y1)


def test_buffers_are_reused_while_the_shapes_stay(rng):
    """The kernel-level side of a layer's buffer reuse: same batch size, same memory; a new one, new buffers."""
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    ws = Workspace()
    ids = []
    for n in (4, 4, 4, 2):
        x = rng.standard_normal((n, 8, 8, 3)).astype(np.float32)
        y, cache = conv.conv2d_forward_numba(x, kernel, None, (1, 1), (0, 0, 0, 0), (6, 6), relu=True, ws=ws)
        p, pcache = pool.maxpool2d_forward_numba(y, (2, 2), (2, 2), (0, 0, 0, 0), (3, 3), ws=ws)
        conv.conv2d_backward_numba(pool.maxpool2d_backward_numba(np.ones_like(p), pcache, ws=ws), cache, ws=ws)
        ids.append({k: id(v) for k, v in ws.items()})
    assert ids[0] == ids[1] == ids[2]
    assert ws["im2col.cols"].shape[0] == 2 * 6 * 6 and ids[3]["im2col.cols"] != ids[0]["im2col.cols"]


# ----------------------------------------------------------------------------- caches
def test_caches_are_the_named_tuples_of_both_twins(rng):
    conv_args, pool_args = _conv_args(rng, np.float64)
    x = conv_args[0]
    for backend in ("numpy", "numba"):
        get = lambda name: K.get_kernel(name, backend)  # noqa: E731, B023
        y, c = get("conv2d_forward")(*conv_args, relu=True)
        assert type(c) is K.ConvCache and c.x_shape == x.shape and c.y is not None
        assert get("conv2d_forward")(*conv_args)[1].y is None
        p, pc = get("maxpool2d_forward")(y, *pool_args)
        assert type(pc) is K.PoolCache and pc.argmax.dtype == np.int32 and pc.x_shape == y.shape
        d, dc = get("dense_forward")(x.reshape(2, -1), rng.standard_normal((126, 3)), None)
        assert type(dc) is K.DenseCache
        f, fc = get("conv2d_relu_maxpool_forward")(*conv_args, *pool_args)
        assert type(fc) is K.FusedCache and type(fc.conv) is K.ConvCache and type(fc.pool) is K.PoolCache
        assert (fc.p is None) == (backend == "numpy")
        for op in ("relu", "sigmoid", "tanh", "softmax"):
            out, cache = get(f"{op}_forward")(x.reshape(2, -1))
            assert cache is out


def test_conv_caches_cross_backends(rng):
    conv_args, _ = _conv_args(rng, np.float64)
    for relu in (False, True):
        ya, ca = conv.conv2d_forward_numpy(*conv_args, relu=relu)
        yb, cb = conv.conv2d_forward_numba(*conv_args, relu=relu)
        dy = rng.standard_normal(ya.shape)
        for a, b in zip(conv.conv2d_backward_numpy(dy, cb), conv.conv2d_backward_numba(dy, ca)):
            assert rel_err(a, b) < 1e-12
