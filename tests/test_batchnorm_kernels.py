"""The BatchNormalization kernels (npcnn/kernels/batchnorm.py).

* the Numba versions agree with the NumPy twins on random NHWC and (N, units) shapes, float32
  and float64, without and with a reused workspace: the float64 sums to 1e-12 relative (NumPy
  adds in another order), the element-wise outputs to float32 / float64 rounding;
* central-difference gradient checks (float64) of the composed training function for x, gamma
  and beta, on both backends; the step-by-step reference graph agrees with the compact kernels;
* PyTorch (F.batch_norm, training=True, eps=1e-3) as an independent implementation: forward and
  autograd gradients, float64 to 1e-10 and float32 to 1e-5, (N, C) and NCHW; biased variance;
* synchronized BN: two shards' summed statistics give the full-batch result; per-shard
  statistics would not;
* the serial and prange drivers give bit-identical results, whatever the thread count;
* float32 in, float32 out (sums float64); backward never writes its inputs.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npcnn.gradcheck import numerical_gradient, relative_error
from npcnn.kernels import batchnorm as B
from npcnn.kernels import workspace
from npcnn.kernels.workspace import Workspace

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
EPS = 1e-3
SUM_TOL = 1e-12                                 # float64 sums, NumPy order vs chunked order
OUT_TOL = {np.float32: 2e-6, np.float64: 1e-12}  # element-wise outputs, relative to the largest
BACKENDS = ("numpy", "numba")


def kernels(backend):
    """The five kernels of one backend, by short name."""
    names = ("sum", "sqdev_sum", "forward", "backward_sums", "backward")
    return {n: getattr(B, f"batchnorm_{n}_{backend}") for n in names}


def train_step(k, x, gamma, beta, dy, ws=None):
    """The layer's training step on one shard (= the whole batch): statistics, forward, backward.

    Returns copies (workspace buffers are overwritten by the next call): s, q, mean, var, y,
    sum_dy, sum_dy_xhat, dx.
    """
    M = x.size // x.shape[-1]
    s = k["sum"](x, ws=ws).copy()
    mean = s / M
    q = k["sqdev_sum"](x, mean, ws=ws).copy()
    var = q / M
    y, cache = k["forward"](x, mean, var, gamma, beta, EPS, ws=ws)
    y = y.copy()
    a, b = (v.copy() for v in k["backward_sums"](dy, cache, ws=ws))
    dx = k["backward"](dy, cache, a, b, M, ws=ws).copy()
    return dict(s=s, q=q, mean=mean, var=var, y=y, sum_dy=a, sum_dy_xhat=b, dx=dx)


def data(shape, dtype, seed, offset=3.0):
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 2, C) + offset).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dy


shapes = st.one_of(
    st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6), st.integers(1, 9)),  # NHWC
    st.tuples(st.integers(2, 40), st.integers(1, 20)),                                    # (N, units)
)
dtypes = st.sampled_from([np.float32, np.float64])


@pytest.fixture(params=["parallel", "serial"])
def driver(request, monkeypatch):
    """Every kernel on its prange driver (even for small arrays), then on its serial one."""
    monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", 0 if request.param == "parallel" else 1 << 62)
    return request.param


# ----------------------------------------------------------------------------- twins agree
@settings(max_examples=40, **SETTINGS)
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**16))
def test_twins_agree(shape, dtype, seed):
    x, gamma, beta, dy = data(shape, dtype, seed)
    want = train_step(kernels("numpy"), x, gamma, beta, dy)
    ws = Workspace()
    for use_ws in (None, ws, ws):  # the second use of ws gets its buffers back
        got = train_step(kernels("numba"), x, gamma, beta, dy, ws=use_ws)
        for key in ("s", "q", "sum_dy", "sum_dy_xhat"):
            assert got[key].dtype == np.float64 and got[key].shape == (shape[-1],)
            assert relative_error(want[key], got[key]) < SUM_TOL, key
        for key in ("y", "dx"):
            assert got[key].dtype == dtype and got[key].shape == shape
            assert relative_error(want[key], got[key]) < OUT_TOL[dtype], key
    assert set(ws) >= {"batchnorm_sum.parts", "batchnorm_forward.y", "batchnorm_forward.xhat",
                       "batchnorm_backward_sums.parts", "batchnorm_backward.dx"}


def test_workspace_buffers_are_reused():
    x, gamma, beta, dy = data((4, 5, 5, 8), np.float32, 0)
    ws = Workspace()
    k = kernels("numba")
    y1, _ = k["forward"](x, np.zeros(8), np.ones(8), gamma, beta, EPS, ws=ws)
    y2, _ = k["forward"](x + 1, np.zeros(8), np.ones(8), gamma, beta, EPS, ws=ws)
    assert y1 is y2 and y1 is ws["batchnorm_forward.y"]
    y3, _ = k["forward"](x, np.zeros(8), np.ones(8), gamma, beta, EPS)  # no ws: a fresh array
    assert y3 is not y1
    # the (C,) sums leave the shard (reduced across shards; dbeta, dgamma): fresh arrays even with a ws
    s1, s2 = k["sum"](x, ws=ws), k["sum"](x, ws=ws)
    assert not np.shares_memory(s1, s2) and not any(np.shares_memory(s1, b) for b in ws.values())
    _, cache = k["forward"](x, s1 / 100, np.ones(8), gamma, beta, EPS, ws=ws)
    a1, _ = k["backward_sums"](dy, cache, ws=ws)
    a2, b2 = k["backward_sums"](dy, cache, ws=ws)
    assert not np.shares_memory(a1, a2) and not any(np.shares_memory(g, b) for g in (a2, b2) for b in ws.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_input(backend):
    k = kernels(backend)
    x, gamma, beta, dy = data((6, 5, 4, 3), np.float64, 1)
    xt = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # same values, strided
    assert not xt.flags.c_contiguous
    want, got = train_step(k, x, gamma, beta, dy), train_step(k, xt, gamma, beta, dy[:, ::1])
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7, 4)])
def test_gradcheck_composed_training_function(backend, shape):
    """VJP check: f = sum(y * dy) with y from sum -> sqdev_sum -> forward; the analytic gradients
    are backward's dx, sum_dy_xhat (dgamma) and sum_dy (dbeta)."""
    k = kernels(backend)
    x, gamma, beta, dy = data(shape, np.float64, 2, offset=0.5)
    M = x.size // shape[-1]

    def f():
        mean = k["sum"](x) / M
        var = k["sqdev_sum"](x, mean) / M
        return float(np.sum(k["forward"](x, mean, var, gamma, beta, EPS)[0] * dy))

    got = train_step(k, x, gamma, beta, dy)
    for name, v, analytic in (("x", x, got["dx"]), ("gamma", gamma, got["sum_dy_xhat"]), ("beta", beta, got["sum_dy"])):
        err = relative_error(analytic, numerical_gradient(f, v))
        assert err < 1e-7, (name, err)


