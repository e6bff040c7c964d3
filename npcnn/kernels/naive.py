"""Loops first: Conv2D and MaxPooling2D forward and backward written as plain Python loops.

A teaching reference in the style of cs231n's ``conv_forward_naive`` / ``conv_backward_naive``, NHWC,
with strides and explicit padding: the step between the maths (docs/conv2d.md, docs/maxpool2d.md) and
the im2col kernels (:mod:`npcnn.kernels.conv`, :mod:`npcnn.kernels.pool`). Every output element is one
iteration of a loop you can follow with a pencil; the backward passes are the same loops, reading
``dout`` and *adding* into ``dx`` (a pixel that several windows cover gets a share from each).

These functions are **not** registered kernels (nothing dispatches to them, they take no ``ws``, and
they are slow: seconds for one CIFAR-10 batch). ``tests/test_learners_kit.py`` proves they agree with
the im2col twins on random non-square shapes with strides and padding.

Shapes: x (N, H, W, C); kernel (KH, KW, C, F); bias (F,) or None; strides (SH, SW);
pads (top, bottom, left, right); out (N, OH, OW, F) with OH = (H + top + bottom - KH) // SH + 1.
"""

from __future__ import annotations

import numpy as np


def _out_size(size, window, stride, before, after):
    return (size + before + after - window) // stride + 1


def conv2d_forward_naive(x, kernel, bias, strides=(1, 1), pads=(0, 0, 0, 0)):
    """Convolution (cross-correlation, as Keras) with loops over every output element.

    out[n, oh, ow, f] = bias[f] + sum_{i, j, c} xpad[n, oh*SH + i, ow*SW + j, c] * kernel[i, j, c, f]

    Args:
        x: (N, H, W, C). kernel: (KH, KW, C, F). bias: (F,) or None.
        strides: (SH, SW). pads: (top, bottom, left, right) zeros around x.
    Returns:
        out: (N, OH, OW, F); cache: (x, kernel, bias, strides, pads) for the backward.
    """
    N, H, W, C = x.shape
    KH, KW, _, F = kernel.shape
    SH, SW = strides
    pt, pb, pl, pr = pads
    OH, OW = _out_size(H, KH, SH, pt, pb), _out_size(W, KW, SW, pl, pr)
    xpad = np.zeros((N, H + pt + pb, W + pl + pr, C), dtype=x.dtype)
    xpad[:, pt:pt + H, pl:pl + W, :] = x
    out = np.zeros((N, OH, OW, F), dtype=x.dtype)
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                h0, w0 = oh * SH, ow * SW
                window = xpad[n, h0:h0 + KH, w0:w0 + KW, :]          # (KH, KW, C): one receptive field
                for f in range(F):
                    out[n, oh, ow, f] = np.sum(window * kernel[:, :, :, f])
                    if bias is not None:
                        out[n, oh, ow, f] += bias[f]
    return out, (x, kernel, bias, strides, pads)


def conv2d_backward_naive(dout, cache):
    """The same loops backwards: each output element sends its gradient to what produced it.

    Since out[n, oh, ow, f] = b[f] + sum window * kernel[..., f], for each (n, oh, ow, f) with g = dout[...]:

        dbias[f]           += g
        dkernel[..., f]    += g * window          (the receptive field it saw)
        dxpad[window area] += g * kernel[..., f]  (overlapping windows add up)

    Args:
        dout: (N, OH, OW, F) upstream gradient (not written). cache: from :func:`conv2d_forward_naive`.
    Returns:
        dx (N, H, W, C), dkernel (KH, KW, C, F), dbias (F,).
    """
    x, kernel, bias, (SH, SW), (pt, pb, pl, pr) = cache
    N, H, W, C = x.shape
    KH, KW, _, F = kernel.shape
    _, OH, OW, _ = dout.shape
    xpad = np.zeros((N, H + pt + pb, W + pl + pr, C), dtype=x.dtype)
    xpad[:, pt:pt + H, pl:pl + W, :] = x
    dxpad = np.zeros_like(xpad)
    dkernel = np.zeros_like(kernel)
    dbias = np.zeros(F, dtype=dout.dtype)
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                h0, w0 = oh * SH, ow * SW
                window = xpad[n, h0:h0 + KH, w0:w0 + KW, :]
                for f in range(F):
                    g = dout[n, oh, ow, f]
                    dbias[f] += g
                    dkernel[:, :, :, f] += g * window
                    dxpad[n, h0:h0 + KH, w0:w0 + KW, :] += g * kernel[:, :, :, f]
    dx = dxpad[:, pt:pt + H, pl:pl + W, :]                      # the padding's gradient is dropped
    return dx, dkernel, dbias


def maxpool2d_forward_naive(x, pool_size, strides=None, pads=(0, 0, 0, 0)):
    """Max pooling with loops: out[n, oh, ow, c] = max of the window; padding is -inf (never wins).

    Args:
        x: (N, H, W, C). pool_size: (PH, PW). strides: (SH, SW) (default: the pool size).
        pads: (top, bottom, left, right) of -inf around x.
    Returns:
        out: (N, OH, OW, C); cache: (x, pool_size, strides, pads) for the backward.
    """
    N, H, W, C = x.shape
    PH, PW = pool_size
    SH, SW = strides if strides is not None else pool_size
    pt, pb, pl, pr = pads
    OH, OW = _out_size(H, PH, SH, pt, pb), _out_size(W, PW, SW, pl, pr)
    xpad = np.full((N, H + pt + pb, W + pl + pr, C), -np.inf, dtype=x.dtype)
    xpad[:, pt:pt + H, pl:pl + W, :] = x
    out = np.zeros((N, OH, OW, C), dtype=x.dtype)
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    window = xpad[n, oh * SH:oh * SH + PH, ow * SW:ow * SW + PW, c]
                    out[n, oh, ow, c] = window.max()
    return out, (x, pool_size, (SH, SW), pads)


def maxpool2d_backward_naive(dout, cache):
    """Each dout element goes to the position of its window's maximum (the first one on ties).

    Args:
        dout: (N, OH, OW, C) (not written). cache: from :func:`maxpool2d_forward_naive`.
    Returns:
        dx: (N, H, W, C); where windows overlap, an input that wins several gets their sum.
    """
    x, (PH, PW), (SH, SW), (pt, pb, pl, pr) = cache
    N, H, W, C = x.shape
    _, OH, OW, _ = dout.shape
    xpad = np.full((N, H + pt + pb, W + pl + pr, C), -np.inf, dtype=x.dtype)
    xpad[:, pt:pt + H, pl:pl + W, :] = x
    dxpad = np.zeros(xpad.shape, dtype=dout.dtype)
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                for c in range(C):
                    window = xpad[n, oh * SH:oh * SH + PH, ow * SW:ow * SW + PW, c]
                    i, j = np.unravel_index(np.argmax(window), window.shape)   # first maximum, row-major
                    dxpad[n, oh * SH + i, ow * SW + j, c] += dout[n, oh, ow, c]
    return dxpad[:, pt:pt + H, pl:pl + W, :]
