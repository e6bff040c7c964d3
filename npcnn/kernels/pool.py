"""2-D max pooling, NHWC.

Forward: each output is the maximum of its pool window; the padded border
(``'same'``) is -inf so it never wins. The position of the maximum is kept
(the *first* one in row-major window order when several tie, as PyTorch does).

Backward: the upstream gradient of each output goes to exactly that one input
position; when windows overlap (stride < pool) contributions add up::

    dx[argmax of window (n, oh, ow, c)] += dout[n, oh, ow, c]
"""

from __future__ import annotations

import numpy as np


def maxpool2d_forward_numpy(x, pool_size, strides, pads, out_hw):
    """Max-pool forward (readable twin).

    Args:
        x: (N, H, W, C). pool_size: (PH, PW). strides: (SH, SW).
        pads: (top, bottom, left, right), filled with -inf. out_hw: (OH, OW).
    Returns:
        out: (N, OH, OW, C); cache = (x.shape, argmax, ...) where argmax
        (N, OH, OW, C) int32 holds the winning offset i*PW + j inside each window.
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
    return out, (x.shape, argmax, pool_size, strides, pads, out_hw)


def maxpool2d_backward_numpy(dout, cache):
    """Max-pool backward (readable twin).

    Args:
        dout: (N, OH, OW, C) (never written to). cache: from the forward.
    Returns:
        dx: (N, H, W, C); each dout element lands on its window's argmax.
    """
    x_shape, argmax, (PH, PW), (SH, SW), (pt, pb, pl, pr), (OH, OW) = cache
    N, H, W, C = x_shape
    dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), dtype=dout.dtype)
    for i in range(PH):
        for j in range(PW):
            routed = np.where(argmax == i * PW + j, dout, 0)
            dxp[:, i : i + SH * OH : SH, j : j + SW * OW : SW, :] += routed
    return dxp[:, pt : pt + H, pl : pl + W, :]
