"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3), forward and backward.

Same function as :mod:`npcnn.kernels.conv` (a cross-correlation, NHWC, Keras's kernel layout), with
2.25x fewer multiplications: each 2x2 block of outputs ("tile") is computed from the 4x4 input patch
under it with 16 products per (input, output) channel pair instead of 36 (Lavin & Gray, 2016)::

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A        d: 4x4 patch, g: 3x3 taps, Y: 2x2 outputs, (.) elementwise

    B^T = [[1, 0, -1,  0],     G = [[  1,    0,   0 ],     A^T = [[1, 1,  1,  0],
           [0, 1,  1,  0],          [ 1/2,  1/2, 1/2],            [0, 1, -1, -1]]
           [0, -1, 1,  0],          [ 1/2, -1/2, 1/2],
           [0, 1,  0, -1]]          [  0,    0,   1 ]]

Summed over the input channels, the elementwise product of each of the 16 positions p = (i, j) is a
matrix product, so a convolution is 16 GEMMs between transforms (T = N * TH * TW tiles)::

    V[p] = (B^T d B)[p]   per tile and input channel     (16, T, C)    input transform
    U[p] = (G g G^T)[p]   per (input, output) channel    (16, C, F)    kernel transform
    M[p] = V[p] @ U[p]                                   (16, T, F)    16 GEMMs
    y    = A^T M A (+ bias, ReLU), per tile              (N, OH, OW, F) output transform

Backward is the chain rule through those four linear steps; each transform's adjoint is its
transposed matrices (the input transform's adjoint adds overlapping patches back, as col2im does)::

    dM[p] = (A dY A^T)[p]            (16, T, F)      dY: the 2x2 output gradient of each tile
    dU[p] = V[p]^T @ dM[p]           (16, C, F)      -> dkernel = G^T dU G   (3, 3, C, F)
    dV[p] = dM[p] @ U[p]^T           (16, T, C)      -> dx = sum over tiles of B dV B^T  (N, H, W, C)

Tiles cover the output in 2x2 blocks from the top left; an odd output size's last tile reads zeros
past the padding and its extra outputs are dropped (their gradient is zero). The cache keeps V and U,
(16, T, C) + (16, C, F) floats, where im2col keeps (N*OH*OW, 9*C): about 2.25x less for even sizes.

The float rounding differs from im2col's (other sums in another order; the transforms are exact in
binary but for the halves of G): tests compare the two within float32 tolerance, and check the
gradient of this one by central differences in float64. :func:`eligible` says when the Numba
convolution runs this algorithm (3x3, stride 1, at least :data:`MIN_CHANNELS` input channels, at least
:data:`MIN_OUTPUTS` output pixels, even height and width); ``NPCNN_WINOGRAD=0`` or :func:`set_enabled`
turns it off. The Numba convolution then calls neither im2col nor col2im, so
``npcnn.kernels.override("im2col", ...)`` does not reach such a layer (disable Winograd to study them).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from npcnn.utils import env_flag

MIN_CHANNELS = 16  # fewer input channels (the first layer's 3): the 16 GEMMs are too thin to pay
PLANE_PAD = 32  # floats between consecutive planes of a (16, T, C) buffer (see planes())
MIN_OUTPUTS = 64  # fewer output pixels per image (e.g. 4x4): the transforms cost more than they save
_enabled = env_flag("NPCNN_WINOGRAD", True)

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def set_enabled(enabled) -> bool:
    """Let the Numba convolution use Winograd where :func:`eligible` (True, the default) or never;
    returns the previous setting."""
    global _enabled
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"winograd.set_enabled: enabled must be True or False, got {enabled!r}")
    previous, _enabled = _enabled, bool(enabled)
    return previous


def get_enabled() -> bool:
    """Whether the Numba convolution may use Winograd (see :func:`set_enabled`)."""
    return _enabled


def eligible(kernel_shape, strides, out_hw) -> bool:
    """True when the Numba convolution computes a kernel of ``kernel_shape`` (KH, KW, C, F) with
    ``strides`` and output size ``out_hw`` (OH, OW) by Winograd: enabled, 3x3, stride 1, at least
    :data:`MIN_CHANNELS` input channels, at least :data:`MIN_OUTPUTS` output pixels per image, and an
    even OH and OW (whole 2x2 tiles).

    The algorithm itself takes any size (the twins and the tests cover odd ones), but an odd size
    computes outputs it drops (13x13: 196 for 169, 16 % more), and where that was measured (the seed
    model's second convolution, 15x15x32 -> 13x13x64) the training step was no faster (1.03x, within
    noise); so the seed model keeps im2col and its results as before."""
    KH, KW, C, _ = kernel_shape
    OH, OW = out_hw
    return (_enabled and KH == 3 and KW == 3 and tuple(strides) == (1, 1) and C >= MIN_CHANNELS
            and OH * OW >= MIN_OUTPUTS and OH % 2 == 0 and OW % 2 == 0)


