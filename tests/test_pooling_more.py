"""AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D and ZeroPadding2D (issue 13, item 1).

* the kernels (npcnn/kernels/avgpool.py, globalpool.py): NumPy twin and Numba version agree on random
  non-square shapes, strides and both paddings (average pool and global max bit for bit, the float64
  global average to 1e-12 / float32 1e-5), with ws=None and with one Workspace reused twice, and
  backward never writes dy;
* the formula: 'same' average pooling excludes the padded cells (Keras), checked against a float64
  loop in the test and, where the padding is symmetric, against PyTorch's count_include_pad=False;
  PyTorch's avg_pool2d, adaptive_avg_pool2d, amax and F.pad forward and backward;
* float64 gradient checks of each layer on both backends (non-square, strides > 1), and of a whole
  model that uses them;
* ties in the global max go to the first maximum; keepdims; shapes, workspace sizes and errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npcnn
from npcnn import gradcheck
from npcnn import kernels as K
from npcnn.kernels import avgpool, globalpool
from npcnn.kernels.workspace import Workspace
from npcnn.layers import (
    AveragePooling2D,
    AvgPool2D,
    Context,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    GlobalAvgPool2D,
    GlobalMaxPool2D,
    GlobalMaxPooling2D,
    LayerState,
    ZeroPadding2D,
)
from npcnn.models import Sequential

SETTINGS = dict(deadline=None, database=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
TOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(a).max(initial=0), np.abs(b).max(initial=0), 1e-30)
    return float(np.abs(a - b).max(initial=0) / scale)


@st.composite
def pool_cases(draw):
    """x (N, H, W, C), pool, strides, padding: non-square, strides that may not divide the size."""
    ph, pw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["valid", "same"]))
    h = draw(st.integers(ph if padding == "valid" else 1, 9))
    w = draw(st.integers(pw if padding == "valid" else 1, 9))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**31))
    return (n, h, w, c), (ph, pw), (sh, sw), padding, dtype, seed


def geometry(x_shape, pool, strides, padding):
    oh, ow, pads = K.conv_geometry(x_shape, pool, strides, padding)
    return pads, (oh, ow)


# ------------------------------------------------------------------------------- the kernels
@settings(**SETTINGS)
@given(pool_cases())
def test_avgpool_twins_agree_bit_for_bit(case):
    shape, pool, strides, padding, dtype, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    pads, out_hw = geometry(shape, pool, strides, padding)
    y0, c0 = avgpool.avgpool2d_forward_numpy(x, pool, strides, pads, out_hw)
    dy = rng.standard_normal(y0.shape).astype(dtype)
    dy_before = dy.copy()
    dx0 = avgpool.avgpool2d_backward_numpy(dy, c0)
    ws = Workspace()
    for w in (None, ws, ws):  # fresh arrays, then one Workspace reused twice
        y1, c1 = avgpool.avgpool2d_forward_numba(x, pool, strides, pads, out_hw, ws=w)
        assert y1.dtype == dtype and c1 == c0
        np.testing.assert_array_equal(y1, y0)
        dx1 = avgpool.avgpool2d_backward_numba(dy, c1, ws=w)
        assert dx1.dtype == dtype
        np.testing.assert_array_equal(dx1, dx0)
    np.testing.assert_array_equal(avgpool.avgpool2d_backward_numpy(dy, c1), dx0)  # caches cross backends
    np.testing.assert_array_equal(dy, dy_before)
    assert sorted(ws) == ["avgpool.dx", "avgpool.out"]


@settings(**SETTINGS)
@given(pool_cases())
def test_global_pool_twins_agree(case):
    shape, _, _, _, dtype, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal((shape[0], shape[3])).astype(dtype)
    dy_before = dy.copy()
    ya, ca = globalpool.global_avgpool2d_forward_numpy(x)
    ym, cm = globalpool.global_maxpool2d_forward_numpy(x)
    dxa = globalpool.global_avgpool2d_backward_numpy(dy, ca)
    dxm = globalpool.global_maxpool2d_backward_numpy(dy, cm)
    ws = Workspace()
    for w in (None, ws, ws):
        y1, c1 = globalpool.global_avgpool2d_forward_numba(x, ws=w)
        assert y1.dtype == dtype and rel_err(y1, ya) <= TOL[dtype]  # float64 sums in another order
        np.testing.assert_array_equal(globalpool.global_avgpool2d_backward_numba(dy, c1, ws=w), dxa)
        y2, c2 = globalpool.global_maxpool2d_forward_numba(x, ws=w)
        np.testing.assert_array_equal(y2, ym)
        np.testing.assert_array_equal(c2.argmax, cm.argmax)
        np.testing.assert_array_equal(globalpool.global_maxpool2d_backward_numba(dy, c2, ws=w), dxm)
    np.testing.assert_array_equal(dy, dy_before)


@pytest.mark.parametrize("mode", ["parallel", "serial"])
def test_prange_and_serial_drivers_agree(monkeypatch, mode):
    from npcnn.kernels import workspace

    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 9, 7, 3)).astype(np.float32)
    pads, out_hw = geometry(x.shape, (3, 2), (2, 2), "same")
    ref_y, ref_c = avgpool.avgpool2d_forward_numpy(x, (3, 2), (2, 2), pads, out_hw)
    dy = rng.standard_normal(ref_y.shape).astype(np.float32)
    monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", 0 if mode == "parallel" else 1 << 62)
    ws = Workspace(parallel=mode == "parallel")
    y, c = avgpool.avgpool2d_forward_numba(x, (3, 2), (2, 2), pads, out_hw, ws=ws)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(avgpool.avgpool2d_backward_numba(dy, c, ws=ws),
                                  avgpool.avgpool2d_backward_numpy(dy, ref_c))
    g, gc = globalpool.global_maxpool2d_forward_numba(x, ws=ws)
    np.testing.assert_array_equal(g, x.max(axis=(1, 2)))
    np.testing.assert_array_equal(globalpool.global_avgpool2d_forward_numba(x, ws=ws)[0],
                                  globalpool.global_avgpool2d_forward_numpy(x)[0])


def avgpool_by_loops(x, pool, strides, padding):
    """The definition in float64: the mean of each window's cells that lie inside the image."""
    n, h, w, c = x.shape
    (oh, ow, (pt, _, pl, _)) = K.conv_geometry(x.shape, pool, strides, padding)
    y = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * strides[0] - pt, j * strides[1] - pl
            cells = [(a, b) for a in range(h0, h0 + pool[0]) for b in range(w0, w0 + pool[1])
                     if 0 <= a < h and 0 <= b < w]
            y[:, i, j] = np.mean([x[:, a, b] for a, b in cells], axis=0)
    return y


