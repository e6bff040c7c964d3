"""2-D convolution (cross-correlation, as Keras computes it), NHWC, via im2col + one GEMM.

(On the Numba backend a qualifying 3x3 stride-1 convolution runs by Winograd's F(2x2, 3x3) instead:
:mod:`npcnn.kernels.winograd`; the functions here dispatch to it.)

Forward (the layer's math)::

    cols = im2col(x)                          (N*OH*OW, KH*KW*C)
    out  = cols @ K + b                       K = kernel.reshape(KH*KW*C, F)

Backward (chain rule through the same three steps)::

    dK    = cols^T @ dout                     (KH*KW*C, F)   -> reshape to kernel.shape
    db    = sum over rows of dout             (F,)
    dcols = dout @ K^T                        (N*OH*OW, KH*KW*C)
    dx    = col2im(dcols)                     (N, H, W, C)   (the adjoint of im2col)

With ``relu=True`` the layer's ReLU is fused in: ``y = max(out, 0)`` in the same pass as
the bias, and backward first masks ``dout`` with ``[y > 0]`` (gradient 0 at exactly 0, as
PyTorch), so no separate activation array or pass is needed.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from npcnn.kernels import winograd
from npcnn.kernels.registry import get_kernel
from npcnn.kernels.winograd import WinogradCache


class ConvCache(NamedTuple):
    """What the convolution's backward needs; made by both twins, read by both.

    x_shape: (N, H, W, C). cols: (N*OH*OW, KH*KW*C), the im2col matrix. kernel: (KH, KW, C, F).
    strides: (SH, SW). pads: (top, bottom, left, right). out_hw: (OH, OW).
    y: (N*OH*OW, F), the ReLU's output when the forward ran with ``relu=True``, else None.
    """

    x_shape: tuple
    cols: np.ndarray
    kernel: np.ndarray
    strides: tuple
    pads: tuple
    out_hw: tuple
    y: Optional[np.ndarray]


def conv2d_forward_numpy(x, kernel, bias, strides, pads, out_hw, relu=False, ws=None):
    """Convolution forward (readable twin).

    Args:
        x: (N, H, W, C). kernel: (KH, KW, C, F). bias: (F,) or None.
        strides: (SH, SW). pads: (top, bottom, left, right). out_hw: (OH, OW).
        relu: apply max(., 0) to the output (fused ReLU).
        ws: ignored by the twin (the Numba version keeps its buffers there).
    Returns:
        y: (N, OH, OW, F); cache: a :class:`ConvCache`.
    """
    N = x.shape[0]
    KH, KW, C, F = kernel.shape
    OH, OW = out_hw
    cols = get_kernel("im2col", "numpy")(x, (KH, KW), strides, pads, out_hw, ws=ws)
    out = cols @ kernel.reshape(KH * KW * C, F)
    if bias is not None:
        out += bias
    if relu:
        out = np.maximum(out, 0)
    cache = ConvCache(x.shape, cols, kernel, strides, pads, out_hw, out if relu else None)
    return out.reshape(N, OH, OW, F), cache


def conv2d_backward_numpy(dy, cache, need_dx=True, ws=None):
    """Convolution backward (readable twin).

    Args:
        dy: (N, OH, OW, F) upstream gradient (never written to).
        cache: the :class:`ConvCache` of either twin's forward.
        need_dx: skip the col2im when the input gradient is not needed (first layer).
        ws: ignored by the twin.
    Returns:
        dx (N, H, W, C) or None, dkernel (KH, KW, C, F), dbias (F,) (also when the forward
        had no bias: the caller ignores it then).
    """
    if isinstance(cache, WinogradCache):  # from the Numba forward of a 3x3 stride-1 convolution
        return get_kernel("winograd_backward", "numpy")(dy, cache, need_dx, ws=ws)
    x_shape, cols, kernel, strides, pads, out_hw, y = cache
    KH, KW, C, F = kernel.shape
    d2 = dy.reshape(-1, F)
    if y is not None:  # fused ReLU: through the mask [y > 0] first
        d2 = np.where(y > 0, d2, 0).astype(d2.dtype, copy=False)
    dkernel = (cols.T @ d2).reshape(kernel.shape)
    dbias = d2.sum(axis=0)
    dx = None
    if need_dx:
        dcols = d2 @ kernel.reshape(KH * KW * C, F).T
        dx = get_kernel("col2im", "numpy")(dcols, x_shape, (KH, KW), strides, pads, out_hw, ws=ws)
    return dx, dkernel, dbias


# --------------------------------------------------------------------------- Numba version
#
# The GEMMs stay in NumPy's BLAS on contiguous 2-D arrays; Numba does the memory-bound
# passes around them: im2col, bias (+ ReLU) in one pass over the GEMM output, the ReLU
# mask fused with the bias gradient, and col2im. im2col and col2im are looked up in the
# registry at call time (so npcnn.kernels.override reaches them). Every array but the
# parameter gradients is a buffer of the caller's ``ws``: "conv.out", "conv.dz",
# "conv.db_partial", "conv.dcols" here, "im2col.cols" and "col2im.dx" in the parts.

from numba import njit, prange  # noqa: E402

from npcnn.kernels.workspace import buffer, run_parallel  # noqa: E402

gemm = np.dot  # every BLAS call of the Numba path goes through this name (the profiler wraps it)
_DB_CHUNKS = 64  # fixed row chunks for the bias gradient: the sum does not depend on the thread count


@njit(cache=True, nogil=True)
def _bias_relu_rows(out, lo, hi, bias, has_bias, relu):
    """In place on rows lo:hi of out (M, F): out += bias; out = max(out, 0) when relu."""
    F = out.shape[1]
    for r in range(lo, hi):
        o = out[r]
        for f in range(F):
            v = o[f]
            if has_bias:
                v += bias[f]
            if relu:
                v = v if not v < 0 else 0  # keeps NaN, like np.maximum
            o[f] = v


@njit(parallel=True, cache=True, nogil=True)
def _bias_relu_par(out, bias, has_bias, relu, chunks):
    M = out.shape[0]
    step = (M + chunks - 1) // chunks
    for t in prange(chunks):  # disjoint row ranges
        _bias_relu_rows(out, t * step, min(M, (t + 1) * step), bias, has_bias, relu)


@njit(cache=True, nogil=True)
def _bias_relu_ser(out, bias, has_bias, relu, chunks):
    _bias_relu_rows(out, 0, out.shape[0], bias, has_bias, relu)


@njit(cache=True, nogil=True)
def _mask_db_rows(dout, y, relu, dz, db, lo, hi):
    """Rows lo:hi: dz = dout * [y > 0] (when relu; else dz is not written) and db += column sums."""
    F = dout.shape[1]
    for r in range(lo, hi):
        d = dout[r]
        if relu:
            yr = y[r]
            zr = dz[r]
            for f in range(F):
                g = d[f] if yr[f] > 0 else 0
                zr[f] = g
                db[f] += g
        else:
            for f in range(F):
                db[f] += d[f]


@njit(parallel=True, cache=True, nogil=True)
def _mask_db_par(dout, y, relu, dz, dbp):
    """dbp (T, F) float64: one row of partial sums per chunk t, which owns rows t*step:(t+1)*step."""
    M = dout.shape[0]
    T = dbp.shape[0]
    step = (M + T - 1) // T
    for t in prange(T):
        dbp[t] = 0.0
        _mask_db_rows(dout, y, relu, dz, dbp[t], t * step, min(M, (t + 1) * step))


@njit(cache=True, nogil=True)
def _mask_db_ser(dout, y, relu, dz, dbp):
    M = dout.shape[0]
    T = dbp.shape[0]
    step = (M + T - 1) // T
    for t in range(T):
        dbp[t] = 0.0
        _mask_db_rows(dout, y, relu, dz, dbp[t], t * step, min(M, (t + 1) * step))


def conv2d_forward_numba(x, kernel, bias, strides, pads, out_hw, relu=False, ws=None):
    """Convolution forward (Numba + BLAS); same arguments, result and cache as the twin.

    With a ``ws`` the output y is its buffer "conv.out" and the cache refers to it and to
    "im2col.cols": both valid until the next call with the same ``ws``. With None, fresh arrays.

    A 3x3 stride-1 kernel with enough input channels and output pixels
    (:func:`npcnn.kernels.winograd.eligible`) runs the Winograd algorithm instead
    (``get_kernel("winograd_forward", "numba")``: same result up to float rounding, 2.25x fewer
    multiplications; its cache is a
    :class:`~npcnn.kernels.winograd.WinogradCache`, which the backward recognises).
    """
    if winograd.eligible(kernel.shape, strides, out_hw):
        return get_kernel("winograd_forward", "numba")(x, kernel, bias, pads, out_hw, relu=relu, ws=ws)
    N = x.shape[0]
    KH, KW, C, F = kernel.shape
    OH, OW = out_hw
    dtype = np.result_type(x.dtype, kernel.dtype)
    x = x.astype(dtype, copy=False)
    kernel = np.ascontiguousarray(kernel, dtype=dtype)
    cols = get_kernel("im2col", "numba")(x, (KH, KW), strides, pads, out_hw, ws=ws)
    out = buffer(ws, "conv.out", (N * OH * OW, F), dtype)
    gemm(cols, kernel.reshape(KH * KW * C, F), out=out)
    has_bias = bias is not None
    if has_bias or relu:
        b = np.ascontiguousarray(bias, dtype=dtype) if has_bias else buffer(ws, "conv.no_bias", (F,), dtype, zero=True)
        if run_parallel(out.size, ws):
            _bias_relu_par(out, b, has_bias, relu, _DB_CHUNKS)
        else:
            _bias_relu_ser(out, b, has_bias, relu, 1)
    cache = ConvCache(x.shape, cols, kernel, strides, pads, out_hw, out if relu else None)
    return out.reshape(N, OH, OW, F), cache


def conv2d_backward_numba(dy, cache, need_dx=True, ws=None):
    """Convolution backward (Numba + BLAS); same arguments and results as the twin.

    ``dy`` is never written. With a ``ws``, dx is its buffer "col2im.dx" (the masked gradient
    and dcols are "conv.dz" and "conv.dcols"; after a Winograd forward dx is "wino.dx"); dkernel and
    dbias are always fresh arrays.
    """
    y = cache.y
    F = dy.shape[-1]
    dtype = (cache.V if isinstance(cache, WinogradCache) else cache.cols).dtype
    d2 = np.ascontiguousarray(dy.reshape(-1, F), dtype=dtype)
    relu = y is not None
    M = d2.shape[0]
    dz = buffer(ws, "conv.dz", (M, F), d2.dtype) if relu else d2
    dbp = buffer(ws, "conv.db_partial", (min(_DB_CHUNKS, max(M, 1)), F), np.float64)
    fn = _mask_db_par if run_parallel(d2.size, ws) else _mask_db_ser
    fn(d2, y if relu else d2, relu, dz, dbp)
    dbias = dbp.sum(axis=0).astype(d2.dtype)
    dx, dkernel = conv2d_backward_gemms(dz, cache, need_dx, ws)
    return dx, dkernel, dbias


def conv2d_backward_gemms(dz, cache, need_dx=True, ws=None):
    """The GEMM part of the Numba backward (an internal helper, also used by the fused op).

    Args:
        dz: (N*OH*OW, F), the gradient w.r.t. the pre-activation (contiguous, the cache's dtype).
        cache: a :class:`ConvCache` (its ``y`` is not read), or a Winograd forward's
            :class:`~npcnn.kernels.winograd.WinogradCache` (then
            :func:`~npcnn.kernels.winograd.winograd_backward_gemms`).
        need_dx: compute dx (dcols = dz @ K^T, then col2im, looked up in the registry).
        ws: with a ``ws``, dcols is its buffer "conv.dcols" and dx its buffer "col2im.dx".
    Returns:
        dx (N, H, W, C) or None, dkernel (KH, KW, C, F) (a fresh array).
    """
    if isinstance(cache, WinogradCache):
        return winograd.winograd_backward_gemms(dz, cache, need_dx, ws)
    x_shape, cols, kernel, strides, pads, out_hw, _ = cache
    KH, KW, C, F = kernel.shape
    dkernel = gemm(cols.T, dz).reshape(kernel.shape)
    dx = None
    if need_dx:
        dcols = buffer(ws, "conv.dcols", cols.shape, dz.dtype)
        gemm(dz, kernel.reshape(KH * KW * C, F).T, out=dcols)
        dx = get_kernel("col2im", "numba")(dcols, x_shape, (KH, KW), strides, pads, out_hw, ws=ws)
    return dx, dkernel


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "conv2d_forward": (conv2d_forward_numpy, conv2d_forward_numba),
    "conv2d_backward": (conv2d_backward_numpy, conv2d_backward_numba),
}