def tiles(out_hw):
    """(TH, TW): the 2x2 output tiles along each axis, ceil(OH / 2) and ceil(OW / 2)."""
    OH, OW = out_hw
    return (OH + 1) // 2, (OW + 1) // 2


def workspace_bytes(x_shape, filters, out_hw, need_dx=True, itemsize=4):
    """{buffer name: bytes} that the Numba Winograd convolution itself keeps in its workspace after a
    forward and backward on inputs of ``x_shape`` (N, H, W, C) (the caller's own buffers, such as
    the bias gradient's partial sums, are not included)."""
    N, H, W, C = x_shape
    TH, TW = tiles(out_hw)
    T = N * TH * TW
    padded = N * (2 * TH + 2) * (2 * TW + 2) * C

    def planes_of(rows, cols):
        return 16 * (rows * cols + PLANE_PAD)

    sizes = {"wino.xp": padded, "wino.V": planes_of(T, C), "wino.U": planes_of(C, filters),
             "wino.M": planes_of(T, filters), "conv.out": N * out_hw[0] * out_hw[1] * filters,
             "wino.dU": planes_of(C, filters)}  # the backward's dM and padded dx reuse wino.M and wino.xp
    if need_dx:
        sizes.update({"wino.dV": planes_of(T, C), "wino.dx": N * H * W * C})
    return {k: itemsize * v for k, v in sizes.items()}


class WinogradCache(NamedTuple):
    """What the Winograd backward needs; made by both twins, read by both.

    x_shape: (N, H, W, C). V: (16, T, C), the transformed input tiles. U: (16, C, F), the transformed
    kernel. kernel_shape: (3, 3, C, F). pads: (top, bottom, left, right). out_hw: (OH, OW).
    y: (N*OH*OW, F), the ReLU's output when the forward ran with ``relu=True``, else None.
    """

    x_shape: tuple
    V: np.ndarray
    U: np.ndarray
    kernel_shape: tuple
    pads: tuple
    out_hw: tuple
    y: Optional[np.ndarray]


def kernel_transform(kernel):
    """U = G g G^T for every (input, output) channel pair: kernel (3, 3, C, F) -> U (16, C, F)."""
    g = G.astype(kernel.dtype)
    return np.einsum("ia,abcf,jb->ijcf", g, kernel, g).reshape(16, *kernel.shape[2:])


def kernel_transform_adjoint(dU):
    """dkernel = G^T dU G: dU (16, C, F) -> (3, 3, C, F) (the adjoint of :func:`kernel_transform`)."""
    g = G.astype(dU.dtype)
    return np.einsum("ia,ijcf,jb->abcf", g, dU.reshape(4, 4, *dU.shape[1:]), g)


# --------------------------------------------------------------------------- readable twin
def _patches(x, pads, out_hw):
    """d (N, TH, TW, 4, 4, C): the 4x4 input patch under each output tile (zeros past the padding)."""
    N, H, W, C = x.shape
    TH, TW = tiles(out_hw)
    pt, _, pl, _ = pads
    xp = np.zeros((N, 2 * TH + 2, 2 * TW + 2, C), dtype=x.dtype)
    h, w = min(H, 2 * TH + 2 - pt), min(W, 2 * TW + 2 - pl)  # input rows/cols some tile reads
    xp[:, pt:pt + h, pl:pl + w] = x[:, :h, :w]
    d = np.empty((N, TH, TW, 4, 4, C), dtype=x.dtype)
    for a in range(4):
        for b in range(4):
            d[:, :, :, a, b] = xp[:, a:a + 2 * TH:2, b:b + 2 * TW:2]
    return d


