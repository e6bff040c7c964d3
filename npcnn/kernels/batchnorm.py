"""Batch normalization (Keras's ``BatchNormalization``, channels last) as shard-friendly kernels.

The input ``x`` of any shape ``(..., C)`` is seen as a matrix ``(M, C)``: one row per sample and
pixel (``M = N*H*W`` after a Conv2D, ``M = N`` after a Dense). Each channel ``c`` is normalised
with statistics over its column::

    mean[c] = sum_r x[r, c] / M
    var[c]  = sum_r (x[r, c] - mean[c])^2 / M          (biased, as Keras)
    xhat    = (x - mean) / sqrt(var + epsilon)
    y       = gamma * xhat + beta

Backward, with ``G = dL/dy`` (the derivation node by node is in docs/batchnorm.md)::

    dbeta  = sum_r G                                    (C,)
    dgamma = sum_r G * xhat                             (C,)
    dx     = gamma / (M * sqrt(var + eps)) * (M * G - dbeta - xhat * dgamma)

The whole-batch function needs whole-batch sums. So the kernels are split at every sum: a
data-parallel shard (a thread or an MPI rank holding rows ``lo:hi`` of the batch) computes its
per-channel partial sums, the caller adds them over the shards, and the element-wise kernels
use the global values (synchronized batch normalization)::

    s      = sum over shards of batchnorm_sum(x_k)                       -> mean = s / M
    q      = sum over shards of batchnorm_sqdev_sum(x_k, mean)           -> var  = q / M
    y_k, cache_k = batchnorm_forward(x_k, mean, var, gamma, beta, epsilon)
    sdy, sdyx = sums over shards of batchnorm_backward_sums(dy_k, cache_k)   (= dbeta, dgamma)
    dx_k   = batchnorm_backward(dy_k, cache_k, sdy, sdyx, M)

With one shard this is plain batch normalization. The variance takes a second pass over x
(sum of squared deviations from the already-known mean) rather than ``E[x^2] - mean^2``, which
cancels catastrophically in float32 when ``|mean| >> std``.

Precision: sums are accumulated in float64 and returned as float64; the element-wise math runs
in float64 per element and is rounded once to x's dtype (outputs are x's dtype, never float64
for float32 input).

Each kernel has a readable NumPy twin (``*_numpy``) and a Numba version (``*_numba``) with the
same signature; ``ws`` is a Workspace (dict) or None. The Numba versions take their large
arrays from it (:func:`npcnn.kernels.workspace.buffer`): y, the cache's arrays and dx are
buffers that the next call with the same ``ws`` overwrites; the (C,) sums are fresh arrays (they
leave the shard). The Numba sums cut the rows into a fixed number of chunks (a function of M
only), write one float64 partial per chunk and add the partials in chunk order: the result does
not depend on the thread count and the serial and ``prange`` drivers agree bit for bit. The
twins use NumPy's own summation order (they agree with the Numba sums to 1e-12 relative, tested;
typically 1e-14).

:func:`batchnorm_train_forward_reference` / :func:`batchnorm_train_backward_reference` are the
step-by-step computation graph for learners (cs231n's ``batchnorm_forward`` / ``batchnorm_backward``),
tested against the compact kernels. The layer is ``npcnn/layers/normalization.py::BatchNormalization``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np


class BatchNormCache(NamedTuple):
    """What the backward needs from a forward.

    xhat: x's shape and dtype, the normalised input. inv_std: (C,) float64, 1 / sqrt(var + eps).
    gamma: (C,) float64, the scale used. y: the output when the forward applied a fused ReLU
    (``relu=True``), else None; the backward kernels then take dy * [y > 0] for dy.
    """

    xhat: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray
    y: Optional[np.ndarray] = None


def _rows(a):
    """a: (..., C) -> the (M, C) view (a copy only when a is not contiguous)."""
    return a.reshape(-1, a.shape[-1])


# --------------------------------------------------------------------------- NumPy twins


def batchnorm_sum_numpy(x, ws=None):
    """Per-channel sum. x: (..., C). Returns s: (C,) float64, s[c] = sum of x[..., c]."""
    return _rows(x).sum(axis=0, dtype=np.float64)


def batchnorm_sqdev_sum_numpy(x, mean, ws=None):
    """Per-channel sum of squared deviations. x: (..., C); mean: (C,).

    Returns q: (C,) float64, q[c] = sum of (x[..., c] - mean[c])^2 (the variance is q / M).
    """
    d = _rows(x) - np.asarray(mean, dtype=np.float64)  # float64 (M, C)
    return np.einsum("rc,rc->c", d, d)


def batchnorm_forward_numpy(x, mean, var, gamma, beta, epsilon, relu=False, ws=None):
    """Normalise with given statistics (batch ones in training, moving ones at inference).

    Args:
        x: (..., C). mean, var: (C,) (float64 or x's dtype). gamma, beta: (C,). epsilon: float.
        relu: apply max(., 0) to the output (a fused ReLU: the same bits as a ReLU layer after it).
    Returns:
        y: x's shape and dtype, gamma * (x - mean) / sqrt(var + epsilon) + beta (then the ReLU);
        cache: :class:`BatchNormCache` (holding y when relu).
    """
    f64 = np.float64
    inv_std = 1.0 / np.sqrt(np.asarray(var, f64) + epsilon)  # (C,)
    gamma = np.asarray(gamma, f64)
    xh = (x - np.asarray(mean, f64)) * inv_std  # float64, x's shape
    y = (gamma * xh + np.asarray(beta, f64)).astype(x.dtype)
    if relu:
        y = np.maximum(y, 0)
    return y, BatchNormCache(xh.astype(x.dtype), inv_std, gamma.copy(), y if relu else None)


def _masked(dy, cache):
    """dy, or dy * [y > 0] after a forward with a fused ReLU (the ReLU's backward)."""
    if cache.y is None:
        return dy
    return np.where(cache.y > 0, dy, 0).astype(dy.dtype, copy=False)


def batchnorm_backward_sums_numpy(dy, cache, ws=None):
    """This shard's parts of the backward's two sums.

    Args:
        dy: (..., C) upstream gradient. cache: from the forward on the same rows.
    Returns:
        sum_dy: (C,) float64, sum of dy (summed over shards: dbeta);
        sum_dy_xhat: (C,) float64, sum of dy * xhat (summed over shards: dgamma).
    """
    d = _rows(_masked(dy, cache)).astype(np.float64)
    return d.sum(axis=0), np.einsum("rc,rc->c", d, _rows(cache.xhat))


def batchnorm_backward_numpy(dy, cache, sum_dy, sum_dy_xhat, count, ws=None):
    """Input gradient from the global sums.

    Args:
        dy: (..., C). cache: from the forward on the same rows.
        sum_dy, sum_dy_xhat: (C,) the sums of :func:`batchnorm_backward_sums_numpy` over all shards.
        count: M, the number of rows over all shards.
    Returns:
        dx: dy's shape, x's dtype: gamma * inv_std / M * (M * dy - sum_dy - xhat * sum_dy_xhat).
    """
    f64 = np.float64
    dy = _masked(dy, cache)
    k = cache.gamma * cache.inv_std / count  # (C,) float64
    dx = k * (count * dy.astype(f64) - np.asarray(sum_dy, f64) - cache.xhat * np.asarray(sum_dy_xhat, f64))
    return dx.astype(cache.xhat.dtype)


# --------------------------------------------------------------------------- reference (learners)


class BatchNormGraph(NamedTuple):
    """The nodes of the step-by-step forward that its backward reads (all in x's dtype).

    xhat, xmu: (M, C); gamma, inv_std, std, var: (C,); epsilon: float; shape: x's shape.
    """

    xhat: np.ndarray
    gamma: np.ndarray
    xmu: np.ndarray
    inv_std: np.ndarray
    std: np.ndarray
    var: np.ndarray
    epsilon: float
    shape: tuple


def batchnorm_train_forward_reference(x, gamma, beta, epsilon):
    """Training-mode batch normalization, one graph node per line (for reading, not for speed).

    x: (..., C); gamma, beta: (C,). Returns y (x's shape) and a :class:`BatchNormGraph`.
    """
    x2 = x.reshape(-1, x.shape[-1])  # (M, C)
    M = x2.shape[0]
    mu = x2.sum(axis=0) / M          # 1. mean per channel                 (C,)
    xmu = x2 - mu                    # 2. centred input                    (M, C)
    sq = xmu ** 2                    # 3. squares                          (M, C)
    var = sq.sum(axis=0) / M         # 4. biased variance                  (C,)
    std = np.sqrt(var + epsilon)     # 5. standard deviation               (C,)
    inv_std = 1.0 / std              # 6. its inverse                      (C,)
    xhat = xmu * inv_std             # 7. normalised input                 (M, C)
    gx = gamma * xhat                # 8. scaled                           (M, C)
    y = gx + beta                    # 9. shifted: the output              (M, C)
    return y.reshape(x.shape), BatchNormGraph(xhat, gamma, xmu, inv_std, std, var, epsilon, x.shape)


def batchnorm_train_backward_reference(dy, graph):
    """The chain rule back through each node of :func:`batchnorm_train_forward_reference`.

    dy: x's shape. Returns dx (x's shape), dgamma (C,), dbeta (C,).
    """
    xhat, gamma, xmu, inv_std, std, var, epsilon, shape = graph
    dy = dy.reshape(xhat.shape)  # (M, C)
    M = dy.shape[0]
    dbeta = dy.sum(axis=0)                     # 9. y = gx + beta
    dgx = dy
    dgamma = (dgx * xhat).sum(axis=0)          # 8. gx = gamma * xhat
    dxhat = dgx * gamma
    dinv_std = (dxhat * xmu).sum(axis=0)       # 7. xhat = xmu * inv_std  (xmu is used twice:
    dxmu1 = dxhat * inv_std                    #    here and in node 3; its gradients add up)
    dstd = -dinv_std / std ** 2                # 6. inv_std = 1 / std
    dvar = 0.5 * dstd / np.sqrt(var + epsilon)  # 5. std = sqrt(var + eps)
    dsq = np.ones_like(xmu) * dvar / M         # 4. var = sum(sq) / M
    dxmu2 = 2 * xmu * dsq                      # 3. sq = xmu^2
    dxmu = dxmu1 + dxmu2
    dmu = -dxmu.sum(axis=0)                    # 2. xmu = x - mu  (x is used twice: here and in node 1)
    dx1 = dxmu
    dx2 = np.ones_like(xmu) * dmu / M          # 1. mu = sum(x) / M
    dx = dx1 + dx2
    return dx.reshape(shape), dgamma, dbeta


# --------------------------------------------------------------------------- Numba versions
#
# One pass per kernel over the (M, C) view. The rows are cut into T = _n_chunks(M) chunks of
# `step` rows (the same cut for every thread count); a sum kernel writes one float64 row of
# partials per chunk into a (T, C) buffer and `_add_chunks` adds them in chunk order, so the
# serial and prange drivers run the very same float operations in the same order.
#
# Buffers: the large arrays (y, xhat, dx, the chunk partials, copies of non-contiguous inputs)
# come from the workspace. The (C,) results of the four sums are fresh arrays, as the parameter
# gradients of every kernel are: they leave the shard (to be added across shards, and sum_dy /
# sum_dy_xhat become dbeta / dgamma for the optimizer), so they must outlive the next call.

from numba import njit, prange  # noqa: E402

from npcnn.kernels.workspace import buffer, run_parallel  # noqa: E402

_CHUNKS = 64        # at most this many row chunks
_CHUNK_ROWS = 256   # and at least this many rows in each (fewer chunks for small M)


def _n_chunks(M):
    """The number of row chunks for M rows: a function of M alone (never of the thread count)."""
    return max(1, min(_CHUNKS, M // _CHUNK_ROWS))


def _contiguous(a, ws, name):
    """a itself when C-contiguous, else a copy in the workspace buffer ``name``."""
    if a.flags.c_contiguous:
        return a
    out = buffer(ws, name, a.shape, a.dtype)
    out[...] = a
    return out


def _vec64(v, ws, name):
    """v: (C,) any float dtype -> a contiguous float64 (C,) (a workspace copy when v is not one)."""
    v = np.asarray(v)
    if v.dtype == np.float64 and v.flags.c_contiguous:
        return v
    out = buffer(ws, name, v.shape, np.float64)
    out[...] = v
    return out


@njit(cache=True, nogil=True)
def _add_chunks(parts, out):
    """parts (T, K, C) float64 -> out (K, C): out[k, c] = parts[0, k, c] + parts[1, k, c] + ... in order."""
    T, K, C = parts.shape
    for k in range(K):
        for c in range(C):
            out[k, c] = 0.0
    for t in range(T):
        for k in range(K):
            for c in range(C):
                out[k, c] += parts[t, k, c]


@njit(cache=True, nogil=True)
def _sum_rows(x, lo, hi, mean, centred, acc):
    """Rows lo:hi of x (M, C): acc[c] += x[r, c] (centred=False) or (x[r, c] - mean[c])^2 (True)."""
    C = x.shape[1]
    for c in range(C):
        acc[c] = 0.0
    for r in range(lo, hi):
        xr = x[r]
        if centred:
            for c in range(C):
                d = np.float64(xr[c]) - mean[c]
                acc[c] += d * d
        else:
            for c in range(C):
                acc[c] += np.float64(xr[c])


@njit(parallel=True, cache=True, nogil=True)
def _sum_par(x, mean, centred, parts):
    """x (M, C); mean (C,) float64; parts (T, 1, C) float64: chunk t's sum over rows t*step:(t+1)*step."""
    M = x.shape[0]
    T = parts.shape[0]
    step = (M + T - 1) // T
    for t in prange(T):
        _sum_rows(x, min(M, t * step), min(M, (t + 1) * step), mean, centred, parts[t, 0])


@njit(cache=True, nogil=True)
def _sum_ser(x, mean, centred, parts):
    M = x.shape[0]
    T = parts.shape[0]
    step = (M + T - 1) // T
    for t in range(T):
        _sum_rows(x, min(M, t * step), min(M, (t + 1) * step), mean, centred, parts[t, 0])


@njit(cache=True, nogil=True)
def _bwd_sums_rows(dy, xhat, y, relu, lo, hi, acc):
    """Rows lo:hi: acc[0, c] = sum g[r, c]; acc[1, c] = sum g[r, c] * xhat[r, c] (float64), where
    g = dy, or dy * [y > 0] when relu (the fused ReLU's backward)."""
    C = dy.shape[1]
    for c in range(C):
        acc[0, c] = 0.0
        acc[1, c] = 0.0
    for r in range(lo, hi):
        dr = dy[r]
        hr = xhat[r]
        if relu:
            yr = y[r]
            for c in range(C):
                d = np.float64(dr[c]) if yr[c] > 0 else 0.0
                acc[0, c] += d
                acc[1, c] += d * np.float64(hr[c])
        else:
            for c in range(C):
                d = np.float64(dr[c])
                acc[0, c] += d
                acc[1, c] += d * np.float64(hr[c])


@njit(parallel=True, cache=True, nogil=True)
def _bwd_sums_par(dy, xhat, y, relu, parts):
    """dy, xhat, y (M, C); parts (T, 2, C) float64, one pair of partial sums per chunk."""
    M = dy.shape[0]
    T = parts.shape[0]
    step = (M + T - 1) // T
    for t in prange(T):
        _bwd_sums_rows(dy, xhat, y, relu, min(M, t * step), min(M, (t + 1) * step), parts[t])


@njit(cache=True, nogil=True)
def _bwd_sums_ser(dy, xhat, y, relu, parts):
    M = dy.shape[0]
    T = parts.shape[0]
    step = (M + T - 1) // T
    for t in range(T):
        _bwd_sums_rows(dy, xhat, y, relu, min(M, t * step), min(M, (t + 1) * step), parts[t])


@njit(cache=True, nogil=True)
def _fwd_rows(x, mean, inv_std, gamma, beta, relu, xhat, y, lo, hi):
    """Rows lo:hi: xhat = (x - mean) * inv_std, y = gamma * xhat + beta (float64, rounded to x's dtype),
    then, when relu, max(y, 0) of the rounded value (as a ReLU layer after it: the same bits, -0.0 included)."""
    C = x.shape[1]
    for r in range(lo, hi):
        xr = x[r]
        hr = xhat[r]
        yr = y[r]
        if relu:
            for c in range(C):
                h = (np.float64(xr[c]) - mean[c]) * inv_std[c]
                hr[c] = h
                yr[c] = gamma[c] * h + beta[c]
                if yr[c] < 0:  # the rounded value, as the ReLU kernel sees it; keeps NaN, like np.maximum
                    yr[c] = 0
        else:
            for c in range(C):
                h = (np.float64(xr[c]) - mean[c]) * inv_std[c]
                hr[c] = h
                yr[c] = gamma[c] * h + beta[c]


@njit(parallel=True, cache=True, nogil=True)
def _fwd_par(x, mean, inv_std, gamma, beta, relu, xhat, y, chunks):
    M = x.shape[0]
    step = (M + chunks - 1) // chunks
    for t in prange(chunks):  # disjoint row ranges
        _fwd_rows(x, mean, inv_std, gamma, beta, relu, xhat, y, min(M, t * step), min(M, (t + 1) * step))


@njit(cache=True, nogil=True)
def _fwd_ser(x, mean, inv_std, gamma, beta, relu, xhat, y, chunks):
    _fwd_rows(x, mean, inv_std, gamma, beta, relu, xhat, y, 0, x.shape[0])


@njit(cache=True, nogil=True)
def _bwd_rows(dy, xhat, y, relu, k, sum_dy, sum_dy_xhat, count, dx, lo, hi):
    """Rows lo:hi: dx = k * (count * g - sum_dy - xhat * sum_dy_xhat) (float64, rounded to dx's dtype),
    with g = dy, or dy * [y > 0] when relu."""
    C = dy.shape[1]
    for r in range(lo, hi):
        dr = dy[r]
        hr = xhat[r]
        xr = dx[r]
        if relu:
            yr = y[r]
            for c in range(C):
                g = np.float64(dr[c]) if yr[c] > 0 else 0.0
                xr[c] = k[c] * (count * g - sum_dy[c] - np.float64(hr[c]) * sum_dy_xhat[c])
        else:
            for c in range(C):
                xr[c] = k[c] * (count * np.float64(dr[c]) - sum_dy[c] - np.float64(hr[c]) * sum_dy_xhat[c])


@njit(parallel=True, cache=True, nogil=True)
def _bwd_par(dy, xhat, y, relu, k, sum_dy, sum_dy_xhat, count, dx, chunks):
    M = dy.shape[0]
    step = (M + chunks - 1) // chunks
    for t in prange(chunks):
        _bwd_rows(dy, xhat, y, relu, k, sum_dy, sum_dy_xhat, count, dx, min(M, t * step), min(M, (t + 1) * step))


@njit(cache=True, nogil=True)
def _bwd_ser(dy, xhat, y, relu, k, sum_dy, sum_dy_xhat, count, dx, chunks):
    _bwd_rows(dy, xhat, y, relu, k, sum_dy, sum_dy_xhat, count, dx, 0, dy.shape[0])


def _column_sums(name, x, mean, centred, ws):
    """Shared driver of the two sum kernels: x (M, C) -> (C,) float64."""
    M, C = x.shape
    parts = buffer(ws, f"{name}.parts", (_n_chunks(M), 1, C), np.float64)
    fn = _sum_par if run_parallel(x.size, ws) else _sum_ser
    fn(x, mean, centred, parts)
    out = np.empty((1, C), np.float64)  # fresh: it leaves the shard to be reduced (see the note above)
    _add_chunks(parts, out)
    return out[0]


_NO_MEAN = np.zeros(0, np.float64)  # the plain sum's mean argument (never read)


def batchnorm_sum_numba(x, ws=None):
    """Per-channel sum (Numba); same as :func:`batchnorm_sum_numpy`."""
    x2 = _rows(_contiguous(x, ws, "batchnorm_sum.x"))
    return _column_sums("batchnorm_sum", x2, _NO_MEAN, False, ws)


def batchnorm_sqdev_sum_numba(x, mean, ws=None):
    """Per-channel sum of squared deviations (Numba); same as :func:`batchnorm_sqdev_sum_numpy`."""
    x2 = _rows(_contiguous(x, ws, "batchnorm_sqdev_sum.x"))
    return _column_sums("batchnorm_sqdev_sum", x2, _vec64(mean, ws, "batchnorm_sqdev_sum.mean"), True, ws)


def batchnorm_forward_numba(x, mean, var, gamma, beta, epsilon, relu=False, ws=None):
    """Normalise (Numba); same arguments, results and cache as :func:`batchnorm_forward_numpy`.

    y and the cache's arrays are workspace buffers.
    """
    x = _contiguous(x, ws, "batchnorm_forward.x")
    x2 = _rows(x)
    M, C = x2.shape
    inv_std = buffer(ws, "batchnorm_forward.inv_std", (C,), np.float64)
    np.add(np.asarray(var, np.float64), epsilon, out=inv_std)
    np.sqrt(inv_std, out=inv_std)
    np.divide(1.0, inv_std, out=inv_std)
    g = buffer(ws, "batchnorm_forward.gamma", (C,), np.float64)
    g[...] = gamma
    y = buffer(ws, "batchnorm_forward.y", x.shape, x.dtype)
    xhat = buffer(ws, "batchnorm_forward.xhat", x.shape, x.dtype)
    m64 = _vec64(mean, ws, "batchnorm_forward.mean")
    b64 = _vec64(beta, ws, "batchnorm_forward.beta")
    relu = bool(relu)
    if run_parallel(x.size, ws):
        _fwd_par(x2, m64, inv_std, g, b64, relu, _rows(xhat), _rows(y), _n_chunks(M))
    else:
        _fwd_ser(x2, m64, inv_std, g, b64, relu, _rows(xhat), _rows(y), 1)
    return y, BatchNormCache(xhat, inv_std, g, y if relu else None)


def _mask_rows(cache, like):
    """(relu, y as (M, C)) for the backward kernels: the fused ReLU's output, or a dummy (never read)."""
    if cache.y is None:
        return False, like
    return True, _rows(cache.y)


def batchnorm_backward_sums_numba(dy, cache, ws=None):
    """This shard's (sum_dy, sum_dy_xhat) (Numba); as :func:`batchnorm_backward_sums_numpy`."""
    dy2 = _rows(_contiguous(np.asarray(dy, cache.xhat.dtype), ws, "batchnorm_backward_sums.dy"))
    M, C = dy2.shape
    parts = buffer(ws, "batchnorm_backward_sums.parts", (_n_chunks(M), 2, C), np.float64)
    fn = _bwd_sums_par if run_parallel(dy2.size, ws) else _bwd_sums_ser
    relu, y2 = _mask_rows(cache, dy2)
    fn(dy2, _rows(cache.xhat), y2, relu, parts)
    out = np.empty((2, C), np.float64)  # fresh: parameter gradients (see the note above)
    _add_chunks(parts, out)
    return out[0], out[1]


def batchnorm_backward_numba(dy, cache, sum_dy, sum_dy_xhat, count, ws=None):
    """Input gradient (Numba); same as :func:`batchnorm_backward_numpy`. dx is a workspace buffer."""
    xhat = cache.xhat
    dy = _contiguous(np.asarray(dy, xhat.dtype), ws, "batchnorm_backward.dy")
    dy2 = _rows(dy)
    M, C = dy2.shape
    k = buffer(ws, "batchnorm_backward.k", (C,), np.float64)
    np.multiply(cache.gamma, cache.inv_std, out=k)
    k /= count
    s1 = _vec64(sum_dy, ws, "batchnorm_backward.sum_dy")
    s2 = _vec64(sum_dy_xhat, ws, "batchnorm_backward.sum_dy_xhat")
    dx = buffer(ws, "batchnorm_backward.dx", dy.shape, xhat.dtype)
    relu, y2 = _mask_rows(cache, dy2)
    args = (dy2, _rows(xhat), y2, relu, k, s1, s2, float(count), _rows(dx))
    if run_parallel(dy.size, ws):
        _bwd_par(*args, _n_chunks(M))
    else:
        _bwd_ser(*args, 1)
    return dx


KERNELS = {
    "batchnorm_sum": (batchnorm_sum_numpy, batchnorm_sum_numba),
    "batchnorm_sqdev_sum": (batchnorm_sqdev_sum_numpy, batchnorm_sqdev_sum_numba),
    "batchnorm_forward": (batchnorm_forward_numpy, batchnorm_forward_numba),
    "batchnorm_backward_sums": (batchnorm_backward_sums_numpy, batchnorm_backward_sums_numba),
    "batchnorm_backward": (batchnorm_backward_numpy, batchnorm_backward_numba),
}
