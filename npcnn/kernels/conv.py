"""2-D convolution (cross-correlation, as Keras computes it), NHWC, via im2col + one GEMM.

Forward (the layer's math)::

    cols = im2col(x)                          (N*OH*OW, KH*KW*C)
    out  = cols @ K + b                       K = kernel.reshape(KH*KW*C, F)

Backward (chain rule through the same three steps)::

    dK    = cols^T @ dout                     (KH*KW*C, F)   -> reshape to kernel.shape
    db    = sum over rows of dout             (F,)
    dcols = dout @ K^T                        (N*OH*OW, KH*KW*C)
    dx    = col2im(dcols)                     (N, H, W, C)   (the adjoint of im2col)
"""

from __future__ import annotations

import numpy as np

from npcnn.kernels.im2col import col2im_numpy, im2col_numpy


def conv2d_forward_numpy(x, kernel, bias, strides, pads, out_hw):
    """Convolution forward (readable twin).

    Args:
        x: (N, H, W, C). kernel: (KH, KW, C, F). bias: (F,) or None.
        strides: (SH, SW). pads: (top, bottom, left, right). out_hw: (OH, OW).
    Returns:
        out: (N, OH, OW, F); cache: what :func:`conv2d_backward_numpy` needs.
    """
    N = x.shape[0]
    KH, KW, C, F = kernel.shape
    OH, OW = out_hw
    cols = im2col_numpy(x, (KH, KW), strides, pads, out_hw)
    out = cols @ kernel.reshape(KH * KW * C, F)
    if bias is not None:
        out += bias
    cache = (x.shape, cols, kernel, strides, pads, out_hw)
    return out.reshape(N, OH, OW, F), cache


def conv2d_backward_numpy(dout, cache, need_dx=True):
    """Convolution backward (readable twin).

    Args:
        dout: (N, OH, OW, F) upstream gradient (never written to).
        cache: from :func:`conv2d_forward_numpy`.
        need_dx: skip the col2im when the input gradient is not needed (first layer).
    Returns:
        dx (N, H, W, C) or None, dkernel (KH, KW, C, F), dbias (F,).
    """
    x_shape, cols, kernel, strides, pads, out_hw = cache
    KH, KW, C, F = kernel.shape
    d2 = dout.reshape(-1, F)
    dkernel = (cols.T @ d2).reshape(kernel.shape)
    dbias = d2.sum(axis=0)
    dx = None
    if need_dx:
        dcols = d2 @ kernel.reshape(KH * KW * C, F).T
        dx = col2im_numpy(dcols, x_shape, (KH, KW), strides, pads, out_hw)
    return dx, dkernel, dbias
