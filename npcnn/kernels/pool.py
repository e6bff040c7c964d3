"""2-D max pooling, NHWC.

Forward: each output is the maximum of its pool window; the padded border
(``'same'``) is -inf so it never wins. The position of the maximum is kept
(the *first* one in row-major window order when several tie, as PyTorch does).

Backward: the upstream gradient of each output goes to exactly that one input
position; when windows overlap (stride < pool) contributions add up::

    dx[argmax of window (n, oh, ow, c)] += dout[n, oh, ow, c]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class PoolCache(NamedTuple):
    """What max-pool backward needs; made by both twins, read by both.

    x_shape: (N, H, W, C). argmax: (N, OH, OW, C) int32, the winning offset i*PW + j inside each
    window. pool_size: (PH, PW). strides: (SH, SW). pads: (top, bottom, left, right). out_hw: (OH, OW).
    """

    x_shape: tuple
    argmax: np.ndarray
    pool_size: tuple
    strides: tuple
    pads: tuple
    out_hw: tuple


def maxpool2d_forward_numpy(x, pool_size, strides, pads, out_hw, ws=None):
    """Max-pool forward (readable twin).

    Args:
        x: (N, H, W, C). pool_size: (PH, PW). strides: (SH, SW).
        pads: (top, bottom, left, right), filled with -inf. out_hw: (OH, OW).
        ws: ignored by the twin (the Numba version keeps "pool.out" and "pool.argmax" there).
    Returns:
        y: (N, OH, OW, C); cache: a :class:`PoolCache` (argmax (N, OH, OW, C) int32).
    """
    N, H, W, C = x.shape
    PH, PW = pool_size
    SH, SW = strides
    OH, OW = out_hw
    pt, pb, pl, pr = pads
    xp = x
    if any(pads):
        xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-np.inf)
    windows = np.empty((PH * PW, N, OH, OW, C), dtype=x.dtype)
    for i in range(PH):
        for j in range(PW):
            windows[i * PW + j] = xp[:, i : i + SH * OH : SH, j : j + SW * OW : SW, :]
    argmax = windows.argmax(axis=0).astype(np.int32)  # first maximum wins ties
    out = np.take_along_axis(windows, argmax[None].astype(np.intp), axis=0)[0]
    return out, PoolCache(x.shape, argmax, pool_size, strides, pads, out_hw)


def maxpool2d_backward_numpy(dy, cache, ws=None):
    """Max-pool backward (readable twin).

    Args:
        dy: (N, OH, OW, C) (never written to). cache: the :class:`PoolCache` of either twin.
        ws: ignored by the twin.
    Returns:
        dx: (N, H, W, C); each dy element lands on its window's argmax.
    """
    x_shape, argmax, (PH, PW), (SH, SW), (pt, pb, pl, pr), (OH, OW) = cache
    N, H, W, C = x_shape
    dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), dtype=dy.dtype)
    for i in range(PH):
        for j in range(PW):
            routed = np.where(argmax == i * PW + j, dy, 0)
            dxp[:, i : i + SH * OH : SH, j : j + SW * OW : SW, :] += routed
    return dxp[:, pt : pt + H, pl : pl + W, :]


# --------------------------------------------------------------------------- Numba versions
#
# Forward: one pass per window, channels innermost (contiguous in NHWC); a strict ``>``
# keeps the first maximum in row-major window order; outside the image counts as -inf.
# Backward: parallel over the batch, so each image's += stay in one thread.

from numba import njit, prange  # noqa: E402

from npcnn.kernels.workspace import buffer, run_parallel  # noqa: E402


@njit(cache=True, nogil=True)
def _maxpool_fwd_image(x, n, PH, PW, SH, SW, pt, pl, out, argmax):
    """Image n: every window's maximum and the offset i*PW + j of its first occurrence."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    OH, OW = out.shape[1], out.shape[2]
    for oh in range(OH):
        for ow in range(OW):
            h0 = oh * SH - pt
            w0 = ow * SW - pl
            o = out[n, oh, ow]
            a = argmax[n, oh, ow]
            for c in range(C):
                o[c] = -np.inf  # the padding: never wins
                a[c] = 0
            for i in range(PH):
                h = h0 + i
                if h < 0 or h >= H:
                    continue
                for j in range(PW):
                    w = w0 + j
                    if w < 0 or w >= W:
                        continue
                    k = np.int32(i * PW + j)
                    xr = x[n, h, w]
                    for c in range(C):  # branch-free selects: vectorises over channels
                        v = xr[c]
                        ov = o[c]
                        gt = v > ov  # strict: a tie keeps the earlier (first) position
                        o[c] = v if gt else ov
                        a[c] = k if gt else a[c]


