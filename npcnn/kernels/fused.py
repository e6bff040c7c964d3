"""Conv2D + ReLU + MaxPooling2D as one op, with the pooling moved before the bias and the ReLU.

Taking the maximum over a window commutes with adding the channel's bias and with the ReLU
(both are non-decreasing), so for z = conv(x) without its bias::

    maxpool(relu(z + b)) == relu(maxpool(z) + b)

The right-hand side adds the bias and applies the ReLU to the pooled values only (a quarter
of them for 2x2 pooling) and never writes the full-size activation relu(z + b). Backward, the
ReLU's mask is needed only where the pooling sends gradient, at the pooled outputs::

    dp_masked = dp * [p > 0]          (N, PH, PW, F)   p: the fused op's output
    db        = sum of dp_masked over (N, PH, PW)
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

The NumPy twin is the definition: the two layers' twins one after the other. Sequential runs
a Conv2D with a ReLU activation followed by a MaxPooling2D through this op when
:data:`ENABLED` (``NPCNN_FUSE=0`` in the environment switches it off).
"""

from __future__ import annotations

import os

import numpy as np

from npcnn.kernels import conv, pool
from npcnn.kernels.workspace import buffer, run_parallel

ENABLED = os.environ.get("NPCNN_FUSE", "1").strip().lower() not in ("0", "false", "no", "off")


def conv2d_relu_maxpool_forward_numpy(x, kernel, bias, strides, pads, out_hw,
                                      pool_size, pool_strides, pool_pads, pool_out_hw,
                                      workspace=None, pool_workspace=None):
    """Conv (+bias) -> ReLU -> max-pool (readable twin: the separate kernels in turn).

    Args:
        x: (N, H, W, C). kernel: (KH, KW, C, F). bias: (F,) or None.
        strides, pads, out_hw: the convolution's (see :func:`npcnn.kernels.conv.conv2d_forward_numpy`).
        pool_size, pool_strides, pool_pads, pool_out_hw: the pooling's, over the (OH, OW) output.
        workspace, pool_workspace: ignored by the twin.
    Returns:
        p: (N, PH, PW, F); cache for :func:`conv2d_relu_maxpool_backward_numpy`.
    """
    y, conv_cache = conv.conv2d_forward_numpy(x, kernel, bias, strides, pads, out_hw, relu=True)
    p, pool_cache = pool.maxpool2d_forward_numpy(y, pool_size, pool_strides, pool_pads, pool_out_hw)
    return p, (conv_cache, pool_cache)


def conv2d_relu_maxpool_backward_numpy(dp, cache, need_dx=True, workspace=None):
    """Backward of the fused op (readable twin). dp: (N, PH, PW, F).

    Returns:
        dx (N, H, W, C) or None, dkernel (KH, KW, C, F), dbias (F,).
    """
    if len(cache) == 3:  # from the Numba forward (backend switched in between): its bias-free cache
        conv_cache, pool_cache, p = cache
        dp = np.where(p > 0, dp, 0).astype(p.dtype, copy=False)
        dx, dkernel, _ = conv.conv2d_backward_numpy(pool.maxpool2d_backward_numpy(dp, pool_cache),
                                                    conv_cache, need_dx)
        return dx, dkernel, dp.sum(axis=(0, 1, 2))
    conv_cache, pool_cache = cache
    dy = pool.maxpool2d_backward_numpy(dp, pool_cache)
    return conv.conv2d_backward_numpy(dy, conv_cache, need_dx)


def conv2d_relu_maxpool_forward_numba(x, kernel, bias, strides, pads, out_hw,
                                      pool_size, pool_strides, pool_pads, pool_out_hw,
                                      workspace=None, pool_workspace=None):
    """The fused op (Numba): conv without bias, max-pool, then bias + ReLU on the pooled values.

    Same arguments and output as the twin; ``workspace``/``pool_workspace`` are the two
    layers' buffer dicts (the caches refer to their buffers until the next call).
    """
    # z, p and (backward) dz and dx live in the layers' workspaces: no fresh pages every step
    z, conv_cache = conv.conv2d_forward_numba(x, kernel, None, strides, pads, out_hw, relu=False,
                                              workspace=workspace, reuse_output=True)
    p, pool_cache = pool.maxpool2d_forward_numba(z, pool_size, pool_strides, pool_pads, pool_out_hw,
                                                 workspace=pool_workspace, reuse_output=True)
    F = p.shape[-1]
    has_bias = bias is not None
    b = np.ascontiguousarray(bias, dtype=p.dtype) if has_bias else np.zeros(F, dtype=p.dtype)
    p2 = p.reshape(-1, F)
    if run_parallel(p2.size):
        conv._bias_relu_par(p2, b, has_bias, True, conv._DB_CHUNKS)
    else:
        conv._bias_relu_ser(p2, b, has_bias, True, 1)
    return p, (conv_cache, pool_cache, p)


def conv2d_relu_maxpool_backward_numba(dp, cache, need_dx=True, workspace=None):
    """Backward of the fused op (Numba); same arguments and results as the twin."""
    if len(cache) == 2:  # from the twin's forward (backend switched in between)
        return conv2d_relu_maxpool_backward_numpy(dp, cache, need_dx)
    conv_cache, pool_cache, p = cache
    F = p.shape[-1]
    dp2 = np.ascontiguousarray(dp.reshape(-1, F), dtype=p.dtype)
    M = dp2.shape[0]
    dpm = buffer(workspace, "dp_masked", (M, F), p.dtype)
    dbp = np.empty((min(conv._DB_CHUNKS, max(M, 1)), F), dtype=np.float64)
    fn = conv._mask_db_par if run_parallel(dp2.size) else conv._mask_db_ser
    fn(dp2, p.reshape(-1, F), True, dpm, dbp)  # dp * [p > 0] and its column sums
    dbias = dbp.sum(axis=0).astype(p.dtype)
    dz = pool.maxpool2d_backward_numba(dpm.reshape(p.shape), pool_cache, workspace=workspace)
    dx, dkernel = conv.conv2d_backward_gemms(dz.reshape(-1, F), conv_cache, need_dx, workspace, reuse_dx=True)
    return dx, dkernel, dbias