def winograd_forward_numpy(x, kernel, bias, pads, out_hw, relu=False, ws=None):
    """Winograd convolution forward (readable twin); 3x3 kernel, stride 1.

    Args:
        x: (N, H, W, C). kernel: (3, 3, C, F). bias: (F,) or None.
        pads: (top, bottom, left, right). out_hw: (OH, OW) (from :func:`npcnn.kernels.conv_geometry`).
        relu: apply max(., 0) to the output. ws: ignored by the twin.
    Returns:
        y: (N, OH, OW, F); cache: a :class:`WinogradCache`.
    """
    N, H, W, C = x.shape
    F = kernel.shape[3]
    OH, OW = out_hw
    TH, TW = tiles(out_hw)
    dtype = np.result_type(x.dtype, kernel.dtype)  # as the im2col twin
    x, kernel = x.astype(dtype, copy=False), kernel.astype(dtype, copy=False)
    bt, at = BT.astype(dtype), AT.astype(dtype)
    d = _patches(x, pads, out_hw)                                        # (N, TH, TW, 4, 4, C)
    V = np.einsum("ia,ntuabc,jb->ijntuc", bt, d, bt).reshape(16, -1, C)  # (16, T, C)
    U = kernel_transform(kernel)                                         # (16, C, F)
    M = V @ U                                                            # (16, T, F): 16 GEMMs
    Y = np.einsum("ki,ijntuf,lj->ntkulf", at, M.reshape(4, 4, N, TH, TW, F), at)
    out = Y.reshape(N, 2 * TH, 2 * TW, F)[:, :OH, :OW]                   # drop an odd size's extra
    if bias is not None:
        out = out + bias
    if relu:
        out = np.maximum(out, 0)
    out = np.ascontiguousarray(out, dtype=dtype)
    cache = WinogradCache(x.shape, V, U, kernel.shape, pads, out_hw, out.reshape(-1, F) if relu else None)
    return out, cache


def winograd_backward_numpy(dy, cache, need_dx=True, ws=None):
    """Winograd convolution backward (readable twin).

    Args:
        dy: (N, OH, OW, F) upstream gradient (never written). cache: a :class:`WinogradCache`.
        need_dx: compute the input gradient. ws: ignored by the twin.
    Returns:
        dx (N, H, W, C) or None, dkernel (3, 3, C, F), dbias (F,).
    """
    x_shape, V, U, kernel_shape, pads, out_hw, y = cache
    N, H, W, C = x_shape
    F = kernel_shape[3]
    OH, OW = out_hw
    TH, TW = tiles(out_hw)
    if y is not None:  # fused ReLU: through the mask [y > 0] first
        dy = np.where(y.reshape(dy.shape) > 0, dy, 0).astype(dy.dtype, copy=False)
    dbias = dy.reshape(-1, F).sum(axis=0)
    bt, at = BT.astype(dy.dtype), AT.astype(dy.dtype)
    dY = np.zeros((N, 2 * TH, 2 * TW, F), dtype=dy.dtype)
    dY[:, :OH, :OW] = dy                                                 # no gradient for the extra outputs
    dM = np.einsum("ki,ntkulf,lj->ijntuf", at, dY.reshape(N, TH, 2, TW, 2, F), at).reshape(16, -1, F)
    dkernel = kernel_transform_adjoint(V.transpose(0, 2, 1) @ dM)       # G^T (V^T dM) G
    dx = None
    if need_dx:
        dV = dM @ U.transpose(0, 2, 1)                                  # (16, T, C)
        dd = np.einsum("ia,ijntuc,jb->ntuabc", bt, dV.reshape(4, 4, N, TH, TW, C), bt)
        pt, _, pl, _ = pads
        dxp = np.zeros((N, 2 * TH + 2, 2 * TW + 2, C), dtype=dy.dtype)
        for a in range(4):  # the adjoint of _patches: overlapping patches add up
            for b in range(4):
                dxp[:, a:a + 2 * TH:2, b:b + 2 * TW:2] += dd[:, :, :, a, b]
        dx = np.zeros(x_shape, dtype=dy.dtype)
        h, w = min(H, 2 * TH + 2 - pt), min(W, 2 * TW + 2 - pl)
        dx[:, :h, :w] = dxp[:, pt:pt + h, pl:pl + w]
    return dx, dkernel.astype(dy.dtype, copy=False), dbias


# --------------------------------------------------------------------------- Numba version
#
# The transforms are Numba loops with the channel loop innermost (contiguous in NHWC and in the
# (16, T, C) layout); each image owns its tiles (prange over images). The input is first copied into a
# zero-padded image ("wino.xp", (N, 2*TH + 2, 2*TW + 2, C)), so every tile reads a whole 4x4 patch with
# no bounds tests; the input gradient is added up in the same padded form (in the same buffer) and cropped.
# The 16 GEMMs are one stacked np.matmul each (BLAS, GIL released). The 16 planes of V, M, dM and dV
# are PLANE_PAD floats further apart than their size: planes a multiple of 4 KiB apart make the
# transforms' 16 streams fall into the same cache sets (measured 4-6x slower for 32 channels).
# Buffers of the caller's ``ws``: "wino.xp", "wino.V", "wino.U", "wino.M", "conv.out" forward;
# backward "wino.dU", "wino.dV", "wino.dx", and dM and the padded dx in the forward's "wino.M" and
# "wino.xp" (dead by then: the cache holds V, U and y only).

