"""Global average and global max pooling over the spatial axes, NHWC.

Global average::

    y[n, c]  = sum_{h, w} x[n, h, w, c] / (H * W)      (summed in float64, then x's dtype)
    dx[n, h, w, c] = dy[n, c] / (H * W)                  (every cell gets the same share)

Global max::

    y[n, c]  = max_{h, w} x[n, h, w, c]
    dx[n, h, w, c] = dy[n, c] at the first maximum (row-major (h, w) order, as MaxPooling2D and
                     PyTorch route ties), 0 elsewhere

The kernels return (N, C); the layers reshape to (N, 1, 1, C) for ``keepdims=True``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class GlobalAvgPoolCache(NamedTuple):
    """x_shape: (N, H, W, C), all that global-average backward needs."""

    x_shape: tuple


class GlobalMaxPoolCache(NamedTuple):
    """x_shape: (N, H, W, C). argmax: (N, C) int64, the flat position h * W + w of each first maximum."""

    x_shape: tuple
    argmax: np.ndarray


def global_avgpool2d_forward_numpy(x, ws=None):
    """Global average pool (readable twin). x: (N, H, W, C). Returns y (N, C) in x's dtype and the cache."""
    N, H, W, C = x.shape
    y = (x.sum(axis=(1, 2), dtype=np.float64) / (H * W)).astype(x.dtype)
    return y, GlobalAvgPoolCache(x.shape)


def global_avgpool2d_backward_numpy(dy, cache, ws=None):
    """Global average backward (readable twin). dy: (N, C). Returns dx (N, H, W, C) = dy / (H * W) everywhere."""
    N, H, W, C = cache.x_shape
    g = dy / dy.dtype.type(H * W)
    return np.broadcast_to(g[:, None, None, :], cache.x_shape).copy()


def global_maxpool2d_forward_numpy(x, ws=None):
    """Global max pool (readable twin). x: (N, H, W, C). Returns y (N, C) and the cache (argmax (N, C))."""
    N, H, W, C = x.shape
    flat = x.reshape(N, H * W, C)
    argmax = flat.argmax(axis=1)  # the first maximum wins ties
    y = np.take_along_axis(flat, argmax[:, None, :], axis=1)[:, 0, :]
    return y, GlobalMaxPoolCache(x.shape, argmax.astype(np.int64))


def global_maxpool2d_backward_numpy(dy, cache, ws=None):
    """Global max backward (readable twin). dy: (N, C). Returns dx (N, H, W, C): dy at each argmax, else 0."""
    N, H, W, C = cache.x_shape
    dx = np.zeros((N, H * W, C), dy.dtype)
    np.put_along_axis(dx, cache.argmax[:, None, :], dy[:, None, :], axis=1)
    return dx.reshape(cache.x_shape)


# --------------------------------------------------------------------------- Numba versions
#
# One image per prange iteration (each output row and each dx image is written by one
# iteration). The average accumulates in float64 (its row of the "global_avgpool.acc" buffer);
# the max keeps the first maximum with a strict > in row-major (h, w) order.

from numba import njit, prange  # noqa: E402

from npcnn.kernels.workspace import buffer, run_parallel  # noqa: E402


@njit(cache=True, nogil=True)
def _gavg_fwd_image(x, n, acc, y):
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    a = acc[n]
    for c in range(C):
        a[c] = 0.0
    for h in range(H):
        for w in range(W):
            xr = x[n, h, w]
            for c in range(C):
                a[c] += xr[c]
    hw = H * W
    for c in range(C):
        y[n, c] = a[c] / hw


@njit(parallel=True, cache=True, nogil=True)
def _gavg_fwd_par(x, acc, y):
    for n in prange(x.shape[0]):
        _gavg_fwd_image(x, n, acc, y)


@njit(cache=True, nogil=True)
def _gavg_fwd_ser(x, acc, y):
    for n in range(x.shape[0]):
        _gavg_fwd_image(x, n, acc, y)


@njit(cache=True, nogil=True)
def _gavg_bwd_image(dy, n, hw, dx):
    H, W, C = dx.shape[1], dx.shape[2], dx.shape[3]
    d = dy[n]
    for h in range(H):
        for w in range(W):
            r = dx[n, h, w]
            for c in range(C):
                r[c] = d[c] / hw


@njit(parallel=True, cache=True, nogil=True)
def _gavg_bwd_par(dy, hw, dx):
    for n in prange(dx.shape[0]):
        _gavg_bwd_image(dy, n, hw, dx)


@njit(cache=True, nogil=True)
def _gavg_bwd_ser(dy, hw, dx):
    for n in range(dx.shape[0]):
        _gavg_bwd_image(dy, n, hw, dx)


