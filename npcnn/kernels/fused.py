"""Conv2D + ReLU + MaxPooling2D as one op, with the pooling moved before the bias and the ReLU.

Taking the maximum over a window commutes with adding the channel's bias and with the ReLU
(both are non-decreasing), so for z = conv(x) without its bias::

    maxpool(relu(z + b)) == relu(maxpool(z) + b)

The right-hand side adds the bias and applies the ReLU to the pooled values only (a quarter
of them for 2x2 pooling) and never writes the full-size activation relu(z + b). Backward, the
ReLU's mask is needed only where the pooling sends gradient, at the pooled outputs::

    dp_masked = dp * [p > 0]          (N, QH, QW, F)   p: the fused op's output
    db        = sum of dp_masked over (N, QH, QW)
    dz        = maxpool_backward(dp_masked)             each value to its window's argmax
    dkernel, dx = the convolution's backward GEMMs on dz (see :mod:`npcnn.kernels.conv`)

which replaces the full-size passes of the separate layers (bias + ReLU forward, the ReLU
mask and bias-gradient backward) by passes over the pooled arrays.

The argmax is taken over z rather than over relu(z + b). Where the window's maximum is
positive after the bias these are the same element (the first maximum wins ties, as in
:mod:`npcnn.kernels.pool`); where it is not, the ReLU's mask zeroes the gradient either way.
The only difference left is float rounding: two values of z closer than one rounding step
of z + b tie after the bias, where the separate layers pick the first of them and this op
the larger. Both are valid (sub)gradients of the same function.

The NumPy twin is the definition: the two layers' twins one after the other. Both twins look
their parts up in the registry at call time (conv2d_forward/backward, maxpool2d_forward/backward
for their own backend, and through them im2col and col2im, or the Winograd kernels for a qualifying
3x3 stride-1 convolution on the Numba backend), so ``npcnn.kernels.override`` reaches inside this op.
The op takes one ``ws`` (the fused block's): the parts' buffers have distinct names ("im2col.cols",
"conv.out", "pool.out", "pool.argmax", "fused.dp_masked", "fused.db_partial", "pool.dx",
"conv.dcols", "col2im.dx", or the "wino.*" ones), so none is shared. Sequential runs
a Conv2D with a ReLU activation followed by a MaxPooling2D through this op when
:data:`ENABLED` (``NPCNN_FUSE=0`` in the environment switches it off).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import numpy as np

from npcnn.kernels import conv
from npcnn.kernels.conv import ConvCache
from npcnn.kernels.pool import PoolCache
from npcnn.kernels.registry import get_kernel
from npcnn.kernels.workspace import buffer, run_parallel

ENABLED = os.environ.get("NPCNN_FUSE", "1").strip().lower() not in ("0", "false", "no", "off")


class FusedCache(NamedTuple):
    """What the fused op's backward needs; both backward twins read both forms.

    conv: the :class:`~npcnn.kernels.conv.ConvCache`. pool: the :class:`~npcnn.kernels.pool.PoolCache`.
    p: (N, QH, QW, F), the fused output, when the Numba forward ran (its conv cache is then
    bias-free and without ReLU: the mask is taken at p); None when the twin ran (the conv cache
    holds the ReLU output as in the separate layers).
    """

    conv: ConvCache
    pool: PoolCache
    p: Optional[np.ndarray]


def conv2d_relu_maxpool_forward_numpy(x, kernel, bias, strides, pads, out_hw,
                                      pool_size, pool_strides, pool_pads, pool_out_hw, ws=None):
    """Conv (+bias) -> ReLU -> max-pool (readable twin: the separate kernels in turn).

    Args:
        x: (N, H, W, C). kernel: (KH, KW, C, F). bias: (F,) or None.
        strides, pads, out_hw: the convolution's (see :func:`npcnn.kernels.conv.conv2d_forward_numpy`).
        pool_size, pool_strides, pool_pads, pool_out_hw: the pooling's, over the (OH, OW) output.
        ws: passed on to the parts (the NumPy ones ignore it).
    Returns:
        p: (N, QH, QW, F); cache: a :class:`FusedCache` with p None.
    """
    y, conv_cache = get_kernel("conv2d_forward", "numpy")(x, kernel, bias, strides, pads, out_hw,
                                                          relu=True, ws=ws)
    p, pool_cache = get_kernel("maxpool2d_forward", "numpy")(y, pool_size, pool_strides, pool_pads,
                                                             pool_out_hw, ws=ws)
    return p, FusedCache(conv_cache, pool_cache, None)


def conv2d_relu_maxpool_backward_numpy(dp, cache, need_dx=True, ws=None):
    """Backward of the fused op (readable twin).

    Args:
        dp: (N, QH, QW, F) (never written to). cache: the :class:`FusedCache` of either forward.
        need_dx: compute the input gradient. ws: passed on to the parts.
    Returns:
        dx (N, H, W, C) or None, dkernel (KH, KW, C, F), dbias (F,).
    """
    conv_cache, pool_cache, p = cache
    pool_bwd = get_kernel("maxpool2d_backward", "numpy")
    conv_bwd = get_kernel("conv2d_backward", "numpy")
    if p is not None:  # from the Numba forward (backend switched in between): its bias-free cache
        dp = np.where(p > 0, dp, 0).astype(p.dtype, copy=False)
        dx, dkernel, _ = conv_bwd(pool_bwd(dp, pool_cache, ws=ws), conv_cache, need_dx, ws=ws)
        return dx, dkernel, dp.sum(axis=(0, 1, 2))
    dy = pool_bwd(dp, pool_cache, ws=ws)
    return conv_bwd(dy, conv_cache, need_dx, ws=ws)


def conv2d_relu_maxpool_forward_numba(x, kernel, bias, strides, pads, out_hw,
                                      pool_size, pool_strides, pool_pads, pool_out_hw, ws=None):
    """The fused op (Numba): conv without bias, max-pool, then bias + ReLU on the pooled values.

    Same arguments and output as the twin. With a ``ws`` (the fused block's), p is its buffer
    "pool.out" and the cache refers to "im2col.cols", "conv.out" and "pool.argmax": valid until
    the next call with the same ``ws``.
    """
    # z, p and (backward) dz and dx live in the block's ws: no fresh pages every step
    z, conv_cache = get_kernel("conv2d_forward", "numba")(x, kernel, None, strides, pads, out_hw,
                                                          relu=False, ws=ws)
    p, pool_cache = get_kernel("maxpool2d_forward", "numba")(z, pool_size, pool_strides, pool_pads,
                                                             pool_out_hw, ws=ws)
    F = p.shape[-1]
    has_bias = bias is not None
    b = np.ascontiguousarray(bias, dtype=p.dtype) if has_bias else buffer(ws, "fused.no_bias", (F,), p.dtype, zero=True)
    p2 = p.reshape(-1, F)
    if run_parallel(p2.size, ws):
        conv._bias_relu_par(p2, b, has_bias, True, conv._DB_CHUNKS)
    else:
        conv._bias_relu_ser(p2, b, has_bias, True, 1)
    return p, FusedCache(conv_cache, pool_cache, p)


def conv2d_relu_maxpool_backward_numba(dp, cache, need_dx=True, ws=None):
    """Backward of the fused op (Numba); same arguments and results as the twin.

    ``dp`` is never written. With a ``ws``, dx is its buffer "col2im.dx"; dkernel and dbias are
    fresh arrays.
    """
    conv_cache, pool_cache, p = cache
    if p is None:  # from the twin's forward (backend switched in between)
        return conv2d_relu_maxpool_backward_numpy(dp, cache, need_dx, ws=ws)
    F = p.shape[-1]
    dp2 = np.ascontiguousarray(dp.reshape(-1, F), dtype=p.dtype)
    M = dp2.shape[0]
    dpm = buffer(ws, "fused.dp_masked", (M, F), p.dtype)
    dbp = buffer(ws, "fused.db_partial", (min(conv._DB_CHUNKS, max(M, 1)), F), np.float64)
    fn = conv._mask_db_par if run_parallel(dp2.size, ws) else conv._mask_db_ser
    fn(dp2, p.reshape(-1, F), True, dpm, dbp)  # dp * [p > 0] and its column sums
    dbias = dbp.sum(axis=0).astype(p.dtype)
    dz = get_kernel("maxpool2d_backward", "numba")(dpm.reshape(p.shape), pool_cache, ws=ws)
    dx, dkernel = conv.conv2d_backward_gemms(dz.reshape(-1, F), conv_cache, need_dx, ws)
    return dx, dkernel, dbias


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "conv2d_relu_maxpool_forward": (conv2d_relu_maxpool_forward_numpy, conv2d_relu_maxpool_forward_numba),
    "conv2d_relu_maxpool_backward": (conv2d_relu_maxpool_backward_numpy, conv2d_relu_maxpool_backward_numba),
}