from numba import njit, prange  # noqa: E402

from npcnn.kernels.workspace import buffer, run_parallel  # noqa: E402

gemm = np.matmul  # the stacked GEMMs of the Numba path go through this name (the profiler wraps it)


def planes(ws, name, T, C, dtype):
    """A (16, T, C) array (for U and dU: (16, C, F)) whose planes [p] are C-contiguous (T, C) matrices
    PLANE_PAD elements apart (a view of the flat buffer ``ws[name]``; a fresh one with ``ws`` None)."""
    dtype = np.dtype(dtype)
    stride = T * C + PLANE_PAD
    flat = buffer(ws, name, (16 * stride,), dtype)
    return np.lib.stride_tricks.as_strided(flat, (16, T, C), (stride * dtype.itemsize, C * dtype.itemsize,
                                                                dtype.itemsize), writeable=True)


@njit(cache=True, nogil=True)
def _kernel_transform(g, U):
    """U (16, C, F) = G g G^T for every (c, f) of g (3, 3, C, F) (see :func:`kernel_transform`)."""
    C, F = g.shape[2], g.shape[3]
    for c in range(C):
        for f in range(F):
            # rows: G g (4 x 3)
            a0 = g[0, 0, c, f]
            a1 = g[0, 1, c, f]
            a2 = g[0, 2, c, f]
            b0 = 0.5 * (g[0, 0, c, f] + g[1, 0, c, f] + g[2, 0, c, f])
            b1 = 0.5 * (g[0, 1, c, f] + g[1, 1, c, f] + g[2, 1, c, f])
            b2 = 0.5 * (g[0, 2, c, f] + g[1, 2, c, f] + g[2, 2, c, f])
            e0 = 0.5 * (g[0, 0, c, f] - g[1, 0, c, f] + g[2, 0, c, f])
            e1 = 0.5 * (g[0, 1, c, f] - g[1, 1, c, f] + g[2, 1, c, f])
            e2 = 0.5 * (g[0, 2, c, f] - g[1, 2, c, f] + g[2, 2, c, f])
            h0 = g[2, 0, c, f]
            h1 = g[2, 1, c, f]
            h2 = g[2, 2, c, f]
            # columns: (G g) G^T (4 x 4)
            U[0, c, f] = a0
            U[1, c, f] = 0.5 * (a0 + a1 + a2)
            U[2, c, f] = 0.5 * (a0 - a1 + a2)
            U[3, c, f] = a2
            U[4, c, f] = b0
            U[5, c, f] = 0.5 * (b0 + b1 + b2)
            U[6, c, f] = 0.5 * (b0 - b1 + b2)
            U[7, c, f] = b2
            U[8, c, f] = e0
            U[9, c, f] = 0.5 * (e0 + e1 + e2)
            U[10, c, f] = 0.5 * (e0 - e1 + e2)
            U[11, c, f] = e2
            U[12, c, f] = h0
            U[13, c, f] = 0.5 * (h0 + h1 + h2)
            U[14, c, f] = 0.5 * (h0 - h1 + h2)
            U[15, c, f] = h2


@njit(cache=True, nogil=True)
def _kernel_transform_adjoint(dU, dg):
    """dg (3, 3, C, F) = G^T dU G for every (c, f) of dU (16, C, F) (see :func:`kernel_transform_adjoint`)."""
    C, F = dU.shape[1], dU.shape[2]
    for c in range(C):
        for f in range(F):
            # rows: q_aj = sum_i G[i, a] dU_ij   (a = 0, 1, 2: u0 + (u1 + u2)/2, (u1 - u2)/2, (u1 + u2)/2 + u3)
            s0 = 0.5 * (dU[4, c, f] + dU[8, c, f])
            q00 = dU[0, c, f] + s0
            q10 = 0.5 * (dU[4, c, f] - dU[8, c, f])
            q20 = s0 + dU[12, c, f]
            s1 = 0.5 * (dU[5, c, f] + dU[9, c, f])
            q01 = dU[1, c, f] + s1
            q11 = 0.5 * (dU[5, c, f] - dU[9, c, f])
            q21 = s1 + dU[13, c, f]
            s2 = 0.5 * (dU[6, c, f] + dU[10, c, f])
            q02 = dU[2, c, f] + s2
            q12 = 0.5 * (dU[6, c, f] - dU[10, c, f])
            q22 = s2 + dU[14, c, f]
            s3 = 0.5 * (dU[7, c, f] + dU[11, c, f])
            q03 = dU[3, c, f] + s3
            q13 = 0.5 * (dU[7, c, f] - dU[11, c, f])
            q23 = s3 + dU[15, c, f]
            # columns: dg[a, b] = sum_j q_aj G[j, b]
            t0 = 0.5 * (q01 + q02)
            dg[0, 0, c, f] = q00 + t0
            dg[0, 1, c, f] = 0.5 * (q01 - q02)
            dg[0, 2, c, f] = t0 + q03
            t1 = 0.5 * (q11 + q12)
            dg[1, 0, c, f] = q10 + t1
            dg[1, 1, c, f] = 0.5 * (q11 - q12)
            dg[1, 2, c, f] = t1 + q13
            t2 = 0.5 * (q21 + q22)
            dg[2, 0, c, f] = q20 + t2
            dg[2, 1, c, f] = 0.5 * (q21 - q22)
            dg[2, 2, c, f] = t2 + q23


