"""Each kernel, forward and backward, at the seed model's shapes, batch 32 and 128: numpy twin vs numba.

The layers of the Keras CIFAR-10 CNN, per sample:
conv1 (32, 32, 3) -> 32 filters 3x3; pool1 (30, 30, 32); conv2 (15, 15, 32) -> 64;
pool2 (13, 13, 64); conv3 (6, 6, 64) -> 64; ReLU on Dense(64); softmax-CE on 10 classes.
The Numba versions get a Workspace, as the layers give them, so their buffers are reused
(the twins ignore it). Every kernel call passes ``ws=`` the same way on both backends.
"""

from __future__ import annotations

import numpy as np
import pytest

from npcnn import kernels as K
from npcnn.kernels import activations, conv, im2col, pool, softmax_ce
from npcnn.kernels.workspace import Workspace

BATCHES = (32, 128)
BACKENDS = ("numpy", "numba")
CONVS = {"conv1": ((32, 32, 3), 32), "conv2": ((15, 15, 32), 64), "conv3": ((6, 6, 64), 64)}
POOLS = {"pool1": (30, 30, 32), "pool2": (13, 13, 64)}


def _impl(module, name, backend):
    return getattr(module, f"{name}_{backend}")


def _ws(backend):
    """The keyword arguments of a kernel call: a Workspace for Numba (as a layer gives), none for the twin."""
    return {"ws": Workspace()} if backend == "numba" else {}