@settings(max_examples=20, **SETTINGS)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_reference_graph_agrees_with_compact_kernels(shape, seed):
    x, gamma, beta, dy = data(shape, np.float64, seed)
    y_ref, graph = B.batchnorm_train_forward_reference(x, gamma, beta, EPS)
    dx_ref, dgamma_ref, dbeta_ref = B.batchnorm_train_backward_reference(dy, graph)
    for backend in BACKENDS:
        got = train_step(kernels(backend), x, gamma, beta, dy)
        assert relative_error(y_ref, got["y"]) < 1e-13
        assert relative_error(dx_ref, got["dx"]) < 1e-10
        assert relative_error(dgamma_ref, got["sum_dy_xhat"]) < 1e-12
        assert relative_error(dbeta_ref, got["sum_dy"]) < 1e-12


def test_reference_graph_gradcheck():
    x, gamma, beta, dy = data((3, 2, 2, 4), np.float64, 3)
    y, graph = B.batchnorm_train_forward_reference(x, gamma, beta, EPS)
    dx, dgamma, dbeta = B.batchnorm_train_backward_reference(dy, graph)

    def f():
        return float(np.sum(B.batchnorm_train_forward_reference(x, gamma, beta, EPS)[0] * dy))

    for v, analytic in ((x, dx), (gamma, dgamma), (beta, dbeta)):
        assert relative_error(analytic, numerical_gradient(f, v)) < 1e-7


# ----------------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("shape", [(16, 10), (4, 5, 6, 7)])
def test_matches_torch(backend, dtype, tol, shape):
    torch = pytest.importorskip("torch")
    x, gamma, beta, dy = data(shape, dtype, 4)
    got = train_step(kernels(backend), x, gamma, beta, dy)

    def nchw(a):  # NHWC -> NCHW (torch's layout); (N, C) stays
        return torch.tensor(a.transpose(0, 3, 1, 2) if a.ndim == 4 else a)

    def nhwc(t):
        a = t.detach().numpy()
        return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a

    xt = nchw(x).requires_grad_()
    gt, bt = torch.tensor(gamma).requires_grad_(), torch.tensor(beta).requires_grad_()
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=EPS)
    yt.backward(nchw(dy))
    assert got["y"].dtype == dtype and got["dx"].dtype == dtype
    assert relative_error(nhwc(yt), got["y"]) < tol
    assert relative_error(nhwc(xt.grad), got["dx"]) < tol
    assert relative_error(gt.grad.numpy(), got["sum_dy_xhat"]) < tol
    assert relative_error(bt.grad.numpy(), got["sum_dy"]) < tol
    dims = [0, 2, 3] if len(shape) == 4 else [0]
    torch_var = torch.var(torch.tensor(x.astype(np.float64)).movedim(-1, 1), dim=dims, unbiased=False)
    assert relative_error(torch_var.numpy(), got["var"]) < 1e-12