@njit(cache=True, nogil=True)
def _pad_image(x, n, pt, pl, xp):
    """xp[n] = image n of x at offset (pt, pl), zeros around it (the part of x that fits)."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    HP, WP = xp.shape[1], xp.shape[2]
    for h in range(HP):
        for w in range(WP):
            hs, ws_ = h - pt, w - pl
            if 0 <= hs < H and 0 <= ws_ < W:
                for c in range(C):
                    xp[n, h, w, c] = x[n, hs, ws_, c]
            else:
                for c in range(C):
                    xp[n, h, w, c] = 0


@njit(cache=True, nogil=True)
def _in_image(xp, n, TH, TW, V):
    """V[:, t, :] = B^T d B for image n's tiles t (d: the tile's 4x4 patch of the padded image xp[n])."""
    C = xp.shape[3]
    for th in range(TH):
        h0 = 2 * th
        for tw in range(TW):
            w0 = 2 * tw
            t = (n * TH + th) * TW + tw
            for c in range(C):
                d00 = xp[n, h0, w0, c]
                d01 = xp[n, h0, w0 + 1, c]
                d02 = xp[n, h0, w0 + 2, c]
                d03 = xp[n, h0, w0 + 3, c]
                d10 = xp[n, h0 + 1, w0, c]
                d11 = xp[n, h0 + 1, w0 + 1, c]
                d12 = xp[n, h0 + 1, w0 + 2, c]
                d13 = xp[n, h0 + 1, w0 + 3, c]
                d20 = xp[n, h0 + 2, w0, c]
                d21 = xp[n, h0 + 2, w0 + 1, c]
                d22 = xp[n, h0 + 2, w0 + 2, c]
                d23 = xp[n, h0 + 2, w0 + 3, c]
                d30 = xp[n, h0 + 3, w0, c]
                d31 = xp[n, h0 + 3, w0 + 1, c]
                d32 = xp[n, h0 + 3, w0 + 2, c]
                d33 = xp[n, h0 + 3, w0 + 3, c]
                # rows: r_i = sum_a BT[i, a] d_a
                r00 = d00 - d20
                r01 = d01 - d21
                r02 = d02 - d22
                r03 = d03 - d23
                r10 = d10 + d20
                r11 = d11 + d21
                r12 = d12 + d22
                r13 = d13 + d23
                r20 = d20 - d10
                r21 = d21 - d11
                r22 = d22 - d12
                r23 = d23 - d13
                r30 = d10 - d30
                r31 = d11 - d31
                r32 = d12 - d32
                r33 = d13 - d33
                # columns: V[i, j] = sum_b r_ib BT[j, b]
                V[0, t, c] = r00 - r02
                V[1, t, c] = r01 + r02
                V[2, t, c] = r02 - r01
                V[3, t, c] = r01 - r03
                V[4, t, c] = r10 - r12
                V[5, t, c] = r11 + r12
                V[6, t, c] = r12 - r11
                V[7, t, c] = r11 - r13
                V[8, t, c] = r20 - r22
                V[9, t, c] = r21 + r22
                V[10, t, c] = r22 - r21
                V[11, t, c] = r21 - r23
                V[12, t, c] = r30 - r32
                V[13, t, c] = r31 + r32
                V[14, t, c] = r32 - r31
                V[15, t, c] = r31 - r33


@njit(parallel=True, cache=True, nogil=True)
def _in_par(x, pt, pl, TH, TW, xp, V):
    for n in prange(x.shape[0]):  # each image writes its own padded copy and tiles
        _pad_image(x, n, pt, pl, xp)
        _in_image(xp, n, TH, TW, V)


@njit(cache=True, nogil=True)
def _in_ser(x, pt, pl, TH, TW, xp, V):
    for n in range(x.shape[0]):
        _pad_image(x, n, pt, pl, xp)
        _in_image(xp, n, TH, TW, V)


@njit(cache=True, nogil=True)
def _out_image(M, n, TH, TW, bias, has_bias, relu, y):
    """y[n] = A^T M A per tile (+ bias, ReLU); an odd size's extra outputs are not written."""
    OH, OW, F = y.shape[1], y.shape[2], y.shape[3]
    for th in range(TH):
        h = 2 * th
        for tw in range(TW):
            w = 2 * tw
            t = (n * TH + th) * TW + tw
            inside = h + 2 <= OH and w + 2 <= OW
            for f in range(F):
                # rows: s_k = sum_i AT[k, i] m_i
                s00 = M[0, t, f] + M[4, t, f] + M[8, t, f]
                s01 = M[1, t, f] + M[5, t, f] + M[9, t, f]
                s02 = M[2, t, f] + M[6, t, f] + M[10, t, f]
                s03 = M[3, t, f] + M[7, t, f] + M[11, t, f]
                s10 = M[4, t, f] - M[8, t, f] - M[12, t, f]
                s11 = M[5, t, f] - M[9, t, f] - M[13, t, f]
                s12 = M[6, t, f] - M[10, t, f] - M[14, t, f]
                s13 = M[7, t, f] - M[11, t, f] - M[15, t, f]
                y00 = s00 + s01 + s02
                y01 = s01 - s02 - s03
                y10 = s10 + s11 + s12
                y11 = s11 - s12 - s13
                if has_bias:
                    b = bias[f]
                    y00 += b
                    y01 += b
                    y10 += b
                    y11 += b
                if relu:  # keeps NaN, like np.maximum
                    y00 = y00 if not y00 < 0 else 0
                    y01 = y01 if not y01 < 0 else 0
                    y10 = y10 if not y10 < 0 else 0
                    y11 = y11 if not y11 < 0 else 0
                if inside:
                    y[n, h, w, f] = y00
                    y[n, h, w + 1, f] = y01
                    y[n, h + 1, w, f] = y10
                    y[n, h + 1, w + 1, f] = y11
                else:
                    y[n, h, w, f] = y00
                    if w + 1 < OW:
                        y[n, h, w + 1, f] = y01
                    if h + 1 < OH:
                        y[n, h + 1, w, f] = y10
                        if w + 1 < OW:
                            y[n, h + 1, w + 1, f] = y11