@njit(cache=True, nogil=True)
def _gmax_fwd_image(x, n, y, argmax):
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    yr = y[n]
    ar = argmax[n]
    for c in range(C):
        yr[c] = x[n, 0, 0, c]
        ar[c] = 0
    for h in range(H):
        for w in range(W):
            k = h * W + w
            xr = x[n, h, w]
            for c in range(C):
                v = xr[c]
                if v > yr[c]:  # strict: a tie keeps the first position
                    yr[c] = v
                    ar[c] = k


@njit(parallel=True, cache=True, nogil=True)
def _gmax_fwd_par(x, y, argmax):
    for n in prange(x.shape[0]):
        _gmax_fwd_image(x, n, y, argmax)


@njit(cache=True, nogil=True)
def _gmax_fwd_ser(x, y, argmax):
    for n in range(x.shape[0]):
        _gmax_fwd_image(x, n, y, argmax)


@njit(cache=True, nogil=True)
def _gmax_bwd_image(dy, argmax, n, dx):
    H, W, C = dx.shape[1], dx.shape[2], dx.shape[3]
    dn = dx[n]
    for h in range(H):
        for w in range(W):
            for c in range(C):
                dn[h, w, c] = 0
    for c in range(C):
        k = argmax[n, c]
        dn[k // W, k % W, c] = dy[n, c]


@njit(parallel=True, cache=True, nogil=True)
def _gmax_bwd_par(dy, argmax, dx):
    for n in prange(dx.shape[0]):
        _gmax_bwd_image(dy, argmax, n, dx)


@njit(cache=True, nogil=True)
def _gmax_bwd_ser(dy, argmax, dx):
    for n in range(dx.shape[0]):
        _gmax_bwd_image(dy, argmax, n, dx)


def global_avgpool2d_forward_numba(x, ws=None):
    """Global average pool (Numba); same result and cache as the twin. ws: y is "global_avgpool.out",
    the float64 sums "global_avgpool.acc" (N, C)."""
    N, H, W, C = x.shape
    x = np.ascontiguousarray(x)
    acc = buffer(ws, "global_avgpool.acc", (N, C), np.float64)
    y = buffer(ws, "global_avgpool.out", (N, C), x.dtype)
    fn = _gavg_fwd_par if run_parallel(x.size, ws) else _gavg_fwd_ser
    fn(x, acc, y)
    return y, GlobalAvgPoolCache(x.shape)


def global_avgpool2d_backward_numba(dy, cache, ws=None):
    """Global average backward (Numba); same result as the twin. ws: dx is "global_avgpool.dx"."""
    N, H, W, C = cache.x_shape
    dy = np.ascontiguousarray(dy)
    dx = buffer(ws, "global_avgpool.dx", cache.x_shape, dy.dtype)
    fn = _gavg_bwd_par if run_parallel(dx.size, ws) else _gavg_bwd_ser
    fn(dy, dy.dtype.type(H * W), dx)
    return dx


def global_maxpool2d_forward_numba(x, ws=None):
    """Global max pool (Numba); same result and cache as the twin. ws: y is "global_maxpool.out", the
    argmax (N, C) int64 "global_maxpool.argmax"."""
    N, H, W, C = x.shape
    x = np.ascontiguousarray(x)
    y = buffer(ws, "global_maxpool.out", (N, C), x.dtype)
    argmax = buffer(ws, "global_maxpool.argmax", (N, C), np.int64)
    fn = _gmax_fwd_par if run_parallel(x.size, ws) else _gmax_fwd_ser
    fn(x, y, argmax)
    return y, GlobalMaxPoolCache(x.shape, argmax)


def global_maxpool2d_backward_numba(dy, cache, ws=None):
    """Global max backward (Numba); same result as the twin. ws: dx is "global_maxpool.dx"."""
    dy = np.ascontiguousarray(dy)
    dx = buffer(ws, "global_maxpool.dx", cache.x_shape, dy.dtype)
    fn = _gmax_bwd_par if run_parallel(dx.size, ws) else _gmax_bwd_ser
    fn(dy, np.ascontiguousarray(cache.argmax), dx)
    return dx


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "global_avgpool2d_forward": (global_avgpool2d_forward_numpy, global_avgpool2d_forward_numba),
    "global_avgpool2d_backward": (global_avgpool2d_backward_numpy, global_avgpool2d_backward_numba),
    "global_maxpool2d_forward": (global_maxpool2d_forward_numpy, global_maxpool2d_forward_numba),
    "global_maxpool2d_backward": (global_maxpool2d_backward_numpy, global_maxpool2d_backward_numba),
}