@pytest.mark.parametrize("shape, pool, strides", [((7, 6), (2, 2), (2, 2)), ((7, 6), (3, 2), (2, 3)),
                                                  ((5, 8), (3, 3), (1, 1)), ((1, 4), (2, 3), (2, 2))])
def test_same_padding_excludes_the_padded_cells(backend, shape, pool, strides):
    x = np.random.default_rng(0).standard_normal((2,) + shape + (3,))
    y = AveragePooling2D(pool, strides, padding="same").forward(x)
    np.testing.assert_allclose(y, avgpool_by_loops(x, pool, strides, "same"), rtol=1e-12, atol=1e-12)
    ones = AveragePooling2D(pool, strides, padding="same").forward(np.ones_like(x))
    np.testing.assert_allclose(ones, 1.0, rtol=1e-15)  # a zero-padded count would pull the border below 1


# ------------------------------------------------------------------------------- against PyTorch
@pytest.mark.parametrize("shape, pool, strides, padding", [
    ((7, 6), (2, 2), None, "valid"), ((9, 7), (3, 2), (2, 1), "valid"),
    ((7, 5), (3, 3), (1, 1), "same"),   # total padding 2 on each axis: symmetric, as torch pads
    ((9, 9), (3, 3), (2, 2), "same"),   # 9 = (5 - 1) * 2 + 3 - 2: one cell on each side
])
def test_avgpool_agrees_with_pytorch(backend, torch, shape, pool, strides, padding):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2,) + shape + (3,))
    layer = AveragePooling2D(pool, strides, padding=padding)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    _, _, (pt, pb, pl, pr) = layer.geometry(x.shape)
    assert (pt, pl) == (pb, pr)  # the cases above are the ones torch can express
    t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(t, pool, stride=strides or pool, padding=(pt, pl), count_include_pad=False)
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)