@njit(parallel=True, cache=True, nogil=True)
def _out_par(M, TH, TW, bias, has_bias, relu, y):
    for n in prange(y.shape[0]):
        _out_image(M, n, TH, TW, bias, has_bias, relu, y)


@njit(cache=True, nogil=True)
def _out_ser(M, TH, TW, bias, has_bias, relu, y):
    for n in range(y.shape[0]):
        _out_image(M, n, TH, TW, bias, has_bias, relu, y)


@njit(cache=True, nogil=True)
def _out_adjoint_image(dy, n, TH, TW, dM):
    """dM[:, t, :] = A dY A^T for image n's tiles (dY: the tile's 2x2 of dy, zero past an odd size)."""
    OH, OW, F = dy.shape[1], dy.shape[2], dy.shape[3]
    for th in range(TH):
        h = 2 * th
        for tw in range(TW):
            w = 2 * tw
            t = (n * TH + th) * TW + tw
            inside = h + 2 <= OH and w + 2 <= OW
            for f in range(F):
                if inside:
                    g00 = dy[n, h, w, f]
                    g01 = dy[n, h, w + 1, f]
                    g10 = dy[n, h + 1, w, f]
                    g11 = dy[n, h + 1, w + 1, f]
                else:
                    g00 = dy[n, h, w, f]
                    g01 = dy[n, h, w + 1, f] if w + 1 < OW else 0
                    g10 = dy[n, h + 1, w, f] if h + 1 < OH else 0
                    g11 = dy[n, h + 1, w + 1, f] if (h + 1 < OH and w + 1 < OW) else 0
                # rows: u_i = sum_k AT[k, i] g_k  (i = 0..3: g0, g0 + g1, g0 - g1, -g1)
                u10 = g00 + g10
                u11 = g01 + g11
                u20 = g00 - g10
                u21 = g01 - g11
                # columns: dM[i, j] = sum_l u_il AT[l, j]
                dM[0, t, f] = g00
                dM[1, t, f] = g00 + g01
                dM[2, t, f] = g00 - g01
                dM[3, t, f] = -g01
                dM[4, t, f] = u10
                dM[5, t, f] = u10 + u11
                dM[6, t, f] = u10 - u11
                dM[7, t, f] = -u11
                dM[8, t, f] = u20
                dM[9, t, f] = u20 + u21
                dM[10, t, f] = u20 - u21
                dM[11, t, f] = -u21
                dM[12, t, f] = -g10
                dM[13, t, f] = -(g10 + g11)
                dM[14, t, f] = g11 - g10
                dM[15, t, f] = g11


