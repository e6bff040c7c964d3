"""Element-wise activations, the softmax, and their backward passes.

ReLU:     y = max(x, 0);     dx = dy * [y > 0]   (gradient at exactly 0 is 0, as in PyTorch)
Sigmoid:  y = 0.5 * (1 + tanh(x / 2))  (= 1 / (1 + exp(-x)), with no overflow for large |x|);
          dx = dy * y * (1 - y)
Tanh:     y = tanh(x);       dx = dy * (1 - y^2)
Softmax:  p = exp(z - max z) / sum exp(z - max z) per row (the per-row max keeps exp finite)
          dz = p * (dp - sum(dp * p))   (the Jacobian-vector product; the model never uses it
          when softmax feeds the cross-entropy: see :mod:`npcnn.kernels.softmax_ce`)

ELU:        y = x if x > 0 else alpha * (exp(x) - 1);     dx = dy if x > 0 else dy * (y + alpha)
GELU:       y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))  (Keras's default approximate=False);
            dx = dy * (Phi(x) + x * phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi)   (in float64)
LeakyReLU:  y = x if x > 0 else negative_slope * x;      dx = dy if x > 0 else negative_slope * dy
Softmax over any axis (softmax_axis): the softmax and its Jacobian-vector product along ``axis``.

Every forward returns ``(y, cache)``. For ReLU, sigmoid, tanh and the softmax the cache *is* the
output y (each backward needs only y); ELU keeps x (for the mask x > 0), y and alpha (an
:class:`EluCache`), GELU keeps x, LeakyReLU x and the slope (a :class:`LeakyReLUCache`), the
softmax over an axis p and the axis (a :class:`SoftmaxAxisCache`). Every backward is
``backward(dy, cache, ws=None) -> dx``. Shapes: x, y, dy, dx all the same (any shape; the softmax
works along the last axis, z and p (N, K); softmax_axis along ``axis``). The gradient at exactly
0 follows PyTorch: ReLU 0, ELU alpha, LeakyReLU negative_slope.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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


class EluCache(NamedTuple):
    """ELU backward's needs: x (the mask x > 0), y (the forward's output), alpha (x's dtype)."""

    x: np.ndarray
    y: np.ndarray
    alpha: np.generic


class LeakyReLUCache(NamedTuple):
    """LeakyReLU backward's needs: x (the mask x > 0) and negative_slope (x's dtype)."""

    x: np.ndarray
    negative_slope: np.generic


class SoftmaxAxisCache(NamedTuple):
    """The softmax over an axis: p (the forward's output) and axis (an int in [0, p.ndim))."""

    p: np.ndarray
    axis: int


def elu_forward_numpy(x, alpha=1.0, ws=None):
    """ELU forward. x: any shape. Returns (y, EluCache); y = x where x > 0, else alpha * (exp(x) - 1).

    ``expm1`` keeps the small negative values accurate; x is clipped at 0 first so large positive
    x never overflows in the branch that is not taken.
    """
    a = x.dtype.type(alpha)
    y = np.where(x > 0, x, a * np.expm1(np.minimum(x, 0)))
    return y, EluCache(x, y, a)


def elu_backward_numpy(dy, cache, ws=None):
    """ELU backward. dy: x's shape. Returns dx = dy where x > 0, else dy * (y + alpha) (= dy * alpha * exp(x))."""
    x, y, a = cache
    return np.where(x > 0, dy, dy * (y + a))


_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# NumPy has no erf: the twin applies Python's math.erf element by element (slow, but the
# definition itself; the Numba version calls the same function compiled).
_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_forward_numpy(x, ws=None):
    """GELU forward, exact (erf) form, computed in float64. x: any shape. Returns (y, cache = x)."""
    v = x.astype(np.float64)
    y = (0.5 * v) * (1.0 + _erf(v * _INV_SQRT2).astype(np.float64))
    return y.astype(x.dtype), x


def gelu_backward_numpy(dy, cache, ws=None):
    """GELU backward. dy, cache (the forward's x): same shape. Returns dx = dy * (Phi(x) + x phi(x)), dy's dtype."""
    v = cache.astype(np.float64)
    d = 0.5 * (1.0 + _erf(v * _INV_SQRT2).astype(np.float64)) + v * np.exp(-0.5 * v * v) * _INV_SQRT_2PI
    return (dy.astype(np.float64) * d).astype(dy.dtype)


def leaky_relu_forward_numpy(x, negative_slope=0.3, ws=None):
    """LeakyReLU forward. x: any shape. Returns (y, LeakyReLUCache); y = x where x > 0, else negative_slope * x."""
    s = x.dtype.type(negative_slope)
    y = np.where(x > 0, x, x * s)
    return y, LeakyReLUCache(x, s)


def leaky_relu_backward_numpy(dy, cache, ws=None):
    """LeakyReLU backward. Returns dx = dy where x > 0, else dy * negative_slope (the slope at exactly 0)."""
    return np.where(cache.x > 0, dy, dy * cache.negative_slope)


def softmax_axis_forward_numpy(z, axis, ws=None):
    """Stable softmax along ``axis`` (an int, negative counts from the end). z: any shape.

    Returns (p, SoftmaxAxisCache(p, axis in [0, z.ndim))), p of z's shape, summing to 1 along ``axis``.
    """
    axis = _check_axis(axis, z.ndim)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    p = e / e.sum(axis=axis, keepdims=True)
    return p, SoftmaxAxisCache(p, axis)


def softmax_axis_backward_numpy(dp, cache, ws=None):
    """Softmax Jacobian-vector product along the cache's axis: dz = p * (dp - sum_axis(dp * p))."""
    p, axis = cache
    return p * (dp - (dp * p).sum(axis=axis, keepdims=True))


def _check_axis(axis, ndim):
    """axis as an int in [0, ndim), or ValueError."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"softmax axis must be an int in [{-ndim}, {ndim}) for a {ndim}-d input, got {axis!r}")
    return int(axis) % ndim


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


# ----------------------------------------------------------------- ELU, GELU, LeakyReLU (Numba)
# The same element-wise pattern; ELU and LeakyReLU compute in x's precision as their twins do,
# GELU in float64 (then rounded to x's dtype), as its twin does.


@njit(cache=True, nogil=True)
def _elu_fwd_elem(x, y, a, i):
    v = x[i]
    y[i] = v if v > 0 else a * np.expm1(v)  # only v <= 0 reaches expm1: no overflow


@njit(parallel=True, cache=True, nogil=True)
def _elu_fwd_par(x, y, a):
    for i in prange(x.size):
        _elu_fwd_elem(x, y, a, i)


@njit(cache=True, nogil=True)
def _elu_fwd_ser(x, y, a):
    for i in range(x.size):
        _elu_fwd_elem(x, y, a, i)


@njit(parallel=True, cache=True, nogil=True)
def _elu_bwd_par(dy, x, y, a, dx):
    for i in prange(dy.size):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * (y[i] + a)


@njit(cache=True, nogil=True)
def _elu_bwd_ser(dy, x, y, a, dx):
    for i in range(dy.size):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * (y[i] + a)


@njit(cache=True, nogil=True)
def _gelu_fwd_elem(x, y, i):
    v = np.float64(x[i])
    y[i] = (0.5 * v) * (1.0 + math.erf(v * _INV_SQRT2))


@njit(parallel=True, cache=True, nogil=True)
def _gelu_fwd_par(x, y):
    for i in prange(x.size):
        _gelu_fwd_elem(x, y, i)


@njit(cache=True, nogil=True)
def _gelu_fwd_ser(x, y):
    for i in range(x.size):
        _gelu_fwd_elem(x, y, i)


@njit(cache=True, nogil=True)
def _gelu_bwd_elem(dy, x, dx, i):
    v = np.float64(x[i])
    d = 0.5 * (1.0 + math.erf(v * _INV_SQRT2)) + v * np.exp(-0.5 * v * v) * _INV_SQRT_2PI
    dx[i] = np.float64(dy[i]) * d


@njit(parallel=True, cache=True, nogil=True)
def _gelu_bwd_par(dy, x, dx):
    for i in prange(dy.size):
        _gelu_bwd_elem(dy, x, dx, i)


@njit(cache=True, nogil=True)
def _gelu_bwd_ser(dy, x, dx):
    for i in range(dy.size):
        _gelu_bwd_elem(dy, x, dx, i)


@njit(parallel=True, cache=True, nogil=True)
def _leaky_fwd_par(x, y, s):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else v * s


@njit(cache=True, nogil=True)
def _leaky_fwd_ser(x, y, s):
    for i in range(x.size):
        v = x[i]
        y[i] = v if v > 0 else v * s


@njit(parallel=True, cache=True, nogil=True)
def _leaky_bwd_par(dy, x, s, dx):
    for i in prange(dy.size):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * s


@njit(cache=True, nogil=True)
def _leaky_bwd_ser(dy, x, s, dx):
    for i in range(dy.size):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * s


def elu_forward_numba(x, alpha=1.0, ws=None):
    """ELU forward (Numba); same result and cache as the twin. ws: y is "elu.out"."""
    x = np.ascontiguousarray(x)
    a = x.dtype.type(alpha)
    y = buffer(ws, "elu.out", x.shape, x.dtype)
    fn = _elu_fwd_par if run_parallel(x.size, ws) else _elu_fwd_ser
    fn(x.reshape(-1), y.reshape(-1), a)
    return y, EluCache(x, y, a)


def elu_backward_numba(dy, cache, ws=None):
    """ELU backward (Numba): dx = dy where x > 0, else dy * (y + alpha). ws: dx is "elu.dx"."""
    dy = np.ascontiguousarray(dy)
    x, y, a = cache
    dx = buffer(ws, "elu.dx", dy.shape, dy.dtype)
    fn = _elu_bwd_par if run_parallel(dy.size, ws) else _elu_bwd_ser
    fn(dy.reshape(-1), _flat(x), _flat(y), dy.dtype.type(a), dx.reshape(-1))
    return dx


def gelu_forward_numba(x, ws=None):
    """GELU forward (Numba), exact erf form in float64; same result and cache (x) as the twin. ws: "gelu.out"."""
    x = np.ascontiguousarray(x)
    y = buffer(ws, "gelu.out", x.shape, x.dtype)
    fn = _gelu_fwd_par if run_parallel(x.size, ws) else _gelu_fwd_ser
    fn(x.reshape(-1), y.reshape(-1))
    return y, x


def gelu_backward_numba(dy, cache, ws=None):
    """GELU backward (Numba): dx = dy * (Phi(x) + x phi(x)) in float64. ws: dx is "gelu.dx"."""
    dy = np.ascontiguousarray(dy)
    dx = buffer(ws, "gelu.dx", dy.shape, dy.dtype)
    fn = _gelu_bwd_par if run_parallel(dy.size, ws) else _gelu_bwd_ser
    fn(dy.reshape(-1), _flat(cache), dx.reshape(-1))
    return dx


def leaky_relu_forward_numba(x, negative_slope=0.3, ws=None):
    """LeakyReLU forward (Numba); same result and cache as the twin. ws: y is "leaky_relu.out"."""
    x = np.ascontiguousarray(x)
    s = x.dtype.type(negative_slope)
    y = buffer(ws, "leaky_relu.out", x.shape, x.dtype)
    fn = _leaky_fwd_par if run_parallel(x.size, ws) else _leaky_fwd_ser
    fn(x.reshape(-1), y.reshape(-1), s)
    return y, LeakyReLUCache(x, s)


def leaky_relu_backward_numba(dy, cache, ws=None):
    """LeakyReLU backward (Numba): dx = dy where x > 0, else dy * negative_slope. ws: dx is "leaky_relu.dx"."""
    dy = np.ascontiguousarray(dy)
    dx = buffer(ws, "leaky_relu.dx", dy.shape, dy.dtype)
    fn = _leaky_bwd_par if run_parallel(dy.size, ws) else _leaky_bwd_ser
    fn(dy.reshape(-1), _flat(cache.x), dy.dtype.type(cache.negative_slope), dx.reshape(-1))
    return dx


# ----------------------------------------------------------------- softmax over any axis (Numba)
# z is viewed as (A, K, B): A = the sizes before the axis multiplied, K the axis, B those after.
# Each of the A * B lanes (a, :, b) is one softmax, written by one prange iteration; the sums
# run in float64 as in the last-axis softmax.


@njit(cache=True, nogil=True)
def _softmax_lane(z, p, q):
    B = z.shape[2]
    a, b = q // B, q % B
    K = z.shape[1]
    m = z[a, 0, b]
    for k in range(1, K):
        if z[a, k, b] > m:
            m = z[a, k, b]
    s = 0.0
    for k in range(K):
        e = np.exp(z[a, k, b] - m)
        p[a, k, b] = e
        s += e
    inv = 1.0 / s
    for k in range(K):
        p[a, k, b] = p[a, k, b] * inv


@njit(parallel=True, cache=True, nogil=True)
def _softmax_axis_fwd_par(z, p):
    for q in prange(z.shape[0] * z.shape[2]):
        _softmax_lane(z, p, q)


@njit(cache=True, nogil=True)
def _softmax_axis_fwd_ser(z, p):
    for q in range(z.shape[0] * z.shape[2]):
        _softmax_lane(z, p, q)


@njit(cache=True, nogil=True)
def _softmax_bwd_lane(dp, p, dz, q):
    B = p.shape[2]
    a, b = q // B, q % B
    K = p.shape[1]
    s = 0.0
    for k in range(K):
        s += dp[a, k, b] * p[a, k, b]
    for k in range(K):
        dz[a, k, b] = p[a, k, b] * (dp[a, k, b] - s)


@njit(parallel=True, cache=True, nogil=True)
def _softmax_axis_bwd_par(dp, p, dz):
    for q in prange(p.shape[0] * p.shape[2]):
        _softmax_bwd_lane(dp, p, dz, q)


@njit(cache=True, nogil=True)
def _softmax_axis_bwd_ser(dp, p, dz):
    for q in range(p.shape[0] * p.shape[2]):
        _softmax_bwd_lane(dp, p, dz, q)


def _akb(shape, axis):
    """(A, K, B): the sizes before ``axis`` multiplied, the axis, the sizes after it multiplied."""
    return (int(np.prod(shape[:axis], dtype=np.int64)), int(shape[axis]),
            int(np.prod(shape[axis + 1:], dtype=np.int64)))


def softmax_axis_forward_numba(z, axis, ws=None):
    """Softmax along ``axis`` (Numba); same result and cache as the twin. ws: p is "softmax_axis.out"."""
    axis = _check_axis(axis, np.ndim(z))
    z = np.ascontiguousarray(z)
    p = buffer(ws, "softmax_axis.out", z.shape, z.dtype)
    akb = _akb(z.shape, axis)
    fn = _softmax_axis_fwd_par if run_parallel(z.size, ws) else _softmax_axis_fwd_ser
    fn(z.reshape(akb), p.reshape(akb))
    return p, SoftmaxAxisCache(p, axis)


def softmax_axis_backward_numba(dp, cache, ws=None):
    """Softmax Jacobian-vector product along the cache's axis (Numba). ws: dz is "softmax_axis.dz"."""
    p, axis = cache
    dp = np.ascontiguousarray(dp)
    p = np.ascontiguousarray(p)
    dz = buffer(ws, "softmax_axis.dz", dp.shape, np.result_type(dp.dtype, p.dtype))
    akb = _akb(dp.shape, axis)
    fn = _softmax_axis_bwd_par if run_parallel(dp.size, ws) else _softmax_axis_bwd_ser
    fn(dp.reshape(akb), p.reshape(akb), dz.reshape(akb))
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
    "elu_forward": (elu_forward_numpy, elu_forward_numba),
    "elu_backward": (elu_backward_numpy, elu_backward_numba),
    "gelu_forward": (gelu_forward_numpy, gelu_forward_numba),
    "gelu_backward": (gelu_backward_numpy, gelu_backward_numba),
    "leaky_relu_forward": (leaky_relu_forward_numpy, leaky_relu_forward_numba),
    "leaky_relu_backward": (leaky_relu_backward_numpy, leaky_relu_backward_numba),
    "softmax_axis_forward": (softmax_axis_forward_numpy, softmax_axis_forward_numba),
    "softmax_axis_backward": (softmax_axis_backward_numpy, softmax_axis_backward_numba),
}
