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


def im2col_numpy(x, kernel_size, strides, pads, out_hw):
    """Unroll windows into rows (readable NumPy twin).

    Args:
        x: (N, H, W, C) input.
        kernel_size: (KH, KW). strides: (SH, SW).
        pads: (top, bottom, left, right) zero padding.
        out_hw: (OH, OW) output size (from :func:`conv_geometry`).
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


def col2im_numpy(cols, x_shape, kernel_size, strides, pads, out_hw):
    """Adjoint of :func:`im2col_numpy`: scatter-add rows back into an image (readable twin).

    Args:
        cols: (N*OH*OW, KH*KW*C).
        x_shape: (N, H, W, C) of the image to rebuild.
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
