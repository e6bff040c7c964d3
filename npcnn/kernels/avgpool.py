"""2-D average pooling, NHWC, with Keras's count of the cells (padding excluded).

Forward: each output is the mean of the input cells its window covers. For ``'same'`` padding
the window may hang over the border; the cells outside the image are not counted (Keras and
TensorFlow's ``avg_pool``; PyTorch's ``count_include_pad=False``)::

    y[n, oh, ow, c] = sum_{(h, w) in window(oh, ow), inside the image} x[n, h, w, c] / count(oh, ow)

``count(oh, ow)`` is the number of window cells inside the image (PH * PW away from the border).

Backward: every covered input cell receives ``dy / count`` of each window that covers it; where
windows overlap (stride < pool) the contributions add up::

    dx[n, h, w, c] = sum_{windows (oh, ow) covering (h, w)} dy[n, oh, ow, c] / count(oh, ow)

Nothing of x is needed for backward: the cache holds only the geometry.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class AvgPoolCache(NamedTuple):
    """What average-pool backward needs; made by both twins, read by both.

    x_shape: (N, H, W, C). pool_size: (PH, PW). strides: (SH, SW). pads: (top, bottom, left, right).
    out_hw: (OH, OW).
    """

    x_shape: tuple
    pool_size: tuple
    strides: tuple
    pads: tuple
    out_hw: tuple


def _counts_numpy(H, W, pool_size, strides, pads, out_hw, dtype):
    """count (OH, OW): the number of image cells under each window, in ``dtype``."""
    (PH, PW), (SH, SW), (pt, pb, pl, pr), (OH, OW) = pool_size, strides, pads, out_hw
    inside = np.pad(np.ones((H, W), dtype), ((pt, pb), (pl, pr)))
    count = np.zeros((OH, OW), dtype)
    for i in range(PH):
        for j in range(PW):
            count += inside[i : i + SH * OH : SH, j : j + SW * OW : SW]
    return count


def avgpool2d_forward_numpy(x, pool_size, strides, pads, out_hw, ws=None):
    """Average-pool forward (readable twin).

    Args:
        x: (N, H, W, C). pool_size: (PH, PW). strides: (SH, SW).
        pads: (top, bottom, left, right): cells outside the image, not counted. out_hw: (OH, OW).
        ws: ignored by the twin (the Numba version keeps "avgpool.out" there).
    Returns:
        y: (N, OH, OW, C), x's dtype; cache: an :class:`AvgPoolCache`.
    """
    N, H, W, C = x.shape
    (PH, PW), (SH, SW), (pt, pb, pl, pr), (OH, OW) = pool_size, strides, pads, out_hw
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if any(pads) else x
    total = np.zeros((N, OH, OW, C), x.dtype)
    for i in range(PH):  # window offsets in row-major order (the Numba version adds in this order too)
        for j in range(PW):
            total += xp[:, i : i + SH * OH : SH, j : j + SW * OW : SW, :]
    count = _counts_numpy(H, W, pool_size, strides, pads, out_hw, x.dtype)
    return total / count[None, :, :, None], AvgPoolCache(x.shape, pool_size, strides, pads, out_hw)


def avgpool2d_backward_numpy(dy, cache, ws=None):
    """Average-pool backward (readable twin).

    Args:
        dy: (N, OH, OW, C) (never written to). cache: the :class:`AvgPoolCache` of either twin.
        ws: ignored by the twin.
    Returns:
        dx: (N, H, W, C), dy's dtype: each window's dy / count spread over its image cells.
    """
    (N, H, W, C), (PH, PW), (SH, SW), (pt, pb, pl, pr), (OH, OW) = cache
    g = dy / _counts_numpy(H, W, cache.pool_size, cache.strides, cache.pads, cache.out_hw, dy.dtype)[None, :, :, None]
    dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), dy.dtype)
    for i in range(PH):
        for j in range(PW):
            dxp[:, i : i + SH * OH : SH, j : j + SW * OW : SW, :] += g
    return dxp[:, pt : pt + H, pl : pl + W, :]


# --------------------------------------------------------------------------- Numba versions
#
# Forward: per image, per window, the cells inside the image are summed in the twin's order
# (window offset (i, j) row-major), in x's dtype, then divided by their count: bit-identical to
# the twin. Backward: per image (prange over the batch: an image's += stay in one thread), the
# same (i, j)-outer order as the twin's slices, so again bit-identical.

from numba import njit, prange  # noqa: E402

from npcnn.kernels.workspace import buffer, run_parallel  # noqa: E402


@njit(cache=True, nogil=True)
def _window_range(o, S, P, pad, size):
    """First and one-past-last window offset whose cell o*S - pad + k lies inside [0, size)."""
    start = o * S - pad
    k0 = 0 if start >= 0 else -start
    k1 = P if start + P <= size else size - start
    return k0, k1


@njit(cache=True, nogil=True)
def _avgpool_fwd_image(x, n, PH, PW, SH, SW, pt, pl, counts, out):
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    OH, OW = out.shape[1], out.shape[2]
    for oh in range(OH):
        i0, i1 = _window_range(oh, SH, PH, pt, H)
        for ow in range(OW):
            j0, j1 = _window_range(ow, SW, PW, pl, W)
            o = out[n, oh, ow]
            for c in range(C):
                o[c] = 0
            for i in range(i0, i1):
                h = oh * SH - pt + i
                for j in range(j0, j1):
                    xr = x[n, h, ow * SW - pl + j]
                    for c in range(C):
                        o[c] += xr[c]
            count = counts[oh, ow]
            for c in range(C):
                o[c] = o[c] / count


@njit(parallel=True, cache=True, nogil=True)
def _avgpool_fwd_par(x, PH, PW, SH, SW, pt, pl, counts, out):
    for n in prange(x.shape[0]):
        _avgpool_fwd_image(x, n, PH, PW, SH, SW, pt, pl, counts, out)


@njit(cache=True, nogil=True)
def _avgpool_fwd_ser(x, PH, PW, SH, SW, pt, pl, counts, out):
    for n in range(x.shape[0]):
        _avgpool_fwd_image(x, n, PH, PW, SH, SW, pt, pl, counts, out)


@njit(cache=True, nogil=True)
def _avgpool_bwd_image(dy, n, PH, PW, SH, SW, pt, pl, counts, dx):
    """Image n of dx: zeroed, then for each window offset (i, j) and each window, dy / count added."""
    H, W, C = dx.shape[1], dx.shape[2], dx.shape[3]
    OH, OW = dy.shape[1], dy.shape[2]
    dn = dx[n]
    for h in range(H):
        for w in range(W):
            for c in range(C):
                dn[h, w, c] = 0
    for i in range(PH):
        for j in range(PW):
            for oh in range(OH):
                h = oh * SH - pt + i
                if h < 0 or h >= H:
                    continue
                for ow in range(OW):
                    w = ow * SW - pl + j
                    if w < 0 or w >= W:
                        continue
                    count = counts[oh, ow]
                    d = dy[n, oh, ow]
                    r = dn[h, w]
                    for c in range(C):
                        r[c] += d[c] / count


@njit(parallel=True, cache=True, nogil=True)
def _avgpool_bwd_par(dy, PH, PW, SH, SW, pt, pl, counts, dx):
    for n in prange(dx.shape[0]):  # one image per iteration: its += never meet another thread's
        _avgpool_bwd_image(dy, n, PH, PW, SH, SW, pt, pl, counts, dx)


@njit(cache=True, nogil=True)
def _avgpool_bwd_ser(dy, PH, PW, SH, SW, pt, pl, counts, dx):
    for n in range(dx.shape[0]):
        _avgpool_bwd_image(dy, n, PH, PW, SH, SW, pt, pl, counts, dx)


def avgpool2d_forward_numba(x, pool_size, strides, pads, out_hw, ws=None):
    """Average-pool forward (Numba); same arguments, result and cache as the twin.

    With a ``ws`` the output is its buffer "avgpool.out" (overwritten by the next call with the
    same ``ws``); with None a fresh array.
    """
    N, H, W, C = x.shape
    (PH, PW), (SH, SW), (pt, _, pl, _), (OH, OW) = pool_size, strides, pads, out_hw
    x = np.ascontiguousarray(x)
    out = buffer(ws, "avgpool.out", (N, OH, OW, C), x.dtype)
    counts = _counts_numpy(H, W, pool_size, strides, pads, out_hw, x.dtype)  # (OH, OW), small
    fn = _avgpool_fwd_par if run_parallel(x.size, ws) else _avgpool_fwd_ser
    fn(x, PH, PW, SH, SW, pt, pl, counts, out)
    return out, AvgPoolCache(x.shape, tuple(pool_size), tuple(strides), tuple(pads), tuple(out_hw))


def avgpool2d_backward_numba(dy, cache, ws=None):
    """Average-pool backward (Numba); same arguments and result as the twin. ``dy`` is never written.

    With a ``ws``, dx (N, H, W, C) is its buffer "avgpool.dx"; with None a fresh array.
    """
    x_shape, (PH, PW), (SH, SW), (pt, pb, pl, pr), out_hw = cache
    dy = np.ascontiguousarray(dy)
    dx = buffer(ws, "avgpool.dx", x_shape, dy.dtype)
    counts = _counts_numpy(x_shape[1], x_shape[2], cache.pool_size, cache.strides, cache.pads, out_hw, dy.dtype)
    fn = _avgpool_bwd_par if run_parallel(dx.size, ws) else _avgpool_bwd_ser
    fn(dy, PH, PW, SH, SW, pt, pl, counts, dx)
    return dx


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "avgpool2d_forward": (avgpool2d_forward_numpy, avgpool2d_forward_numba),
    "avgpool2d_backward": (avgpool2d_backward_numpy, avgpool2d_backward_numba),
}
