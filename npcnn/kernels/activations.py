"""Element-wise activations, the softmax, and their backward passes.

ReLU:     y = max(x, 0);     dx = dy * [y > 0]   (gradient at exactly 0 is 0, as in PyTorch)
Sigmoid:  y = 0.5 * (1 + tanh(x / 2))  (= 1 / (1 + exp(-x)), with no overflow for large |x|);
          dx = dy * y * (1 - y)
Tanh:     y = tanh(x);       dx = dy * (1 - y^2)
Softmax:  p = exp(z - max z) / sum exp(z - max z) per row (the per-row max keeps exp finite)
          dz = p * (dp - sum(dp * p))   (the Jacobian-vector product; the model never uses it
          when softmax feeds the cross-entropy: see :mod:`npcnn.kernels.softmax_ce`)

Every forward returns ``(y, cache)`` where the cache *is* the output y (each backward needs only
y); every backward is ``backward(dy, cache, ws=None) -> dx``. Shapes: x, y, dy, dx all the same
(any shape; the softmax works along the last axis, z and p (N, K)).
"""

from __future__ import annotations

import numpy as np


def relu_forward_numpy(x, ws=None):
    """ReLU forward. x: any shape. Returns (y, cache) with y = max(x, 0) (same shape/dtype), cache = y.

    ws: ignored by the twin.
    """
    y = np.maximum(x, 0)
    return y, y


def relu_backward_numpy(dy, cache, ws=None):
    """ReLU backward. dy, cache (the forward's y): same shape. Returns dx = dy where y > 0, else 0."""
    return np.where(cache > 0, dy, 0).astype(dy.dtype, copy=False)


def sigmoid_forward_numpy(x, ws=None):
    """Sigmoid forward, stable for large |x|. x: any shape. Returns (y, cache = y), y same shape/dtype."""
    y = (0.5 * (1 + np.tanh(0.5 * x))).astype(x.dtype, copy=False)
    return y, y


def sigmoid_backward_numpy(dy, cache, ws=None):
    """Sigmoid backward. dy, cache (the forward's y): same shape. Returns dx = dy * y * (1 - y)."""
    y = cache
    return dy * y * (1 - y)


def tanh_forward_numpy(x, ws=None):
    """Tanh forward. x: any shape. Returns (y, cache = y), y = tanh(x) same shape/dtype."""
    y = np.tanh(x)
    return y, y


def tanh_backward_numpy(dy, cache, ws=None):
    """Tanh backward. dy, cache (the forward's y): same shape. Returns dx = dy * (1 - y^2)."""
    y = cache
    return dy * (1 - y * y)