def test_global_pools_agree_with_pytorch(backend, torch):
    rng = np.random.default_rng(2)
    x = rng.permutation(np.arange(2 * 5 * 4 * 3, dtype=np.float64)).reshape(2, 5, 4, 3)  # distinct: one max
    dy = rng.standard_normal((2, 3))
    for layer, op in ((GlobalAveragePooling2D(), lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 1)[:, :, 0, 0]),
                      (GlobalMaxPooling2D(), lambda t: torch.amax(t, dim=(2, 3)))):
        y = layer.forward(x, training=True)
        dx = layer.backward(dy)
        t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
        ty = op(t)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(dx, t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-12)


def test_zero_padding_agrees_with_pytorch(backend, torch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5, 3))
    layer = ZeroPadding2D(((1, 2), (3, 0)))
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    ty = torch.nn.functional.pad(t, (3, 0, 1, 2))  # (left, right, top, bottom)
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(y, ty.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(dx, t.grad.numpy().transpose(0, 2, 3, 1))


# ------------------------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("make, shape", [
    (lambda: AveragePooling2D((2, 2)), (7, 6, 2)),
    (lambda: AveragePooling2D((3, 2), strides=(2, 1)), (7, 6, 2)),
    (lambda: AveragePooling2D((3, 2), strides=(2, 3), padding="same"), (7, 6, 2)),
    (lambda: AveragePooling2D((2, 3), strides=(1, 1), padding="same"), (5, 4, 3)),
    (lambda: GlobalAveragePooling2D(), (5, 4, 3)),
    (lambda: GlobalAveragePooling2D(keepdims=True), (5, 4, 3)),
    (lambda: GlobalMaxPooling2D(), (5, 4, 3)),
    (lambda: GlobalMaxPooling2D(keepdims=True), (3, 7, 2)),
    (lambda: ZeroPadding2D(), (4, 3, 2)),
    (lambda: ZeroPadding2D(((2, 0), (1, 3))), (4, 3, 2)),
])
def test_gradcheck(backend, make, shape):
    results = gradcheck.check_layer(make(), shape, batch_size=2)
    assert [r.tensor for r in results] == ["input"]
    assert all(r.passed for r in results), results


