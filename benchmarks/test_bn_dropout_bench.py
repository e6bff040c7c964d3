"""BatchNormalization and Dropout kernels at the deep CIFAR model's shapes, batch 64: NumPy twin vs Numba.

One training step of each layer, as the layer will call the kernels on a whole batch (one shard):

* BN forward  = batchnorm_sum + batchnorm_sqdev_sum + batchnorm_forward (batch statistics);
* BN backward = batchnorm_backward_sums + batchnorm_backward;
* Dropout forward / backward at rate 0.3.

Shapes: after the three conv blocks (64, 32, 32, 32), (64, 16, 16, 64), (64, 8, 8, 128) and after the
Dense layer (64, 128). The Numba versions get a reused Workspace (as the layers give them); its
``parallel=None`` lets the prange drivers run above the size threshold, with the session's threads.
Groups: ``bn_forward``, ``bn_backward``, ``dropout_forward``, ``dropout_backward``.
"""

from __future__ import annotations

import numpy as np
import pytest

from npcnn.kernels import batchnorm as B
from npcnn.kernels import dropout as D
from npcnn.kernels.workspace import Workspace

BATCH = 64
SHAPES = {
    "block1": (BATCH, 32, 32, 32),
    "block2": (BATCH, 16, 16, 64),
    "block3": (BATCH, 8, 8, 128),
    "dense": (BATCH, 128),
}
BACKENDS = ("numpy", "numba")
RATE = 0.3
EPS = 1e-3


def _ws(backend):
    return Workspace() if backend == "numba" else None


def _bn(backend):
    names = ("sum", "sqdev_sum", "forward", "backward_sums", "backward")
    return {n: getattr(B, f"batchnorm_{n}_{backend}") for n in names}


def _data(shape):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) + 0.5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    C = shape[-1]
    return x, dy, np.ones(C, np.float32), np.zeros(C, np.float32)


def _bn_forward(k, x, gamma, beta, ws):
    M = x.size // x.shape[-1]
    mean = k["sum"](x, ws=ws) / M
    var = k["sqdev_sum"](x, mean, ws=ws) / M
    return k["forward"](x, mean, var, gamma, beta, EPS, ws=ws)


def _info(info, kernel, layer, shape, backend):
    info.update(kernel=kernel, layer=layer, shape=shape, batch=BATCH, backend=backend)


@pytest.mark.benchmark(group="bn_forward")
@pytest.mark.parametrize("layer", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bn_forward(benchmark, info, backend, layer):
    x, dy, gamma, beta = _data(SHAPES[layer])
    k, ws = _bn(backend), _ws(backend)
    _info(info, "batchnorm sum+sqdev_sum+forward", layer, SHAPES[layer], backend)
    benchmark(_bn_forward, k, x, gamma, beta, ws)


@pytest.mark.benchmark(group="bn_backward")
@pytest.mark.parametrize("layer", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bn_backward(benchmark, info, backend, layer):
    x, dy, gamma, beta = _data(SHAPES[layer])
    k, ws = _bn(backend), _ws(backend)
    _, cache = _bn_forward(k, x, gamma, beta, ws)
    M = x.size // x.shape[-1]

    def backward():
        sum_dy, sum_dy_xhat = k["backward_sums"](dy, cache, ws=ws)
        return k["backward"](dy, cache, sum_dy, sum_dy_xhat, M, ws=ws)

    _info(info, "batchnorm backward_sums+backward", layer, SHAPES[layer], backend)
    benchmark(backward)


@pytest.mark.benchmark(group="dropout_forward")
@pytest.mark.parametrize("layer", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_forward(benchmark, info, backend, layer):
    x, *_ = _data(SHAPES[layer])
    fwd, ws = getattr(D, f"dropout_forward_{backend}"), _ws(backend)
    _info(info, f"dropout_forward rate {RATE}", layer, SHAPES[layer], backend)
    benchmark(fwd, x, RATE, 1234, 0, None, ws=ws)


@pytest.mark.benchmark(group="dropout_backward")
@pytest.mark.parametrize("layer", list(SHAPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_backward(benchmark, info, backend, layer):
    x, dy, *_ = _data(SHAPES[layer])
    ws = _ws(backend)
    _, cache = getattr(D, f"dropout_forward_{backend}")(x, RATE, 1234, 0, None, ws=ws)
    _info(info, f"dropout_backward rate {RATE}", layer, SHAPES[layer], backend)
    benchmark(getattr(D, f"dropout_backward_{backend}"), dy, cache, ws=ws)
