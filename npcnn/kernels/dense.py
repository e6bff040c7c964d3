"""Fully connected layer: one GEMM.

Forward:  y = x @ W + b                      x (N, D), W (D, U), b (U,), y (N, U)
Backward: dx = dy @ W^T,  dW = x^T @ dy,  db = sum_n dy[n]

The Numba version keeps the GEMMs in BLAS (``np.dot`` into ``ws`` buffers "dense.out" and
"dense.dx") and does the bias in njit passes: the add in one pass over y, the gradient as the
convolution's fixed-chunk column sum (float64 partial sums over 64 row chunks, so db does not
depend on the thread count).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class DenseCache(NamedTuple):
    """What Dense's backward needs: x (N, D), the forward's input, and kernel (D, U)."""

    x: np.ndarray
    kernel: np.ndarray


def dense_forward_numpy(x, kernel, bias, ws=None):
    """Dense forward (readable twin).

    Args:
        x: (N, D). kernel: (D, U). bias: (U,) or None. ws: ignored by the twin.
    Returns:
        y: (N, U); cache: a :class:`DenseCache`.
    """
    y = x @ kernel
    if bias is not None:
        y += bias
    return y, DenseCache(x, kernel)


def dense_backward_numpy(dy, cache, need_dx=True, ws=None):
    """Dense backward (readable twin).

    Args:
        dy: (N, U) (never written to). cache: the :class:`DenseCache` of either twin.
        need_dx: skip dx when the input gradient is not needed. ws: ignored by the twin.
    Returns:
        dx (N, D) or None, dkernel (D, U), dbias (U,) (also when the forward had no bias).
    """
    x, kernel = cache
    dx = dy @ kernel.T if need_dx else None
    return dx, x.T @ dy, dy.sum(axis=0)


# --------------------------------------------------------------------------- Numba version

from npcnn.kernels.conv import (  # noqa: E402
    _DB_CHUNKS,
    _bias_relu_par,
    _bias_relu_ser,
    _mask_db_par,
    _mask_db_ser,
)
from npcnn.kernels.workspace import buffer, run_parallel  # noqa: E402

gemm = np.dot  # the BLAS calls of the Numba path (the profiler wraps this name)


def dense_forward_numba(x, kernel, bias, ws=None):
    """Dense forward (BLAS GEMM + an njit bias pass); same arguments, result and cache as the twin.

    With a ``ws``, y (N, U) is its buffer "dense.out" (overwritten by the next call); with None,
    a fresh array. The cache holds x itself (not a copy).
    """
    dtype = np.result_type(x.dtype, kernel.dtype)
    xc = x.astype(dtype, copy=False)
    kc = kernel.astype(dtype, copy=False)
    y = buffer(ws, "dense.out", (xc.shape[0], kc.shape[1]), dtype)
    gemm(xc, kc, out=y)
    if bias is not None:
        b = np.ascontiguousarray(bias, dtype=dtype)
        if run_parallel(y.size, ws):
            _bias_relu_par(y, b, True, False, _DB_CHUNKS)
        else:
            _bias_relu_ser(y, b, True, False, 1)
    return y, DenseCache(x, kernel)


def dense_backward_numba(dy, cache, need_dx=True, ws=None):
    """Dense backward (BLAS GEMMs + an njit bias-gradient pass); same arguments and results as the twin.

    ``dy`` is never written. With a ``ws``, dx (N, D) is its buffer "dense.dx"; dkernel and
    dbias are always fresh arrays.
    """
    x, kernel = cache
    dtype = np.result_type(dy.dtype, x.dtype, kernel.dtype)
    d2 = np.ascontiguousarray(dy, dtype=dtype)
    kc = kernel.astype(dtype, copy=False)
    dx = None
    if need_dx:
        dx = buffer(ws, "dense.dx", (d2.shape[0], kc.shape[0]), dtype)
        gemm(d2, kc.T, out=dx)
    dkernel = gemm(x.astype(dtype, copy=False).T, d2)
    M, U = d2.shape
    dbp = buffer(ws, "dense.db_partial", (min(_DB_CHUNKS, max(M, 1)), U), np.float64)
    fn = _mask_db_par if run_parallel(d2.size, ws) else _mask_db_ser
    fn(d2, d2, False, d2, dbp)  # relu=False: only the column sums, nothing written to d2
    dbias = dbp.sum(axis=0).astype(dtype)
    return dx, dkernel, dbias


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "dense_forward": (dense_forward_numpy, dense_forward_numba),
    "dense_backward": (dense_backward_numpy, dense_backward_numba),
}