def softmax_forward_numpy(z, ws=None):
    """Row-wise stable softmax. z: (N, K). Returns (p, cache = p), p (N, K) with rows summing to 1."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return p, p


def softmax_backward_numpy(dp, cache, ws=None):
    """Softmax Jacobian-vector product. dp, cache (the forward's p): (N, K). Returns dz: (N, K)."""
    p = cache
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- Numba versions
# Element-wise kernels run over the flattened (contiguous) array, the softmax over rows; the
# prange drivers split that range across threads (every element, or row, is written by
# exactly one iteration). Constants are passed in the arrays' precision, so float32 stays
# float32 inside the loops as in NumPy. Outputs are ``ws`` buffers: "<op>.out" forward,
# "<op>.dx" (softmax: "softmax.dz") backward.

from numba import njit, prange  # noqa: E402

from npcnn.kernels.workspace import buffer, run_parallel  # noqa: E402


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


@njit(parallel=True, cache=True, nogil=True)
def _sigmoid_fwd_par(x, y, half, one):
    for i in prange(x.size):
        y[i] = half * (one + np.tanh(half * x[i]))


@njit(cache=True, nogil=True)
def _sigmoid_fwd_ser(x, y, half, one):
    for i in range(x.size):
        y[i] = half * (one + np.tanh(half * x[i]))


@njit(parallel=True, cache=True, nogil=True)
def _sigmoid_bwd_par(dy, y, dx, one):
    for i in prange(dy.size):
        dx[i] = dy[i] * y[i] * (one - y[i])


@njit(cache=True, nogil=True)
def _sigmoid_bwd_ser(dy, y, dx, one):
    for i in range(dy.size):
        dx[i] = dy[i] * y[i] * (one - y[i])


@njit(parallel=True, cache=True, nogil=True)
def _tanh_fwd_par(x, y):
    for i in prange(x.size):
        y[i] = np.tanh(x[i])


@njit(cache=True, nogil=True)
def _tanh_fwd_ser(x, y):
    for i in range(x.size):
        y[i] = np.tanh(x[i])


@njit(parallel=True, cache=True, nogil=True)
def _tanh_bwd_par(dy, y, dx, one):
    for i in prange(dy.size):
        dx[i] = dy[i] * (one - y[i] * y[i])


@njit(cache=True, nogil=True)
def _tanh_bwd_ser(dy, y, dx, one):
    for i in range(dy.size):
        dx[i] = dy[i] * (one - y[i] * y[i])


@njit(cache=True, nogil=True)
def _softmax_row(z, p, n):
    """Row n of p (M, K): exp(z - max) / sum, the sum accumulated in float64."""
    K = z.shape[1]
    m = z[n, 0]
    for k in range(1, K):
        if z[n, k] > m:
            m = z[n, k]
    s = 0.0
    for k in range(K):
        e = np.exp(z[n, k] - m)
        p[n, k] = e
        s += e
    inv = 1.0 / s
    for k in range(K):
        p[n, k] = p[n, k] * inv


@njit(parallel=True, cache=True, nogil=True)
def _softmax_fwd_par(z, p):
    for n in prange(z.shape[0]):
        _softmax_row(z, p, n)


@njit(cache=True, nogil=True)
def _softmax_fwd_ser(z, p):
    for n in range(z.shape[0]):
        _softmax_row(z, p, n)


@njit(cache=True, nogil=True)
def _softmax_bwd_row(dp, p, dz, n):
    """Row n of dz (M, K) = p * (dp - sum(dp * p)), the sum accumulated in float64."""
    K = p.shape[1]
    s = 0.0
    for k in range(K):
        s += dp[n, k] * p[n, k]
    for k in range(K):
        dz[n, k] = p[n, k] * (dp[n, k] - s)


@njit(parallel=True, cache=True, nogil=True)
def _softmax_bwd_par(dp, p, dz):
    for n in prange(p.shape[0]):
        _softmax_bwd_row(dp, p, dz, n)


@njit(cache=True, nogil=True)
def _softmax_bwd_ser(dp, p, dz):
    for n in range(p.shape[0]):
        _softmax_bwd_row(dp, p, dz, n)


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def relu_forward_numba(x, ws=None):
    """ReLU forward (Numba); same result and cache (the output) as :func:`relu_forward_numpy`.

    With a ``ws``, y is its buffer "relu.out" (overwritten by the next call); with None, fresh.
    """
    x = np.ascontiguousarray(x)
    y = buffer(ws, "relu.out", x.shape, x.dtype)
    fn = _relu_fwd_par if run_parallel(x.size, ws) else _relu_fwd_ser
    fn(x.reshape(-1), y.reshape(-1))
    return y, y


def relu_backward_numba(dy, cache, ws=None):
    """ReLU backward (Numba): dx = dy where the output was > 0, else 0 (0 at exactly 0).

    dy, cache: same shape. With a ``ws``, dx is its buffer "relu.dx".
    """
    dy = np.ascontiguousarray(dy)
    dx = buffer(ws, "relu.dx", dy.shape, dy.dtype)
    fn = _relu_bwd_par if run_parallel(dy.size, ws) else _relu_bwd_ser
    fn(dy.reshape(-1), _flat(cache), dx.reshape(-1))
    return dx


def sigmoid_forward_numba(x, ws=None):
    """Sigmoid forward (Numba); same result and cache as the twin. ws: y is "sigmoid.out"."""
    x = np.ascontiguousarray(x)
    y = buffer(ws, "sigmoid.out", x.shape, x.dtype)
    t = x.dtype.type
    fn = _sigmoid_fwd_par if run_parallel(x.size, ws) else _sigmoid_fwd_ser
    fn(x.reshape(-1), y.reshape(-1), t(0.5), t(1))
    return y, y


def sigmoid_backward_numba(dy, cache, ws=None):
    """Sigmoid backward (Numba): dx = dy * y * (1 - y). dy, cache: same shape. ws: dx is "sigmoid.dx"."""
    dy = np.ascontiguousarray(dy)
    dx = buffer(ws, "sigmoid.dx", dy.shape, dy.dtype)
    fn = _sigmoid_bwd_par if run_parallel(dy.size, ws) else _sigmoid_bwd_ser
    fn(dy.reshape(-1), _flat(cache), dx.reshape(-1), dy.dtype.type(1))
    return dx


def tanh_forward_numba(x, ws=None):
    """Tanh forward (Numba); same result and cache as the twin. ws: y is "tanh.out"."""
    x = np.ascontiguousarray(x)
    y = buffer(ws, "tanh.out", x.shape, x.dtype)
    fn = _tanh_fwd_par if run_parallel(x.size, ws) else _tanh_fwd_ser
    fn(x.reshape(-1), y.reshape(-1))
    return y, y


def tanh_backward_numba(dy, cache, ws=None):
    """Tanh backward (Numba): dx = dy * (1 - y^2). dy, cache: same shape. ws: dx is "tanh.dx"."""
    dy = np.ascontiguousarray(dy)
    dx = buffer(ws, "tanh.dx", dy.shape, dy.dtype)
    fn = _tanh_bwd_par if run_parallel(dy.size, ws) else _tanh_bwd_ser
    fn(dy.reshape(-1), _flat(cache), dx.reshape(-1), dy.dtype.type(1))
    return dx


def softmax_forward_numba(z, ws=None):
    """Row-wise stable softmax (Numba); same result and cache as the twin. z: (N, K).

    With a ``ws``, p (N, K) is its buffer "softmax.out".
    """
    z = np.ascontiguousarray(z)
    p = buffer(ws, "softmax.out", z.shape, z.dtype)
    K = z.shape[-1]
    fn = _softmax_fwd_par if run_parallel(z.size, ws) else _softmax_fwd_ser
    fn(z.reshape(-1, K), p.reshape(-1, K))
    return p, p


def softmax_backward_numba(dp, cache, ws=None):
    """Softmax Jacobian-vector product (Numba). dp, cache (p): (N, K). Returns dz (N, K).

    With a ``ws``, dz is its buffer "softmax.dz".
    """
    dp = np.ascontiguousarray(dp)
    p = np.ascontiguousarray(cache)
    dz = buffer(ws, "softmax.dz", dp.shape, np.result_type(dp.dtype, p.dtype))
    K = dp.shape[-1]
    fn = _softmax_bwd_par if run_parallel(dp.size, ws) else _softmax_bwd_ser
    fn(dp.reshape(-1, K), p.reshape(-1, K), dz.reshape(-1, K))
    return dz


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "relu_forward": (relu_forward_numpy, relu_forward_numba),
    "relu_backward": (relu_backward_numpy, relu_backward_numba),
    "sigmoid_forward": (sigmoid_forward_numpy, sigmoid_forward_numba),
    "sigmoid_backward": (sigmoid_backward_numpy, sigmoid_backward_numba),
    "tanh_forward": (tanh_forward_numpy, tanh_forward_numba),
    "tanh_backward": (tanh_backward_numpy, tanh_backward_numba),
    "softmax_forward": (softmax_forward_numpy, softmax_forward_numba),
    "softmax_backward": (softmax_backward_numpy, softmax_backward_numba),
}
