"""im2col / col2im for channels-last (NHWC) tensors.

im2col unrolls every kh x kw x C receptive field of the (padded) input into one
row, so a convolution becomes one matrix product::

    cols[n*OH*OW + oh*OW + ow, (i*KW + j)*C + c] = xpad[n, oh*sh + i, ow*sw + j, c]

The column order (i, j, c) matches a Keras kernel of shape (KH, KW, C, F)
reshaped to (KH*KW*C, F), so ``out = cols @ kernel.reshape(-1, F)``.

col2im is the *adjoint* of im2col, not its inverse: where windows overlap
(stride < kernel) the contributions of every window are summed. This is exactly
what the chain rule needs: dx = im2col^T(dcols). Tests check the identity
<im2col(x), c> == <x, col2im(c)>.
"""

from __future__ import annotations

import math

import numpy as np


def normalize_padding(padding):
    """Return 'valid' or 'same' from a user string, or raise ValueError."""
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        from npcnn.utils import did_you_mean

        raise ValueError(
            f"padding must be 'valid' or 'same', got {padding!r}"
            + did_you_mean(padding, ("valid", "same"))
        )
    return padding.lower()


def output_size(size: int, k: int, stride: int, padding: str):
    """Output length and (pad_before, pad_after) along one spatial axis, as Keras/TF computes them.

    'valid': out = floor((size - k) / stride) + 1, no padding.
    'same':  out = ceil(size / stride); the padding needed is split with the
             extra element after (bottom/right), as TensorFlow does.
    """
    if padding == "valid":
        out = (size - k) // stride + 1 if size >= k else 0
        return out, 0, 0
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def conv_geometry(x_shape, kernel_size, strides, padding):
    """Geometry of a sliding window over an NHWC input.

    Returns ``(OH, OW, pads)`` with ``pads = (top, bottom, left, right)``.
    """
    _, H, W, _ = x_shape
    kh, kw = kernel_size
    sh, sw = strides
    oh, pt, pb = output_size(H, kh, sh, padding)
    ow, pl, pr = output_size(W, kw, sw, padding)
    return oh, ow, (pt, pb, pl, pr)


def im2col_numpy(x, kernel_size, strides, pads, out_hw, ws=None):
    """Unroll windows into rows (readable NumPy twin).

    Args:
        x: (N, H, W, C) input.
        kernel_size: (KH, KW). strides: (SH, SW).
        pads: (top, bottom, left, right) zero padding.
        out_hw: (OH, OW) output size (from :func:`conv_geometry`).
        ws: ignored by the twin (the Numba version keeps "im2col.cols" there).
    Returns:
        cols: (N*OH*OW, KH*KW*C), same dtype as x.
    """
    N, H, W, C = x.shape
    KH, KW = kernel_size
    SH, SW = strides
    OH, OW = out_hw
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if any(pads) else x
    cols = np.empty((N, OH, OW, KH, KW, C), dtype=x.dtype)
    # One strided copy per kernel offset (i, j): KH*KW copies in all (Saito's algorithm).
    for i in range(KH):
        for j in range(KW):
            cols[:, :, :, i, j, :] = xp[:, i : i + SH * OH : SH, j : j + SW * OW : SW, :]
    return cols.reshape(N * OH * OW, KH * KW * C)


def col2im_numpy(cols, x_shape, kernel_size, strides, pads, out_hw, ws=None):
    """Adjoint of :func:`im2col_numpy`: scatter-add rows back into an image (readable twin).

    Args:
        cols: (N*OH*OW, KH*KW*C).
        x_shape: (N, H, W, C) of the image to rebuild.
        kernel_size, strides, pads, out_hw: as for :func:`im2col_numpy`.
        ws: ignored by the twin (the Numba version keeps "col2im.dx" there).
    Returns:
        dx: (N, H, W, C), same dtype as cols; overlapping windows are summed.
    """
    N, H, W, C = x_shape
    KH, KW = kernel_size
    SH, SW = strides
    OH, OW = out_hw
    pt, pb, pl, pr = pads
    cols6 = cols.reshape(N, OH, OW, KH, KW, C)
    dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), dtype=cols.dtype)
    for i in range(KH):
        for j in range(KW):
            dxp[:, i : i + SH * OH : SH, j : j + SW * OW : SW, :] += cols6[:, :, :, i, j, :]
    return dxp[:, pt : pt + H, pl : pl + W, :]


# --------------------------------------------------------------------------- Numba versions
#
# Same contract as the twins above. The loops run over the batch with ``prange``: every
# image owns its rows of ``cols`` and its slice of ``dx``, so no two threads ever write one
# element. Inside, each (window, kernel offset) pair copies (im2col) or adds (col2im) the C
# contiguous channels of one pixel, indexed directly so that LLVM vectorises the channel loop.

from numba import njit, prange  # noqa: E402

from npcnn.kernels.workspace import buffer, run_parallel  # noqa: E402