@njit(cache=True, nogil=True)
def _maxpool2x2_fwd_image(x, n, out, argmax):
    """Image n for the common 2x2 pool with stride 2 and no padding: the same results as
    _maxpool_fwd_image (the same strict comparisons from -inf, in the same order), with the four
    window rows held in registers instead of read back from out and argmax (measured 6x faster)."""
    C = x.shape[3]
    OH, OW = out.shape[1], out.shape[2]
    for oh in range(OH):
        for ow in range(OW):
            x00 = x[n, 2 * oh, 2 * ow]
            x01 = x[n, 2 * oh, 2 * ow + 1]
            x10 = x[n, 2 * oh + 1, 2 * ow]
            x11 = x[n, 2 * oh + 1, 2 * ow + 1]
            o = out[n, oh, ow]
            a = argmax[n, oh, ow]
            for c in range(C):
                m = -np.inf
                k = 0
                if x00[c] > m:
                    m = x00[c]
                if x01[c] > m:
                    m = x01[c]
                    k = 1
                if x10[c] > m:
                    m = x10[c]
                    k = 2
                if x11[c] > m:
                    m = x11[c]
                    k = 3
                o[c] = m
                a[c] = k


@njit(cache=True, nogil=True)
def _is_2x2_tiling(x, PH, PW, SH, SW, pt, pl, out):
    """2x2 windows with stride 2, no padding, none past the edge: _maxpool2x2_fwd_image applies."""
    return (PH == 2 and PW == 2 and SH == 2 and SW == 2 and pt == 0 and pl == 0
            and 2 * out.shape[1] <= x.shape[1] and 2 * out.shape[2] <= x.shape[2])


@njit(parallel=True, cache=True, nogil=True)
def _maxpool_fwd_par(x, PH, PW, SH, SW, pt, pl, out, argmax):
    fast = _is_2x2_tiling(x, PH, PW, SH, SW, pt, pl, out)
    for n in prange(x.shape[0]):
        if fast:
            _maxpool2x2_fwd_image(x, n, out, argmax)
        else:
            _maxpool_fwd_image(x, n, PH, PW, SH, SW, pt, pl, out, argmax)


@njit(cache=True, nogil=True)
def _maxpool_fwd_ser(x, PH, PW, SH, SW, pt, pl, out, argmax):
    fast = _is_2x2_tiling(x, PH, PW, SH, SW, pt, pl, out)
    for n in range(x.shape[0]):
        if fast:
            _maxpool2x2_fwd_image(x, n, out, argmax)
        else:
            _maxpool_fwd_image(x, n, PH, PW, SH, SW, pt, pl, out, argmax)


@njit(cache=True, nogil=True)
def _maxpool_bwd_image(dout, argmax, n, PW, SH, SW, pt, pl, dx):
    """Image n of dx: zeroed, then each dout element added at its window's argmax."""
    H, W, C = dx.shape[1], dx.shape[2], dx.shape[3]
    OH, OW = dout.shape[1], dout.shape[2]
    dn = dx[n]
    for h in range(H):
        for w in range(W):
            for c in range(C):
                dn[h, w, c] = 0
    for oh in range(OH):
        for ow in range(OW):
            d = dout[n, oh, ow]
            a = argmax[n, oh, ow]
            for c in range(C):
                k = a[c]
                h = oh * SH - pt + k // PW
                w = ow * SW - pl + k % PW
                if 0 <= h < H and 0 <= w < W:
                    dn[h, w, c] += d[c]


