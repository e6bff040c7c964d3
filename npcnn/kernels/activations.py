"""Element-wise activations and their backward passes.

ReLU:     y = max(x, 0);     dx = dy * [x > 0]   (gradient at exactly 0 is 0, as in PyTorch)
Softmax:  p = exp(z - max z) / sum exp(z - max z) per row (the per-row max keeps exp finite)
          dz = p * (dp - sum(dp * p))   (the Jacobian-vector product; the model never uses it
          when softmax feeds the cross-entropy: see :mod:`npcnn.kernels.softmax_ce`)
"""

from __future__ import annotations

import numpy as np


def relu_forward_numpy(x):
    """ReLU forward. x: any shape. Returns (y, cache) with y = max(x, 0), same shape/dtype."""
    y = np.maximum(x, 0)
    return y, y


def relu_backward_numpy(dy, cache):
    """ReLU backward. dy, cache: same shape. Returns dx = dy where the output was > 0, else 0."""
    return np.where(cache > 0, dy, 0).astype(dy.dtype, copy=False)


def softmax_numpy(z):
    """Row-wise stable softmax. z: (N, K). Returns p: (N, K), rows sum to 1."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward_numpy(dp, p):
    """Softmax Jacobian-vector product. dp, p: (N, K). Returns dz: (N, K)."""
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- Numba versions
# Element-wise over the flattened (contiguous) array, split across threads by prange:
# every element is written by exactly one iteration.

from numba import njit, prange  # noqa: E402

from npcnn.kernels.workspace import run_parallel  # noqa: E402


@njit(parallel=True, cache=True, nogil=True)
def _relu_fwd_par(x, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if not v < 0 else 0  # keeps NaN, like np.maximum


@njit(cache=True, nogil=True)
def _relu_fwd_ser(x, y):
    for i in range(x.size):
        v = x[i]
        y[i] = v if not v < 0 else 0


@njit(parallel=True, cache=True, nogil=True)
def _relu_bwd_par(dy, y, dx):
    for i in prange(dy.size):
        dx[i] = dy[i] if y[i] > 0 else 0


@njit(cache=True, nogil=True)
def _relu_bwd_ser(dy, y, dx):
    for i in range(dy.size):
        dx[i] = dy[i] if y[i] > 0 else 0


def relu_forward_numba(x):
    """ReLU forward (Numba); same result and cache (the output) as :func:`relu_forward_numpy`."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    fn = _relu_fwd_par if run_parallel(x.size) else _relu_fwd_ser
    fn(x.reshape(-1), y.reshape(-1))
    return y, y


def relu_backward_numba(dy, cache):
    """ReLU backward (Numba): dx = dy where the output was > 0, else 0 (0 at exactly 0)."""
    dy = np.ascontiguousarray(dy)
    dx = np.empty_like(dy)
    fn = _relu_bwd_par if run_parallel(dy.size) else _relu_bwd_ser
    fn(dy.reshape(-1), np.ascontiguousarray(cache).reshape(-1), dx.reshape(-1))
    return dx