@njit(cache=True, nogil=True)
def _im2col_image(x, x3, n, KH, KW, SH, SW, pt, pl, OH, OW, cols):
    """Rows of image n: cols[(n*OH + oh)*OW + ow, (i*KW + j)*C + c] = xpad[n, oh*SH + i, ow*SW + j, c].

    x: (N, H, W, C); x3: the same memory as (N, H, W*C). A window wholly inside the image takes
    the fast path with no bounds tests: direct indexing with the channel loop innermost, which
    LLVM vectorises (measured 5x faster than copying through 1-D views for 32-64 channels), or,
    for fewer than 8 channels, one contiguous run of KW*C values per kernel row. Windows that
    overlap the zero padding test every pixel.
    """
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    KWC = KW * C
    for oh in range(OH):
        h0 = oh * SH - pt
        for ow in range(OW):
            w0 = ow * SW - pl
            r = (n * OH + oh) * OW + ow
            if h0 >= 0 and h0 + KH <= H and w0 >= 0 and w0 + KW <= W:
                if C < 8:
                    cr = cols[r]
                    src = w0 * C
                    for i in range(KH):
                        xr = x3[n, h0 + i]
                        base = i * KWC
                        for k in range(KWC):
                            cr[base + k] = xr[src + k]
                else:
                    for i in range(KH):
                        for j in range(KW):
                            base = (i * KW + j) * C
                            for c in range(C):
                                cols[r, base + c] = x[n, h0 + i, w0 + j, c]
            else:
                for i in range(KH):
                    h = h0 + i
                    for j in range(KW):
                        w = w0 + j
                        base = (i * KW + j) * C
                        if 0 <= h < H and 0 <= w < W:
                            for c in range(C):
                                cols[r, base + c] = x[n, h, w, c]
                        else:
                            for c in range(C):
                                cols[r, base + c] = 0


@njit(parallel=True, cache=True, nogil=True)
def _im2col_par(x, KH, KW, SH, SW, pt, pl, OH, OW, cols):
    x3 = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
    for n in prange(x.shape[0]):  # each image writes its own rows of cols
        _im2col_image(x, x3, n, KH, KW, SH, SW, pt, pl, OH, OW, cols)
    return cols


@njit(cache=True, nogil=True)
def _im2col_ser(x, KH, KW, SH, SW, pt, pl, OH, OW, cols):
    x3 = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
    for n in range(x.shape[0]):
        _im2col_image(x, x3, n, KH, KW, SH, SW, pt, pl, OH, OW, cols)
    return cols


@njit(cache=True, nogil=True)
def _col2im_image(cols, n, KH, KW, SH, SW, pt, pl, OH, OW, dx):
    """Image n of dx (N, H, W, C): zeroed, then every window's row added back (the adjoint of
    _im2col_image, with the same fast path for windows wholly inside the image)."""
    H, W, C = dx.shape[1], dx.shape[2], dx.shape[3]
    for h in range(H):
        for w in range(W):
            for c in range(C):
                dx[n, h, w, c] = 0
    for oh in range(OH):
        h0 = oh * SH - pt
        for ow in range(OW):
            w0 = ow * SW - pl
            r = (n * OH + oh) * OW + ow
            if h0 >= 0 and h0 + KH <= H and w0 >= 0 and w0 + KW <= W:
                for i in range(KH):
                    for j in range(KW):
                        base = (i * KW + j) * C
                        for c in range(C):
                            dx[n, h0 + i, w0 + j, c] += cols[r, base + c]
            else:
                for i in range(KH):
                    h = h0 + i
                    for j in range(KW):
                        w = w0 + j
                        if 0 <= h < H and 0 <= w < W:
                            base = (i * KW + j) * C
                            for c in range(C):
                                dx[n, h, w, c] += cols[r, base + c]


@njit(parallel=True, cache=True, nogil=True)
def _col2im_par(cols, KH, KW, SH, SW, pt, pl, OH, OW, dx):
    for n in prange(dx.shape[0]):  # one image per iteration: its += never meet another thread's
        _col2im_image(cols, n, KH, KW, SH, SW, pt, pl, OH, OW, dx)
    return dx


@njit(cache=True, nogil=True)
def _col2im_ser(cols, KH, KW, SH, SW, pt, pl, OH, OW, dx):
    for n in range(dx.shape[0]):
        _col2im_image(cols, n, KH, KW, SH, SW, pt, pl, OH, OW, dx)
    return dx


def im2col_numba(x, kernel_size, strides, pads, out_hw, ws=None):
    """Numba im2col; same arguments and result as :func:`im2col_numpy`.

    With a ``ws`` the (N*OH*OW, KH*KW*C) result is its buffer "im2col.cols", overwritten by the
    next call with the same ``ws``; with None a fresh array.
    """
    N, H, W, C = x.shape
    KH, KW = kernel_size
    SH, SW = strides
    OH, OW = out_hw
    pt, _, pl, _ = pads
    x = np.ascontiguousarray(x)
    cols = buffer(ws, "im2col.cols", (N * OH * OW, KH * KW * C), x.dtype)
    fn = _im2col_par if run_parallel(cols.size, ws) else _im2col_ser
    return fn(x, KH, KW, SH, SW, pt, pl, OH, OW, cols)


def col2im_numba(cols, x_shape, kernel_size, strides, pads, out_hw, ws=None):
    """Numba col2im (the adjoint of im2col); same arguments and result as :func:`col2im_numpy`.

    With a ``ws`` the (N, H, W, C) result is its buffer "col2im.dx" (every element written),
    overwritten by the next call with the same ``ws``; with None a fresh array.
    """
    N, H, W, C = x_shape
    KH, KW = kernel_size
    SH, SW = strides
    OH, OW = out_hw
    pt, _, pl, _ = pads
    dx = buffer(ws, "col2im.dx", (N, H, W, C), cols.dtype)
    fn = _col2im_par if run_parallel(cols.size, ws) else _col2im_ser
    return fn(np.ascontiguousarray(cols), KH, KW, SH, SW, pt, pl, OH, OW, dx)


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "im2col": (im2col_numpy, im2col_numba),
    "col2im": (col2im_numpy, col2im_numba),
}