@njit(cache=True, nogil=True)
def _maxpool_bwd_tiled_image(dout, argmax, n, PH, PW, dx):
    """Image n of dx when the windows tile the image (stride = pool, no padding): one write per
    element, no zeroing pass first; rows and columns past the last window are zeroed."""
    H, W, C = dx.shape[1], dx.shape[2], dx.shape[3]
    OH, OW = dout.shape[1], dout.shape[2]
    dn = dx[n]
    for oh in range(OH):
        for i in range(PH):
            row = dn[oh * PH + i]
            for ow in range(OW):
                d = dout[n, oh, ow]
                a = argmax[n, oh, ow]
                for j in range(PW):
                    k = i * PW + j
                    r = row[ow * PW + j]
                    for c in range(C):
                        r[c] = d[c] if a[c] == k else 0
            for w in range(OW * PW, W):
                for c in range(C):
                    row[w, c] = 0
    for h in range(OH * PH, H):
        for w in range(W):
            for c in range(C):
                dn[h, w, c] = 0


@njit(parallel=True, cache=True, nogil=True)
def _maxpool_bwd_par(dout, argmax, PW, SH, SW, pt, pl, dx):
    for n in prange(dx.shape[0]):  # one image per iteration: its += never meet another thread's
        _maxpool_bwd_image(dout, argmax, n, PW, SH, SW, pt, pl, dx)


@njit(cache=True, nogil=True)
def _maxpool_bwd_ser(dout, argmax, PW, SH, SW, pt, pl, dx):
    for n in range(dx.shape[0]):
        _maxpool_bwd_image(dout, argmax, n, PW, SH, SW, pt, pl, dx)


@njit(parallel=True, cache=True, nogil=True)
def _maxpool_bwd_tiled_par(dout, argmax, PH, PW, dx):
    for n in prange(dx.shape[0]):  # one image per iteration
        _maxpool_bwd_tiled_image(dout, argmax, n, PH, PW, dx)


@njit(cache=True, nogil=True)
def _maxpool_bwd_tiled_ser(dout, argmax, PH, PW, dx):
    for n in range(dx.shape[0]):
        _maxpool_bwd_tiled_image(dout, argmax, n, PH, PW, dx)


def maxpool2d_forward_numba(x, pool_size, strides, pads, out_hw, ws=None):
    """Max-pool forward (Numba); same arguments, result and cache as the twin.

    With a ``ws`` the output is its buffer "pool.out" and the cache's int32 argmax its buffer
    "pool.argmax", both overwritten by the next call with the same ``ws``; with None, fresh arrays.
    """
    N, H, W, C = x.shape
    PH, PW = pool_size
    SH, SW = strides
    OH, OW = out_hw
    pt, pb, pl, pr = pads
    x = np.ascontiguousarray(x)
    shape = (N, OH, OW, C)
    out = buffer(ws, "pool.out", shape, x.dtype)
    argmax = buffer(ws, "pool.argmax", shape, np.int32)
    fn = _maxpool_fwd_par if run_parallel(x.size, ws) else _maxpool_fwd_ser
    fn(x, PH, PW, SH, SW, pt, pl, out, argmax)
    return out, PoolCache(x.shape, argmax, pool_size, strides, pads, out_hw)


def maxpool2d_backward_numba(dy, cache, ws=None):
    """Max-pool backward (Numba); same arguments and result as the twin. ``dy`` is never written.

    With a ``ws``, dx (N, H, W, C) is its buffer "pool.dx" (overwritten by the next call with
    the same ``ws``); with None a fresh array.
    """
    x_shape, argmax, (PH, PW), (SH, SW), (pt, pb, pl, pr), (OH, OW) = cache
    dx = buffer(ws, "pool.dx", x_shape, dy.dtype)
    dy = np.ascontiguousarray(dy)
    if (SH, SW) == (PH, PW) and not any((pt, pb, pl, pr)):  # windows tile the image ('valid' 2x2 / 2)
        fn = _maxpool_bwd_tiled_par if run_parallel(dx.size, ws) else _maxpool_bwd_tiled_ser
        fn(dy, argmax, PH, PW, dx)
    else:
        fn = _maxpool_bwd_par if run_parallel(dx.size, ws) else _maxpool_bwd_ser
        fn(dy, argmax, PW, SH, SW, pt, pl, dx)
    return dx


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "maxpool2d_forward": (maxpool2d_forward_numpy, maxpool2d_forward_numba),
    "maxpool2d_backward": (maxpool2d_backward_numpy, maxpool2d_backward_numba),
}