def _conv_setup(layer, n, backend):
    (h, w, c), f = CONVS[layer]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, c, f)) * 0.1).astype(np.float32)
    bias = np.zeros(f, np.float32)
    oh, ow, pads = K.conv_geometry(x.shape, (3, 3), (1, 1), "valid")
    kw = _ws(backend)
    fwd = _impl(conv, "conv2d_forward", backend)
    return x, kernel, bias, pads, (oh, ow), kw, fwd


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("layer", list(CONVS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_forward(benchmark, info, backend, layer, n):
    x, kernel, bias, pads, out_hw, kw, fwd = _conv_setup(layer, n, backend)
    info.update(kernel="conv2d_forward+relu", layer=layer, batch=n, backend=backend)
    benchmark(fwd, x, kernel, bias, (1, 1), pads, out_hw, relu=True, **kw)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("layer", list(CONVS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_backward(benchmark, info, backend, layer, n):
    x, kernel, bias, pads, out_hw, kw, fwd = _conv_setup(layer, n, backend)
    y, cache = fwd(x, kernel, bias, (1, 1), pads, out_hw, relu=True, **kw)
    dout = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    bwd = _impl(conv, "conv2d_backward", backend)
    need_dx = layer != "conv1"  # the model's first layer needs no input gradient
    info.update(kernel="conv2d_backward+relu", layer=layer, batch=n, backend=backend, need_dx=need_dx)
    benchmark(bwd, dout, cache, need_dx, **kw)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("layer", list(CONVS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_im2col(benchmark, info, backend, layer, n):
    x, kernel, bias, pads, out_hw, kw, _ = _conv_setup(layer, n, backend)
    info.update(kernel="im2col", layer=layer, batch=n, backend=backend)
    benchmark(_impl(im2col, "im2col", backend), x, (3, 3), (1, 1), pads, out_hw, **kw)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("layer", ["conv2", "conv3"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_col2im(benchmark, info, backend, layer, n):
    x, kernel, bias, pads, out_hw, kw, _ = _conv_setup(layer, n, backend)
    cols = np.random.default_rng(1).standard_normal((n * out_hw[0] * out_hw[1], 9 * x.shape[3])).astype(np.float32)
    info.update(kernel="col2im", layer=layer, batch=n, backend=backend)
    benchmark(_impl(im2col, "col2im", backend), cols, x.shape, (3, 3), (1, 1), pads, out_hw, **kw)


def _pool_setup(layer, n):
    x = np.maximum(np.random.default_rng(0).standard_normal((n,) + POOLS[layer]), 0).astype(np.float32)
    oh, ow, pads = K.conv_geometry(x.shape, (2, 2), (2, 2), "valid")
    return x, pads, (oh, ow)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("layer", list(POOLS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_forward(benchmark, info, backend, layer, n):
    x, pads, out_hw = _pool_setup(layer, n)
    kw = _ws(backend)
    info.update(kernel="maxpool2d_forward", layer=layer, batch=n, backend=backend)
    benchmark(_impl(pool, "maxpool2d_forward", backend), x, (2, 2), (2, 2), pads, out_hw, **kw)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("layer", list(POOLS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_backward(benchmark, info, backend, layer, n):
    x, pads, out_hw = _pool_setup(layer, n)
    kw = _ws(backend)
    y, cache = _impl(pool, "maxpool2d_forward", backend)(x, (2, 2), (2, 2), pads, out_hw, **kw)
    dout = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    info.update(kernel="maxpool2d_backward", layer=layer, batch=n, backend=backend)
    benchmark(_impl(pool, "maxpool2d_backward", backend), dout, cache, **kw)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_forward_backward(benchmark, info, backend, n):
    x = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)
    fwd, bwd = _impl(activations, "relu_forward", backend), _impl(activations, "relu_backward", backend)
    kw = _ws(backend)

    def both():
        y, cache = fwd(x, **kw)
        return bwd(x, cache, **kw)

    info.update(kernel="relu forward+backward", layer="dense1", batch=n, backend=backend)
    benchmark(both)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_ce(benchmark, info, backend, n):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, 10)).astype(np.float32)
    y = rng.integers(0, 10, n)
    info.update(kernel="sparse_softmax_ce (loss + gradient)", batch=n, backend=backend)
    benchmark(_impl(softmax_ce, "sparse_softmax_ce", backend), z, y, **_ws(backend))


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_forward_backward(benchmark, info, backend, n):
    """Dense(64) on the flattened conv3 output (1024 features), forward and backward (with dx)."""
    from npcnn.kernels import dense

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1024)).astype(np.float32)
    kernel = (rng.standard_normal((1024, 64)) * 0.03).astype(np.float32)
    bias = np.zeros(64, np.float32)
    dy = rng.standard_normal((n, 64)).astype(np.float32)
    fwd, bwd = _impl(dense, "dense_forward", backend), _impl(dense, "dense_backward", backend)
    kw = _ws(backend)

    def both():
        y, cache = fwd(x, kernel, bias, **kw)
        return bwd(dy, cache, True, **kw)

    info.update(kernel="dense forward+backward", layer="dense1", batch=n, backend=backend)
    benchmark(both)


FUSED = {"conv1+pool1": "conv1", "conv2+pool2": "conv2"}


def _fused_setup(pair, n, backend):
    from npcnn.kernels import fused

    x, kernel, bias, pads, out_hw, _, _ = _conv_setup(FUSED[pair], n, backend)
    poh, pow_, ppads = K.conv_geometry((n,) + out_hw + (kernel.shape[3],), (2, 2), (2, 2), "valid")
    args = (x, kernel, bias, (1, 1), pads, out_hw, (2, 2), (2, 2), ppads, (poh, pow_))
    kw = _ws(backend)  # one Workspace for the fused block, as the model gives it
    return args, kw, _impl(fused, "conv2d_relu_maxpool_forward", backend), \
        _impl(fused, "conv2d_relu_maxpool_backward", backend)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("pair", list(FUSED))
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_relu_pool_forward(benchmark, info, backend, pair, n):
    """The fused conv + ReLU + max-pool op (the twin: the two layers' kernels in turn)."""
    args, kw, fwd, _ = _fused_setup(pair, n, backend)
    info.update(kernel="conv2d_relu_maxpool_forward", layer=pair, batch=n, backend=backend)
    benchmark(fwd, *args, **kw)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("pair", list(FUSED))
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_relu_pool_backward(benchmark, info, backend, pair, n):
    args, kw, fwd, bwd = _fused_setup(pair, n, backend)
    p, cache = fwd(*args, **kw)
    dp = np.random.default_rng(1).standard_normal(p.shape).astype(np.float32)
    need_dx = pair != "conv1+pool1"
    info.update(kernel="conv2d_relu_maxpool_backward", layer=pair, batch=n, backend=backend, need_dx=need_dx)
    benchmark(bwd, dp, cache, need_dx, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_update(benchmark, info, backend):
    """One Adam step over every parameter of the seed model (122,570 float32 values, 10 arrays)."""
    from npcnn.kernels import optim

    rng = np.random.default_rng(0)
    shapes = [(3, 3, 3, 32), (32,), (3, 3, 32, 64), (64,), (3, 3, 64, 64), (64,), (1024, 64), (64,), (64, 10), (10,)]
    arrays = [[rng.standard_normal(s).astype(np.float32) for _ in range(2)]
              + [np.zeros(s, np.float32), np.zeros(s, np.float32)] for s in shapes]
    fn = _impl(optim, "adam_update", backend)

    def step():
        for p, g, m, v in arrays:
            fn(p, g, m, v, 0.9, 0.999, 1e-3, 1e-7)

    info.update(kernel="adam_update (whole model)", backend=backend)
    benchmark(step)