def test_whole_model_gradcheck_and_training(backend):
    rng = np.random.default_rng(4)
    x = gradcheck.spread_input((6, 9, 8, 2), rng)
    y = np.arange(6) % 3
    npcnn.set_random_seed(3)
    model = Sequential([ZeroPadding2D(1, input_shape=(9, 8, 2)), Conv2D(3, 3, activation="relu"),
                        AveragePooling2D(2, padding="same"), Conv2D(4, (2, 3), activation="tanh"),
                        GlobalMaxPooling2D(keepdims=True), GlobalAveragePooling2D(), Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    assert all(r.passed for r in gradcheck.check_model(model, x, y)), "whole-model gradient check"
    history = model.fit(x.astype(np.float32), y, epochs=15, batch_size=6, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.predict(x.astype(np.float32)).shape == (6, 3)


# ------------------------------------------------------------------------------- behaviour
def test_global_max_ties_go_to_the_first_maximum(backend):
    x = np.zeros((1, 3, 4, 2))
    x[0, 2, 1, 1] = x[0, 1, 3, 1] = 5.0  # channel 1: two maxima, (1, 3) comes first row-major
    layer = GlobalMaxPooling2D()
    layer.forward(x, training=True)
    dx = layer.backward(np.array([[1.0, 2.0]]))
    expected = np.zeros_like(x)
    expected[0, 0, 0, 0] = 1.0   # all zeros: the first cell
    expected[0, 1, 3, 1] = 2.0
    np.testing.assert_array_equal(dx, expected)


def test_shapes_and_aliases():
    assert AvgPool2D is AveragePooling2D and GlobalAvgPool2D is GlobalAveragePooling2D
    assert GlobalMaxPool2D is GlobalMaxPooling2D
    model = Sequential([ZeroPadding2D((1, 2), input_shape=(7, 6, 3)), AveragePooling2D(3, strides=2),
                        GlobalAveragePooling2D(keepdims=True), GlobalMaxPooling2D()])
    shapes = [layer.output_shape for layer in model.layers]
    assert shapes == [(9, 10, 3), (4, 4, 3), (1, 1, 3), (3,)]
    assert AveragePooling2D(2, padding="same").compute_output_shape((7, 5, 1)) == (4, 3, 1)
    assert AveragePooling2D(2).strides == (2, 2)
    assert ZeroPadding2D(2).padding == ((2, 2), (2, 2))
    assert ZeroPadding2D([1, 3]).padding == ((1, 1), (3, 3))
    assert ZeroPadding2D(((0, 1), (2, 3))).padding == ((0, 1), (2, 3))
    summary = []
    model.summary(print_fn=summary.append)
    assert any("zero_padding2d" in line and "(None, 9, 10, 3)" in line for line in summary)


@pytest.mark.parametrize("make, shape", [
    (lambda: AveragePooling2D((3, 2), strides=(2, 1), padding="same"), (7, 6, 2)),
    (lambda: GlobalAveragePooling2D(), (5, 4, 3)),
    (lambda: GlobalMaxPooling2D(keepdims=True), (5, 4, 3)),
    (lambda: ZeroPadding2D(((2, 0), (1, 3))), (4, 3, 2)),
])
def test_workspace_bytes_are_what_the_kernels_keep(make, shape):
    layer = make()
    layer.build(shape)
    x = np.random.default_rng(0).standard_normal((3,) + shape).astype(np.float32)
    with npcnn.use_backend("numba"):
        for need_dx in (True, False):
            state = LayerState(ws=Workspace(), need_dx=need_dx)
            ctx = Context(True, batch_size=3)
            y = layer.forward_op(x, state, ctx)
            layer.backward_op(np.ones_like(y), state, ctx)
            assert {k: v.nbytes for k, v in state.ws.items()} == layer.workspace_bytes(shape, 3, need_dx)


def test_inference_keeps_no_cache_and_backward_says_so():
    layer = AveragePooling2D()
    layer.forward(np.ones((1, 4, 4, 1)))
    with pytest.raises(RuntimeError, match="needs a preceding forward"):
        layer.backward(np.ones((1, 2, 2, 1)))


@pytest.mark.parametrize("make, error, match", [
    (lambda: AveragePooling2D(0), ValueError, "pool_size"),
    (lambda: AveragePooling2D(2, padding="full"), ValueError, "padding"),
    (lambda: AveragePooling2D(3).build((2, 5, 1)), ValueError, "does not fit"),
    (lambda: AveragePooling2D(2).build((5, 5)), ValueError, r"\(H, W, C\)"),
    (lambda: GlobalAveragePooling2D().build((5, 3)), ValueError, r"\(H, W, C\)"),
    (lambda: GlobalMaxPooling2D(keepdims="yes"), TypeError, "keepdims"),
    (lambda: ZeroPadding2D(-1), ValueError, ">= 0"),
    (lambda: ZeroPadding2D((1, 2, 3)), ValueError, "padding must be"),
    (lambda: ZeroPadding2D(((1, 2), 3)), ValueError, "padding must be"),
    (lambda: ZeroPadding2D(1.5), ValueError, "padding must be"),
    (lambda: ZeroPadding2D((1, 2.0)), TypeError, "ints"),
])
def test_argument_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()
