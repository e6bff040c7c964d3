"""2-D convolution (cross-correlation, as Keras computes it), NHWC, via im2col + one GEMM.

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

import numpy as np

from npcnn.kernels.im2col import col2im_numpy, im2col_numpy


def conv2d_forward_numpy(x, kernel, bias, strides, pads, out_hw, relu=False, workspace=None):
    """Convolution forward (readable twin).

    Args:
        x: (N, H, W, C). kernel: (KH, KW, C, F). bias: (F,) or None.
        strides: (SH, SW). pads: (top, bottom, left, right). out_hw: (OH, OW).
        relu: apply max(., 0) to the output (fused ReLU).
        workspace: ignored by the twin (the Numba version reuses buffers from it).
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
    if relu:
        out = np.maximum(out, 0)
    cache = (x.shape, cols, kernel, strides, pads, out_hw, out if relu else None)
    return out.reshape(N, OH, OW, F), cache


def conv2d_backward_numpy(dout, cache, need_dx=True, workspace=None):
    """Convolution backward (readable twin).

    Args:
        dout: (N, OH, OW, F) upstream gradient (never written to).
        cache: from :func:`conv2d_forward_numpy`.
        need_dx: skip the col2im when the input gradient is not needed (first layer).
        workspace: ignored by the twin.
    Returns:
        dx (N, H, W, C) or None, dkernel (KH, KW, C, F), dbias (F,).
    """
    x_shape, cols, kernel, strides, pads, out_hw, y = cache
    KH, KW, C, F = kernel.shape
    d2 = dout.reshape(-1, F)
    if y is not None:  # fused ReLU: through the mask [y > 0] first
        d2 = np.where(y > 0, d2, 0).astype(d2.dtype, copy=False)
    dkernel = (cols.T @ d2).reshape(kernel.shape)
    dbias = d2.sum(axis=0)
    dx = None
    if need_dx:
        dcols = d2 @ kernel.reshape(KH * KW * C, F).T
        dx = col2im_numpy(dcols, x_shape, (KH, KW), strides, pads, out_hw)
    return dx, dkernel, dbias


# --------------------------------------------------------------------------- Numba version
#
# The GEMMs stay in NumPy's BLAS on contiguous 2-D arrays; Numba does the memory-bound
# passes around them: im2col, bias (+ ReLU) in one pass over the GEMM output, the ReLU
# mask fused with the bias gradient, and col2im. Column and gradient buffers come from the
# caller's workspace, so a layer reuses them every step of the same batch size.

from numba import njit, prange  # noqa: E402

from npcnn.kernels.im2col import col2im_numba, im2col_numba  # noqa: E402
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


def conv2d_forward_numba(x, kernel, bias, strides, pads, out_hw, relu=False, workspace=None,
                         reuse_output=False):
    """Convolution forward (Numba + BLAS); same arguments, result and cache as the twin.

    ``workspace``: a caller-owned dict; the column matrix is kept there and reused while the
    shapes stay the same (the cache then refers to it: it is valid until the next call).
    ``reuse_output``: the output too is a workspace buffer, overwritten by the next call (for
    callers that consume it at once, e.g. :mod:`npcnn.kernels.fused`).
    """
    N = x.shape[0]
    KH, KW, C, F = kernel.shape
    OH, OW = out_hw
    dtype = np.result_type(x.dtype, kernel.dtype)
    x = x.astype(dtype, copy=False)
    kernel = np.ascontiguousarray(kernel, dtype=dtype)
    cols = im2col_numba(x, (KH, KW), strides, pads, out_hw, workspace=workspace)
    shape = (N * OH * OW, F)
    out = buffer(workspace if reuse_output else None, "out", shape, dtype)
    gemm(cols, kernel.reshape(KH * KW * C, F), out=out)
    has_bias = bias is not None
    b = np.ascontiguousarray(bias, dtype=dtype) if has_bias else np.zeros(F, dtype=dtype)
    if has_bias or relu:
        if run_parallel(out.size):
            _bias_relu_par(out, b, has_bias, relu, _DB_CHUNKS)
        else:
            _bias_relu_ser(out, b, has_bias, relu, 1)
    cache = (x.shape, cols, kernel, strides, pads, out_hw, out if relu else None)
    return out.reshape(N, OH, OW, F), cache


def conv2d_backward_numba(dout, cache, need_dx=True, workspace=None):
    """Convolution backward (Numba + BLAS); same arguments and results as the twin.

    ``dout`` is never written; the masked gradient and dcols live in ``workspace`` buffers.
    """
    x_shape, cols, kernel, strides, pads, out_hw, y = cache
    KH, KW, C, F = kernel.shape
    d2 = np.ascontiguousarray(dout.reshape(-1, F), dtype=cols.dtype)
    relu = y is not None
    M = d2.shape[0]
    dz = buffer(workspace, "dz", (M, F), d2.dtype) if relu else d2
    dbp = np.empty((min(_DB_CHUNKS, max(M, 1)), F), dtype=np.float64)
    fn = _mask_db_par if run_parallel(d2.size) else _mask_db_ser
    fn(d2, y if relu else d2, relu, dz, dbp)
    dbias = dbp.sum(axis=0).astype(d2.dtype)
    dx, dkernel = conv2d_backward_gemms(dz, cache, need_dx, workspace)
    return dx, dkernel, dbias


def conv2d_backward_gemms(dz, cache, need_dx=True, workspace=None, reuse_dx=False):
    """The GEMM part of the backward: dz (N*OH*OW, F), the gradient w.r.t. the pre-activation
    (contiguous, the cache's dtype) -> dx (N, H, W, C) or None, dkernel (KH, KW, C, F).

    ``reuse_dx``: dx is a workspace buffer, overwritten by the next call."""
    x_shape, cols, kernel, strides, pads, out_hw, _ = cache
    KH, KW, C, F = kernel.shape
    dkernel = gemm(cols.T, dz).reshape(kernel.shape)
    dx = None
    if need_dx:
        dcols = buffer(workspace, "dcols", cols.shape, dz.dtype)
        gemm(dz, kernel.reshape(KH * KW * C, F).T, out=dcols)
        out = buffer(workspace if reuse_dx else None, "dx", x_shape, dz.dtype)
        dx = col2im_numba(dcols, x_shape, (KH, KW), strides, pads, out_hw, out=out)
    return dx, dkernel