@njit(parallel=True, cache=True, nogil=True)
def _out_adjoint_par(dy, TH, TW, dM):
    for n in prange(dy.shape[0]):
        _out_adjoint_image(dy, n, TH, TW, dM)


@njit(cache=True, nogil=True)
def _out_adjoint_ser(dy, TH, TW, dM):
    for n in range(dy.shape[0]):
        _out_adjoint_image(dy, n, TH, TW, dM)


@njit(cache=True, nogil=True)
def _in_adjoint_image(dV, n, pt, pl, TH, TW, dxp, dx):
    """dx[n] = the sum over image n's tiles of B dV B^T, each added at its patch of the padded image
    dxp[n] (overlaps add up), cropped to the input."""
    HP, WP, C = dxp.shape[1], dxp.shape[2], dxp.shape[3]
    for h in range(HP):
        for w in range(WP):
            for c in range(C):
                dxp[n, h, w, c] = 0
    for th in range(TH):
        h0 = 2 * th
        for tw in range(TW):
            w0 = 2 * tw
            t = (n * TH + th) * TW + tw
            for c in range(C):
                # rows: e_a = sum_i BT[i, a] v_i  (a = 0..3: v0, v1 - v2 + v3, v1 + v2 - v0, -v3)
                e00 = dV[0, t, c]
                e01 = dV[1, t, c]
                e02 = dV[2, t, c]
                e03 = dV[3, t, c]
                e10 = dV[4, t, c] - dV[8, t, c] + dV[12, t, c]
                e11 = dV[5, t, c] - dV[9, t, c] + dV[13, t, c]
                e12 = dV[6, t, c] - dV[10, t, c] + dV[14, t, c]
                e13 = dV[7, t, c] - dV[11, t, c] + dV[15, t, c]
                e20 = dV[4, t, c] + dV[8, t, c] - dV[0, t, c]
                e21 = dV[5, t, c] + dV[9, t, c] - dV[1, t, c]
                e22 = dV[6, t, c] + dV[10, t, c] - dV[2, t, c]
                e23 = dV[7, t, c] + dV[11, t, c] - dV[3, t, c]
                e30 = -dV[12, t, c]
                e31 = -dV[13, t, c]
                e32 = -dV[14, t, c]
                e33 = -dV[15, t, c]
                # columns: dd[a, b] = sum_j e_aj BT[j, b], added at (h0 + a, w0 + b)
                dxp[n, h0, w0, c] += e00
                dxp[n, h0, w0 + 1, c] += e01 - e02 + e03
                dxp[n, h0, w0 + 2, c] += e01 + e02 - e00
                dxp[n, h0, w0 + 3, c] -= e03
                dxp[n, h0 + 1, w0, c] += e10
                dxp[n, h0 + 1, w0 + 1, c] += e11 - e12 + e13
                dxp[n, h0 + 1, w0 + 2, c] += e11 + e12 - e10
                dxp[n, h0 + 1, w0 + 3, c] -= e13
                dxp[n, h0 + 2, w0, c] += e20
                dxp[n, h0 + 2, w0 + 1, c] += e21 - e22 + e23
                dxp[n, h0 + 2, w0 + 2, c] += e21 + e22 - e20
                dxp[n, h0 + 2, w0 + 3, c] -= e23
                dxp[n, h0 + 3, w0, c] += e30
                dxp[n, h0 + 3, w0 + 1, c] += e31 - e32 + e33
                dxp[n, h0 + 3, w0 + 2, c] += e31 + e32 - e30
                dxp[n, h0 + 3, w0 + 3, c] -= e33
    H, W = dx.shape[1], dx.shape[2]
    for h in range(H):
        for w in range(W):
            hp, wp = h + pt, w + pl
            if hp < HP and wp < WP:
                for c in range(C):
                    dx[n, h, w, c] = dxp[n, hp, wp, c]
            else:  # an input pixel no tile reads (pads smaller than 'same')
                for c in range(C):
                    dx[n, h, w, c] = 0


@njit(parallel=True, cache=True, nogil=True)
def _in_adjoint_par(dV, pt, pl, TH, TW, dxp, dx):
    for n in prange(dx.shape[0]):  # one image per iteration: its += never meet another thread's
        _in_adjoint_image(dV, n, pt, pl, TH, TW, dxp, dx)