def test_moving_variance_conventions_differ_from_torch():
    """Keras: moving = 0.99 * moving + 0.01 * batch, biased variance. torch.nn.BatchNorm1d(momentum=0.01)
    uses the same weights but the unbiased variance: the layer must not copy torch's running_var."""
    torch = pytest.importorskip("torch")
    x, *_ = data((8, 3), np.float64, 5)
    got = train_step(kernels("numba"), x, np.ones(3), np.zeros(3), x)
    keras_moving_var = 0.99 * 1.0 + 0.01 * got["var"]
    bn = torch.nn.BatchNorm1d(3, eps=EPS, momentum=0.01).double()
    bn.train()(torch.tensor(x))
    M = x.shape[0]
    np.testing.assert_allclose(bn.running_var.numpy(), 0.99 + 0.01 * got["var"] * M / (M - 1), rtol=1e-12)
    assert not np.allclose(bn.running_var.numpy(), keras_moving_var, rtol=1e-6)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.01 * got["mean"], rtol=1e-12)


# ----------------------------------------------------------------------------- shards
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,cut", [((5, 3, 4, 6), 2), ((9, 7), 4), ((3, 2, 2, 5), 1)])
def test_shards_with_summed_statistics_equal_the_full_batch(backend, shape, cut):
    k = kernels(backend)
    x, gamma, beta, dy = data(shape, np.float64, 6)
    full = train_step(k, x, gamma, beta, dy)
    shards = [slice(0, cut), slice(cut, shape[0])]
    wss = [Workspace(), Workspace()]  # one per worker, as the data-parallel threads have
    M = x.size // shape[-1]
    mean = sum(k["sum"](x[sl], ws=w).copy() for sl, w in zip(shards, wss)) / M
    var = sum(k["sqdev_sum"](x[sl], mean, ws=w).copy() for sl, w in zip(shards, wss)) / M
    outs = [k["forward"](x[sl], mean, var, gamma, beta, EPS, ws=w) for sl, w in zip(shards, wss)]
    sums = [tuple(v.copy() for v in k["backward_sums"](dy[sl], c, ws=w)) for sl, (_, c), w in zip(shards, outs, wss)]
    sum_dy, sum_dy_xhat = sums[0][0] + sums[1][0], sums[0][1] + sums[1][1]
    dx = [k["backward"](dy[sl], c, sum_dy, sum_dy_xhat, M, ws=w) for sl, (_, c), w in zip(shards, outs, wss)]
    assert relative_error(full["y"], np.concatenate([y for y, _ in outs])) < 1e-14
    assert relative_error(full["dx"], np.concatenate(dx)) < 1e-13
    assert relative_error(full["sum_dy"], sum_dy) < 1e-14
    assert relative_error(full["sum_dy_xhat"], sum_dy_xhat) < 1e-14


def test_per_shard_statistics_are_a_different_function():
    """GUIDE pitfall 17: normalising each shard by its own statistics is not the full batch's BN."""
    k = kernels("numpy")
    x, gamma, beta, dy = data((6, 4), np.float64, 7)
    full = train_step(k, x, gamma, beta, dy)
    halves = [train_step(k, x[sl], gamma, beta, dy[sl]) for sl in (slice(0, 3), slice(3, 6))]
    assert relative_error(full["y"], np.concatenate([h["y"] for h in halves])) > 1e-3


# ----------------------------------------------------------------------------- drivers
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 17, 13, 6), (1000, 7), (3, 1, 1, 5), (4, 64, 64, 3)])
def test_serial_and_prange_drivers_are_bit_identical(dtype, shape, monkeypatch):
    x, gamma, beta, dy = data(shape, dtype, 8)
    results = []
    for threshold, threads in ((1 << 62, None), (0, None), (0, 1)):  # serial; prange; prange, 1 thread
        monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", threshold)
        old = numba.get_num_threads()
        if threads:
            numba.set_num_threads(threads)
        try:
            results.append(train_step(kernels("numba"), x, gamma, beta, dy, ws=Workspace()))
        finally:
            numba.set_num_threads(old)
    for r in results[1:]:
        for key in results[0]:
            np.testing.assert_array_equal(results[0][key], r[key], err_msg=key)


