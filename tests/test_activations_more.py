"""ELU, GELU, LeakyReLU and the softmax over any axis (issue 13, item 2).

* the kernels (npcnn/kernels/activations.py): NumPy twins and Numba versions agree (float32 1e-5,
  float64 1e-12, at the scale of the values), with ws=None and with one Workspace reused twice; the
  prange and serial drivers too; backward never writes dy nor its cache;
* PyTorch's F.elu, F.gelu(approximate='none'), F.leaky_relu and F.softmax(dim) give the same values
  and gradients in float64 (the gradient at exactly 0 included: alpha, negative_slope);
* float64 gradient checks of each layer on both backends, as its own layer and as a Dense/Conv2D
  activation, and of a whole model;
* the names Keras accepts: 'elu', 'gelu', 'leaky_relu' (slope 0.2, Keras's function default; the
  LeakyReLU layer's is 0.3); Softmax(axis) on any non-batch axis, refused on the batch axis.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npcnn
from npcnn import gradcheck
from npcnn.kernels import activations as A
from npcnn.kernels.workspace import Workspace
from npcnn.layers import (
    ELU,
    GELU,
    Activation,
    Context,
    Conv2D,
    Dense,
    Flatten,
    LayerState,
    LeakyReLU,
    Softmax,
)
from npcnn.layers.activations import get_activation_layer
from npcnn.models import Sequential

SETTINGS = dict(deadline=None, database=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
TOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def rel_err(a, b, scale=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if scale is None:
        scale = max(np.abs(a).max(initial=0), np.abs(b).max(initial=0))
    return float(np.abs(a - b).max(initial=0) / max(scale, 1e-30))


ELEMENTWISE = {  # name -> (extra forward arguments)
    "elu": (0.7,),
    "gelu": (),
    "leaky_relu": (0.3,),
}


@st.composite
def arrays(draw, min_dims=1):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=min_dims, max_size=4)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**31))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy


def twins(name):
    return (getattr(A, f"{name}_forward_numpy"), getattr(A, f"{name}_backward_numpy"),
            getattr(A, f"{name}_forward_numba"), getattr(A, f"{name}_backward_numba"))


@settings(**SETTINGS)
@given(arrays(), st.sampled_from(sorted(ELEMENTWISE)))
def test_elementwise_twins_agree(xd, name):
    x, dy = xd
    args = ELEMENTWISE[name]
    fwd0, bwd0, fwd1, bwd1 = twins(name)
    dy_before = dy.copy()
    y0, c0 = fwd0(x, *args)
    dx0 = bwd0(dy, c0)
    assert y0.dtype == x.dtype and dx0.dtype == x.dtype
    tol = TOL[x.dtype.type]
    ws = Workspace()
    for w in (None, ws, ws):
        y1, c1 = fwd1(x, *args, ws=w)
        assert y1.dtype == x.dtype and y1.shape == x.shape
        assert rel_err(y1, y0, scale=max(1.0, np.abs(y0).max())) <= tol
        dx1 = bwd1(dy, c1, ws=w)
        assert dx1.dtype == x.dtype
        assert rel_err(dx1, dx0, scale=max(1.0, np.abs(dy).max())) <= tol  # |d/dx| <= about 1.13
        assert rel_err(bwd0(dy, c1), dx0, scale=max(1.0, np.abs(dy).max())) <= tol  # caches cross backends
    np.testing.assert_array_equal(dy, dy_before)
    assert sorted(ws) == [f"{name}.dx", f"{name}.out"]


@settings(**SETTINGS)
@given(arrays(min_dims=2), st.data())
def test_softmax_axis_twins_agree(xd, data):
    z, dp = xd
    axis = data.draw(st.integers(-z.ndim, z.ndim - 1))
    dp_before = dp.copy()
    p0, c0 = A.softmax_axis_forward_numpy(z, axis)
    np.testing.assert_allclose(p0.sum(axis=axis), 1.0, rtol=1e-5 if z.dtype == np.float32 else 1e-12)
    dz0 = A.softmax_axis_backward_numpy(dp, c0)
    tol = TOL[z.dtype.type]
    ws = Workspace()
    for w in (None, ws, ws):
        p1, c1 = A.softmax_axis_forward_numba(z, axis, ws=w)
        assert c1.axis == axis % z.ndim and p1.dtype == z.dtype
        assert rel_err(p1, p0, scale=1.0) <= tol
        dz1 = A.softmax_axis_backward_numba(dp, c1, ws=w)
        # dz = p (dp - <dp, p>): compared at the scale of what it sums, |dp|
        assert rel_err(dz1, dz0, scale=np.abs(dp).max()) <= 4 * tol
    np.testing.assert_array_equal(dp, dp_before)
    assert sorted(ws) == ["softmax_axis.dz", "softmax_axis.out"]


def test_softmax_axis_matches_the_last_axis_kernel():
    z = np.random.default_rng(0).standard_normal((3, 4, 5))
    for be in ("numpy", "numba"):
        with npcnn.use_backend(be):
            last, _ = npcnn.kernels.softmax_forward(z)
            for axis in (-1, 2):
                p, _ = npcnn.kernels.softmax_axis_forward(z, axis)
                np.testing.assert_allclose(p, last, rtol=1e-14)
    with pytest.raises(ValueError, match="softmax axis"):
        A.softmax_axis_forward_numpy(z, 3)


@pytest.mark.parametrize("mode", ["parallel", "serial"])
def test_prange_and_serial_drivers_agree(monkeypatch, mode):
    from npcnn.kernels import workspace

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6, 5, 3)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    ref = {}
    for name, args in ELEMENTWISE.items():
        y, c = getattr(A, f"{name}_forward_numba")(x, *args)
        ref[name] = (y.copy(), getattr(A, f"{name}_backward_numba")(dy, c).copy())
    ref_p = A.softmax_axis_forward_numba(x, 1)[0].copy()
    monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", 0 if mode == "parallel" else 1 << 62)
    ws = Workspace(parallel=mode == "parallel")
    for name, args in ELEMENTWISE.items():
        y, c = getattr(A, f"{name}_forward_numba")(x, *args, ws=ws)
        np.testing.assert_array_equal(y, ref[name][0])
        np.testing.assert_array_equal(getattr(A, f"{name}_backward_numba")(dy, c, ws=ws), ref[name][1])
    np.testing.assert_array_equal(A.softmax_axis_forward_numba(x, 1, ws=ws)[0], ref_p)


# ------------------------------------------------------------------------------- against PyTorch
def torch_ops(torch):
    F = torch.nn.functional
    return [
        (ELU(), lambda t: F.elu(t, alpha=1.0)),
        (ELU(alpha=0.5), lambda t: F.elu(t, alpha=0.5)),
        (GELU(), lambda t: F.gelu(t, approximate="none")),
        (LeakyReLU(), lambda t: F.leaky_relu(t, 0.3)),
        (LeakyReLU(negative_slope=0.05), lambda t: F.leaky_relu(t, 0.05)),
        (get_activation_layer("leaky_relu"), lambda t: F.leaky_relu(t, 0.2)),
        (Softmax(), lambda t: F.softmax(t, dim=-1)),
        (Softmax(axis=1), lambda t: F.softmax(t, dim=1)),
        (Softmax(axis=2), lambda t: F.softmax(t, dim=2)),
        (Softmax(axis=-2), lambda t: F.softmax(t, dim=-2)),
    ]


def test_agree_with_pytorch(backend, torch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 5, 6)) * 3
    x.flat[:4] = [0.0, -0.0, 1e-300, -40.0]  # the kinks at 0 and a saturated tail
    dy = rng.standard_normal(x.shape)
    for layer, op in torch_ops(torch):
        y = layer.forward(x, training=True)
        dx = layer.backward(dy)
        t = torch.tensor(x, requires_grad=True)
        ty = op(t)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-15, err_msg=repr(layer))
        np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-11, atol=1e-14, err_msg=repr(layer))


def test_gradient_at_zero_follows_pytorch(backend):
    x = np.zeros((1, 3))
    dy = np.ones((1, 3))
    for layer, expected in ((ELU(alpha=0.7), 0.7), (LeakyReLU(0.3), 0.3), (GELU(), 0.5)):
        layer.forward(x, training=True)
        np.testing.assert_allclose(layer.backward(dy), expected, rtol=1e-15)


def test_float32_in_float32_out(backend):
    x = np.random.default_rng(3).standard_normal((2, 5)).astype(np.float32)
    for layer in (ELU(), GELU(), LeakyReLU(), Softmax(axis=1)):
        y = layer.forward(x, training=True)
        assert y.dtype == np.float32 and layer.backward(np.ones_like(y)).dtype == np.float32


# ------------------------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("make, shape", [
    (lambda: ELU(), (4, 5, 3)),
    (lambda: ELU(alpha=0.3), (4, 5, 3)),
    (lambda: GELU(), (4, 5, 3)),
    (lambda: LeakyReLU(), (4, 5, 3)),
    (lambda: LeakyReLU(negative_slope=0.0), (7,)),
    (lambda: Softmax(axis=1), (4, 5, 3)),
    (lambda: Softmax(axis=2), (4, 5, 3)),
    (lambda: Softmax(axis=-2), (4, 5, 3)),
    (lambda: Softmax(), (4, 5, 3)),
    (lambda: Dense(4, activation="elu"), (5,)),
    (lambda: Dense(4, activation="gelu"), (5,)),
    (lambda: Dense(4, activation="leaky_relu"), (5,)),
    (lambda: Conv2D(3, (3, 2), strides=(2, 1), padding="same", activation="gelu"), (7, 6, 2)),
    (lambda: Conv2D(3, (2, 3), strides=2, activation=LeakyReLU(0.1)), (7, 6, 2)),
    (lambda: Activation("elu"), (3, 4)),
])
def test_gradcheck(backend, make, shape):
    results = gradcheck.check_layer(make(), shape, batch_size=3)
    assert all(r.passed for r in results), results


def test_whole_model_gradcheck(backend):
    rng = np.random.default_rng(5)
    x = gradcheck.spread_input((4, 6, 5, 2), rng)
    y = np.array([0, 1, 2, 1])
    npcnn.set_random_seed(4)
    model = Sequential([Conv2D(3, 3, activation="elu", input_shape=(6, 5, 2)), LeakyReLU(),
                        Conv2D(4, 2, activation="gelu"), Softmax(axis=1), Flatten(),
                        Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    assert all(r.passed for r in gradcheck.check_model(model, x, y))
    hist = model.fit(x.astype(np.float32), y, epochs=10, batch_size=4, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]


# ------------------------------------------------------------------------------- names and arguments
def test_names_keras_accepts():
    elu, gelu, leaky = (get_activation_layer(n) for n in ("elu", "gelu", "leaky_relu"))
    assert type(elu) is ELU and elu.alpha == 1.0
    assert type(gelu) is GELU
    assert type(leaky) is LeakyReLU and leaky.negative_slope == 0.2  # keras.activations.leaky_relu's default
    assert LeakyReLU().negative_slope == 0.3  # keras.layers.LeakyReLU's default
    assert LeakyReLU(alpha=0.1).negative_slope == 0.1  # Keras 2's argument name
    assert repr(Dense(3, activation="leaky_relu")) == "Dense(name=None, activation='leaky_relu')"
    assert Activation("gelu").activation.activation_name == "gelu"
    with pytest.raises(ValueError, match="Did you mean 'gelu'"):
        get_activation_layer("gelux")


def test_softmax_axis_rules():
    assert Softmax().over_last_axis() and Softmax(axis=-1).over_last_axis()
    s = Softmax(axis=3)
    assert not s.over_last_axis()
    s.build((4, 5, 6))
    assert s.over_last_axis()
    s2 = Softmax(axis=1)
    s2.build((4, 5, 6))
    assert not s2.over_last_axis()
    with pytest.raises(ValueError, match="batch axis"):
        Softmax(axis=0)
    with pytest.raises(TypeError, match="axis must be an int"):
        Softmax(axis=(1, 2))
    with pytest.raises(ValueError, match="outside the input's axes"):
        Softmax(axis=4).forward(np.ones((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="outside the input's axes"):
        Softmax(axis=-4).forward(np.ones((2, 3, 4, 5)))  # -4 is the batch axis of a 4-d input


@pytest.mark.parametrize("make, match", [
    (lambda: LeakyReLU(-0.1), ">= 0"),
    (lambda: LeakyReLU("a"), "finite number"),
    (lambda: ELU(alpha=float("nan")), "finite number"),
    (lambda: GELU(approximate=True), "not supported"),
])
def test_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("layer, shape, names", [
    (ELU(), (4, 3), ["elu.dx", "elu.out"]),
    (GELU(), (4, 3), ["gelu.dx", "gelu.out"]),
    (LeakyReLU(), (4, 3), ["leaky_relu.dx", "leaky_relu.out"]),
    (Softmax(axis=1), (4, 3), ["softmax_axis.dz", "softmax_axis.out"]),
    (Softmax(axis=2), (4, 3), ["softmax.dz", "softmax.out"]),
])
def test_workspace_bytes_are_what_the_kernels_keep(layer, shape, names):
    layer.build(shape)
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    with npcnn.use_backend("numba"):
        state = LayerState(ws=Workspace())
        ctx = Context(True, batch_size=2)
        y = layer.forward_op(x, state, ctx)
        layer.backward_op(np.ones_like(y), state, ctx)
    assert sorted(state.ws) == names
    assert {k: v.nbytes for k, v in state.ws.items()} == layer.workspace_bytes(shape, 2)