@njit(cache=True, nogil=True)
def _in_adjoint_ser(dV, pt, pl, TH, TW, dxp, dx):
    for n in range(dx.shape[0]):
        _in_adjoint_image(dV, n, pt, pl, TH, TW, dxp, dx)


def winograd_forward_numba(x, kernel, bias, pads, out_hw, relu=False, ws=None):
    """Winograd convolution forward (Numba + BLAS); same arguments, result and cache as the twin.

    With a ``ws`` the output y is its buffer "conv.out" and the cache refers to it and to "wino.V"
    and "wino.U": valid until the next call with the same ``ws``. With None, fresh arrays.
    """
    N, H, W, C = x.shape
    F = kernel.shape[3]
    OH, OW = out_hw
    TH, TW = tiles(out_hw)
    T = N * TH * TW
    dtype = np.result_type(x.dtype, kernel.dtype)
    x = np.ascontiguousarray(x, dtype=dtype)
    pt, _, pl, _ = pads
    xp = buffer(ws, "wino.xp", (N, 2 * TH + 2, 2 * TW + 2, C), dtype)
    V = planes(ws, "wino.V", T, C, dtype)
    par = run_parallel(V.size, ws)
    (_in_par if par else _in_ser)(x, pt, pl, TH, TW, xp, V)
    U = planes(ws, "wino.U", C, F, dtype)
    _kernel_transform(np.ascontiguousarray(kernel, dtype=dtype), U)
    M = planes(ws, "wino.M", T, F, dtype)
    gemm(V, U, out=M)
    y = buffer(ws, "conv.out", (N * OH * OW, F), dtype)
    has_bias = bias is not None
    b = np.ascontiguousarray(bias, dtype=dtype) if has_bias else np.zeros(F, dtype)
    (_out_par if par else _out_ser)(M, TH, TW, b, has_bias, relu, y.reshape(N, OH, OW, F))
    cache = WinogradCache(x.shape, V, U, tuple(kernel.shape), pads, out_hw, y if relu else None)
    return y.reshape(N, OH, OW, F), cache


def winograd_backward_gemms(dz, cache, need_dx=True, ws=None):
    """The part of the Numba backward after the ReLU mask and the bias gradient.

    Args:
        dz: (N*OH*OW, F), the gradient w.r.t. the pre-activation (contiguous, the cache's dtype).
        cache: a :class:`WinogradCache` (its ``y`` is not read). need_dx: compute dx.
        ws: with a ``ws``, dM, dU, dV and dx are its buffers "wino.M" (the forward's M, no longer
            needed), "wino.dU", "wino.dV", "wino.dx"; the padded dx is "wino.xp".
    Returns:
        dx (N, H, W, C) or None, dkernel (3, 3, C, F) (a fresh array).
    """
    x_shape, V, U, kernel_shape, pads, out_hw, _ = cache
    N, H, W, C = x_shape
    F = kernel_shape[3]
    OH, OW = out_hw
    TH, TW = tiles(out_hw)
    dy = dz.reshape(N, OH, OW, F)
    dM = planes(ws, "wino.M", V.shape[1], F, dz.dtype)  # the forward's M is not needed any more
    par = run_parallel(dM.size, ws)
    (_out_adjoint_par if par else _out_adjoint_ser)(dy, TH, TW, dM)
    dkernel = np.empty(kernel_shape, dz.dtype)
    dU = gemm(V.transpose(0, 2, 1), dM, out=planes(ws, "wino.dU", C, F, dz.dtype))
    _kernel_transform_adjoint(dU, dkernel)
    dx = None
    if need_dx:
        dV = planes(ws, "wino.dV", V.shape[1], C, dz.dtype)
        gemm(dM, U.transpose(0, 2, 1), out=dV)
        dxp = buffer(ws, "wino.xp", (N, 2 * TH + 2, 2 * TW + 2, C), dz.dtype)  # nor its padded input
        dx = buffer(ws, "wino.dx", x_shape, dz.dtype)
        (_in_adjoint_par if par else _in_adjoint_ser)(dV, pads[0], pads[2], TH, TW, dxp, dx)
    return dx, dkernel


def winograd_backward_numba(dy, cache, need_dx=True, ws=None):
    """Winograd convolution backward (Numba + BLAS); same arguments and results as the twin.

    ``dy`` is never written. The ReLU mask and the bias gradient are the convolution's
    (:mod:`npcnn.kernels.conv`); then :func:`winograd_backward_gemms`.
    """
    from npcnn.kernels import conv

    return conv.conv2d_backward_numba(dy, cache, need_dx, ws=ws)


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "winograd_forward": (winograd_forward_numpy, winograd_forward_numba),
    "winograd_backward": (winograd_backward_numpy, winograd_backward_numba),
}
