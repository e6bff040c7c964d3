"""Each kernel, forward and backward, at the seed model's shapes, batch 32 and 128: numpy twin vs numba.

The layers of the Keras CIFAR-10 CNN, per sample:
conv1 (32, 32, 3) -> 32 filters 3x3; pool1 (30, 30, 32); conv2 (15, 15, 32) -> 64;
pool2 (13, 13, 64); conv3 (6, 6, 64) -> 64; ReLU on Dense(64); softmax-CE on 10 classes.
The Numba versions get a workspace, as the layers give them, so their buffers are reused.
"""

from __future__ import annotations

import numpy as np
import pytest

from npcnn import kernels as K
from npcnn.kernels import activations, conv, im2col, pool, softmax_ce

BATCHES = (32, 128)
BACKENDS = ("numpy", "numba")
CONVS = {"conv1": ((32, 32, 3), 32), "conv2": ((15, 15, 32), 64), "conv3": ((6, 6, 64), 64)}
POOLS = {"pool1": (30, 30, 32), "pool2": (13, 13, 64)}


def _impl(module, name, backend):
    return getattr(module, f"{name}_{backend}")


def _conv_setup(layer, n, backend):
    (h, w, c), f = CONVS[layer]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, c, f)) * 0.1).astype(np.float32)
    bias = np.zeros(f, np.float32)
    oh, ow, pads = K.conv_geometry(x.shape, (3, 3), (1, 1), "valid")
    kw = {"workspace": {}} if backend == "numba" else {}
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
    benchmark(_impl(im2col, "col2im", backend), cols, x.shape, (3, 3), (1, 1), pads, out_hw)


def _pool_setup(layer, n):
    x = np.maximum(np.random.default_rng(0).standard_normal((n,) + POOLS[layer]), 0).astype(np.float32)
    oh, ow, pads = K.conv_geometry(x.shape, (2, 2), (2, 2), "valid")
    return x, pads, (oh, ow)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("layer", list(POOLS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_forward(benchmark, info, backend, layer, n):
    x, pads, out_hw = _pool_setup(layer, n)
    kw = {"workspace": {}} if backend == "numba" else {}
    info.update(kernel="maxpool2d_forward", layer=layer, batch=n, backend=backend)
    benchmark(_impl(pool, "maxpool2d_forward", backend), x, (2, 2), (2, 2), pads, out_hw, **kw)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("layer", list(POOLS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool_backward(benchmark, info, backend, layer, n):
    x, pads, out_hw = _pool_setup(layer, n)
    y, cache = _impl(pool, "maxpool2d_forward", backend)(x, (2, 2), (2, 2), pads, out_hw)
    dout = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    info.update(kernel="maxpool2d_backward", layer=layer, batch=n, backend=backend)
    benchmark(_impl(pool, "maxpool2d_backward", backend), dout, cache)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_forward_backward(benchmark, info, backend, n):
    x = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)
    fwd, bwd = _impl(activations, "relu_forward", backend), _impl(activations, "relu_backward", backend)

    def both():
        y, cache = fwd(x)
        return bwd(x, cache)

    info.update(kernel="relu forward+backward", layer="dense1", batch=n, backend=backend)
    benchmark(both)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_ce(benchmark, info, backend, n):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, 10)).astype(np.float32)
    y = rng.integers(0, 10, n)
    info.update(kernel="sparse_softmax_ce (loss + gradient)", batch=n, backend=backend)
    benchmark(_impl(softmax_ce, "sparse_softmax_ce", backend), z, y)