def test_sum_drivers_directly():
    """The inner drivers: the same partials per chunk and the same total, serial or prange."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5000, 11)).astype(np.float32)
    mean = rng.standard_normal(11)
    T = B._n_chunks(5000)
    assert T == 5000 // B._CHUNK_ROWS
    for centred in (False, True):
        a, b = np.empty((T, 1, 11)), np.empty((T, 1, 11))
        B._sum_ser(x, mean, centred, a)
        B._sum_par(x, mean, centred, b)
        np.testing.assert_array_equal(a, b)
    xhat = rng.standard_normal((5000, 11)).astype(np.float32)
    y = np.maximum(rng.standard_normal((5000, 11)), 0).astype(np.float32)  # a fused ReLU's output
    for relu in (True, False):  # (y is not read without relu)
        a, b = np.empty((T, 2, 11)), np.empty((T, 2, 11))
        B._bwd_sums_ser(x, xhat, y, relu, a)
        B._bwd_sums_par(x, xhat, y, relu, b)
        np.testing.assert_array_equal(a, b)
    out = np.empty((2, 11))
    B._add_chunks(a, out)
    np.testing.assert_allclose(out, a.sum(axis=0), rtol=1e-12)


# ----------------------------------------------------------------------------- dtypes, inputs
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_in_float32_out(backend, driver):
    k = kernels(backend)
    x, gamma, beta, dy = data((3, 4, 4, 5), np.float32, 10)
    got = train_step(k, x, gamma, beta, dy)
    assert got["y"].dtype == np.float32 and got["dx"].dtype == np.float32
    assert got["s"].dtype == np.float64 and got["sum_dy"].dtype == np.float64
    # inference: moving statistics in float32, as the layer stores them
    y, cache = k["forward"](x, np.zeros(5, np.float32), np.ones(5, np.float32), gamma, beta, EPS)
    assert y.dtype == np.float32 and cache.xhat.dtype == np.float32 and cache.inv_std.dtype == np.float64
    np.testing.assert_allclose(y, gamma * x / np.sqrt(1 + EPS) + beta, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_never_write_their_inputs(backend, driver):
    k = kernels(backend)
    x, gamma, beta, dy = data((2, 3, 3, 4), np.float64, 11)
    keep = [a.copy() for a in (x, gamma, beta, dy)]
    M = 18
    mean = k["sum"](x) / M
    var = k["sqdev_sum"](x, mean) / M
    mv = (mean.copy(), var.copy())
    y, cache = k["forward"](x, mean, var, gamma, beta, EPS)
    saved = [np.array(a, copy=True) for a in cache]
    a, b = (v.copy() for v in k["backward_sums"](dy, cache))
    k["backward"](dy, cache, a, b, M)
    for before, after in zip(keep + list(mv) + saved, (x, gamma, beta, dy, mean, var) + tuple(cache)):
        np.testing.assert_array_equal(before, after)


def test_large_mean_is_handled_by_the_two_pass_variance():
    """|mean| >> std in float32: E[x^2] - mean^2 would lose everything; the two-pass variance does not."""
    rng = np.random.default_rng(12)
    x = (1000 + 0.01 * rng.standard_normal((4096, 3))).astype(np.float32)
    x64 = x.astype(np.float64)
    for backend in BACKENDS:
        k = kernels(backend)
        mean = k["sum"](x) / 4096
        var = k["sqdev_sum"](x, mean) / 4096
        np.testing.assert_allclose(var, x64.var(axis=0), rtol=1e-9)


def test_registry_dict():
    assert set(B.KERNELS) == {"batchnorm_sum", "batchnorm_sqdev_sum", "batchnorm_forward",
                              "batchnorm_backward_sums", "batchnorm_backward"}
    for name, (np_fn, nb_fn) in B.KERNELS.items():
        assert np_fn.__name__ == f"{name}_numpy" and nb_fn.__name__ == f"{name}_numba"


def test_caches_cross_backends():
    """A cache from one backend's forward is read by the other's backward (the layer may switch)."""
    x, gamma, beta, dy = data((3, 4, 5, 6), np.float64, 13)
    M = 60
    mean, var = x.reshape(-1, 6).mean(axis=0), x.reshape(-1, 6).var(axis=0)
    ka, kb = kernels("numpy"), kernels("numba")
    _, ca = ka["forward"](x, mean, var, gamma, beta, EPS)
    _, cb = kb["forward"](x, mean, var, gamma, beta, EPS)
    assert type(ca) is type(cb) is B.BatchNormCache
    for c_from, k_to in ((ca, kb), (cb, ka)):
        sums = k_to["backward_sums"](dy, c_from)
        want = train_step(ka, x, gamma, beta, dy)
        assert relative_error(want["sum_dy_xhat"], sums[1]) < 1e-12
        assert relative_error(want["dx"], k_to["backward"](dy, c_from, *sums, M)) < 1e-12
