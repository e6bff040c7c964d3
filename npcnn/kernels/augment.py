"""Per-sample image remaps for the augmentation layers (RandomFlip, RandomTranslation), NHWC.

A flip and a translation move every row of an image by the same rule, and every column too: they
are *separable* remaps. Output row i of sample n reads input rows ``rows[n, i, t]`` with weights
``row_weights[n, i, t]`` (TR taps: 1 for nearest, 2 for bilinear), output column j reads input
columns ``cols[n, j, t]`` with ``col_weights[n, j, t]`` (TC taps), and an index of -1 is outside the image
(it reads ``fill_value``)::

    y[n, i, j, c] = sum_{a < TR, b < TC} row_weights[n, i, a] * col_weights[n, j, b]
                                   * (x[n, rows[n, i, a], cols[n, j, b], c]  if both indices >= 0
                                      else fill_value)

The backward pass is the adjoint of that linear map (fill_value is a constant: no gradient): each
output gradient goes back, weighted, to every input cell it read; a cell read several times (the
reflected border) adds up::

    dx[n, rows[n, i, a], cols[n, j, b], c] += row_weights[n, i, a] * col_weights[n, j, b] * dy[n, i, j, c]

The kernels know nothing of randomness. The layers (``npcnn/layers/preprocessing.py``) build the
taps with the small NumPy functions below from per-sample uniforms (:func:`uniforms`), drawn with
the counter-based SplitMix64 hash of :mod:`npcnn.kernels.dropout`: sample n's numbers depend on
(the step's seed, the layer, n's index in the whole batch), never on how the batch is split.

Fill modes (Keras's ``fill_mode``), for an integer index k on an axis of size S:

    reflect   (d c b a | a b c d | d c b a)   reflection about the edge of the last pixel
    wrap      (a b c d | a b c d | a b c d)   k mod S
    nearest   (a a a a | a b c d | d d d d)   clip(k, 0, S - 1)
    constant  (k k k k | a b c d | k k k k)   -1 (fill_value) outside [0, S)

Bilinear interpolation applies the fill mode to each of the two neighbours separately (Keras's
``map_coordinates`` rule: a neighbour outside the image in 'constant' mode contributes fill_value
times its weight).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from npcnn.kernels.dropout import GOLDEN, _mix64_array, mix64

FILL_MODES = ("reflect", "wrap", "constant", "nearest")
INTERPOLATIONS = ("nearest", "bilinear")


class RemapCache(NamedTuple):
    """What remap backward needs: x_shape (N, H, W, C) and the taps: rows (N, OH, TR) int64,
    row_weights (N, OH, TR), cols (N, OW, TC) int64, col_weights (N, OW, TC) (weights in x's dtype)."""

    x_shape: tuple
    rows: np.ndarray
    row_weights: np.ndarray
    cols: np.ndarray
    col_weights: np.ndarray


# --------------------------------------------------------------------------- the taps (NumPy, small)


def uniforms(seed, sample_offset, n, k):
    """(n, k) float64 uniforms in [0, 1): u[i, j] = (h >> 11) * 2^-53 with h the SplitMix64 output
    number (sample_offset + i) * k + j of the generator started in state mix64(seed) (the hash of
    npcnn.kernels.dropout): the numbers of sample i depend on its index in the whole batch only."""
    if not 0 <= sample_offset < 2**63:
        raise ValueError(f"sample_offset is an index into the batch, >= 0; got {sample_offset}")
    sample = np.uint64(sample_offset) + np.arange(n, dtype=np.uint64)
    counter = sample[:, None] * np.uint64(k) + np.arange(k, dtype=np.uint64)
    h = _mix64_array(np.uint64(mix64(int(seed))) + (counter + np.uint64(1)) * np.uint64(GOLDEN))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def fix_index(index, size, fill_mode):
    """The input index that integer index (array) ``index`` reads on an axis of ``size`` cells under
    ``fill_mode`` (see the module doc); -1 for 'constant' outside [0, size)."""
    index = np.asarray(index, dtype=np.int64)
    if fill_mode == "reflect":
        m = np.mod(index, 2 * size)
        return np.where(m < size, m, 2 * size - 1 - m)
    if fill_mode == "wrap":
        return np.mod(index, size)
    if fill_mode == "nearest":
        return np.clip(index, 0, size - 1)
    if fill_mode == "constant":
        return np.where((index >= 0) & (index < size), index, -1)
    raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")


def flip_taps(flip, size, dtype):
    """One tap per output index: i reads size - 1 - i where ``flip[n]``, else i. flip: (N,) bool.
    Returns (index (N, size, 1) int64, weight (N, size, 1) ones in ``dtype``)."""
    i = np.arange(size, dtype=np.int64)
    index = np.where(np.asarray(flip, bool)[:, None], size - 1 - i, i)[:, :, None]
    return index, np.ones(index.shape, dtype)


def shift_taps(shift, size, fill_mode, interpolation, dtype):
    """Taps of a translation by ``shift[n]`` cells (float, positive: towards higher indices): output
    index i reads the input coordinate c = i - shift[n].

    'nearest': one tap, floor(c + 0.5), weight 1; 'bilinear': floor(c) and floor(c) + 1 with weights
    1 - frac(c) and frac(c). Each tap's index then goes through :func:`fix_index`.
    Returns (index (N, size, T) int64, weight (N, size, T) in ``dtype``).
    """
    c = np.arange(size, dtype=np.float64)[None, :] - np.asarray(shift, np.float64)[:, None]  # (N, size)
    if interpolation == "nearest":
        index = np.floor(c + 0.5)[:, :, None]
        weight = np.ones(index.shape, dtype)
    elif interpolation == "bilinear":
        f = np.floor(c)
        frac = c - f
        index = np.stack([f, f + 1], axis=-1)
        weight = np.stack([1.0 - frac, frac], axis=-1).astype(dtype)
    else:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    return fix_index(index.astype(np.int64), size, fill_mode), weight


# --------------------------------------------------------------------------- NumPy twins


def remap2d_forward_numpy(x, rows, row_weights, cols, col_weights, fill_value, ws=None):
    """Separable per-sample remap (readable twin); see the module doc.

    Args:
        x: (N, H, W, C). rows: (N, OH, TR) int64 (-1: outside). row_weights: (N, OH, TR) x's dtype.
        cols: (N, OW, TC) int64. col_weights: (N, OW, TC). fill_value: a number, read outside the image.
        ws: ignored by the twin (the Numba version keeps "remap2d.out" there).
    Returns:
        y: (N, OH, OW, C), x's dtype; cache: a :class:`RemapCache`.
    """
    N, H, W, C = x.shape
    fill = x.dtype.type(fill_value)
    row_weights = np.asarray(row_weights).astype(x.dtype, copy=False)
    col_weights = np.asarray(col_weights).astype(x.dtype, copy=False)
    n = np.arange(N)[:, None, None]
    y = np.zeros((N, rows.shape[1], cols.shape[1], C), x.dtype)
    for a in range(rows.shape[2]):  # the taps in (a, b) order: the Numba version adds in this order too
        r = rows[:, :, a]
        for b in range(cols.shape[2]):
            c = cols[:, :, b]
            w = row_weights[:, :, a][:, :, None] * col_weights[:, :, b][:, None, :]  # (N, OH, OW)
            inside = (r >= 0)[:, :, None] & (c >= 0)[:, None, :]
            v = x[n, np.maximum(r, 0)[:, :, None], np.maximum(c, 0)[:, None, :]]  # (N, OH, OW, C)
            y += w[..., None] * np.where(inside[..., None], v, fill)
    return y, RemapCache(x.shape, rows, row_weights, cols, col_weights)


def remap2d_backward_numpy(dy, cache, ws=None):
    """Remap backward (readable twin): the adjoint scatter-add. dy: (N, OH, OW, C), never written.
    Returns dx: (N, H, W, C), dy's dtype."""
    x_shape, rows, row_weights, cols, col_weights = cache
    row_weights = row_weights.astype(dy.dtype, copy=False)
    col_weights = col_weights.astype(dy.dtype, copy=False)
    dx = np.zeros(x_shape, dy.dtype)
    for a in range(rows.shape[2]):
        r = rows[:, :, a]
        for b in range(cols.shape[2]):
            c = cols[:, :, b]
            w = row_weights[:, :, a][:, :, None] * col_weights[:, :, b][:, None, :]
            g = w[..., None] * dy
            nn, ii, jj = np.nonzero((r >= 0)[:, :, None] & (c >= 0)[:, None, :])
            np.add.at(dx, (nn, r[nn, ii], c[nn, jj]), g[nn, ii, jj])  # row-major order, repeats add up
    return dx


# --------------------------------------------------------------------------- Numba versions
#
# One image per prange iteration (an image's outputs, and its dx with the += of a reflected
# border, stay in one thread). The terms are added in the twin's order: forward per output cell
# over the taps (a, b); backward over (a, b), then the output cells row-major, as np.add.at does.
# Bit-identical to the twins.

from numba import njit, prange  # noqa: E402

from npcnn.kernels.workspace import buffer, run_parallel  # noqa: E402


@njit(cache=True, nogil=True)
def _remap_fwd_image(x, n, rows, rw, cols, cw, fill, out):
    C = x.shape[3]
    OH, OW, TR, TC = out.shape[1], out.shape[2], rows.shape[2], cols.shape[2]
    on = out[n]
    for i in range(OH):
        for j in range(OW):
            for ch in range(C):
                on[i, j, ch] = 0
    for i in range(OH):
        for a in range(TR):
            r = rows[n, i, a]
            wr = rw[n, i, a]
            for j in range(OW):
                o = on[i, j]
                for b in range(TC):
                    c = cols[n, j, b]
                    w = wr * cw[n, j, b]
                    if r >= 0 and c >= 0:
                        xr = x[n, r, c]
                        for ch in range(C):
                            o[ch] += w * xr[ch]
                    else:
                        for ch in range(C):
                            o[ch] += w * fill


@njit(parallel=True, cache=True, nogil=True)
def _remap_fwd_par(x, rows, rw, cols, cw, fill, out):
    for n in prange(x.shape[0]):
        _remap_fwd_image(x, n, rows, rw, cols, cw, fill, out)


@njit(cache=True, nogil=True)
def _remap_fwd_ser(x, rows, rw, cols, cw, fill, out):
    for n in range(x.shape[0]):
        _remap_fwd_image(x, n, rows, rw, cols, cw, fill, out)


@njit(cache=True, nogil=True)
def _remap_bwd_image(dy, n, rows, rw, cols, cw, dx):
    H, W, C = dx.shape[1], dx.shape[2], dx.shape[3]
    OH, OW, TR, TC = dy.shape[1], dy.shape[2], rows.shape[2], cols.shape[2]
    dn = dx[n]
    for h in range(H):
        for w in range(W):
            for ch in range(C):
                dn[h, w, ch] = 0
    for a in range(TR):
        for b in range(TC):
            for i in range(OH):
                r = rows[n, i, a]
                if r < 0:
                    continue
                wr = rw[n, i, a]
                for j in range(OW):
                    c = cols[n, j, b]
                    if c < 0:
                        continue
                    w = wr * cw[n, j, b]
                    d = dy[n, i, j]
                    t = dn[r, c]
                    for ch in range(C):
                        t[ch] += w * d[ch]


@njit(parallel=True, cache=True, nogil=True)
def _remap_bwd_par(dy, rows, rw, cols, cw, dx):
    for n in prange(dx.shape[0]):  # one image per iteration: its += never meet another thread's
        _remap_bwd_image(dy, n, rows, rw, cols, cw, dx)


@njit(cache=True, nogil=True)
def _remap_bwd_ser(dy, rows, rw, cols, cw, dx):
    for n in range(dx.shape[0]):
        _remap_bwd_image(dy, n, rows, rw, cols, cw, dx)


def _taps(a, dtype=None):
    return np.ascontiguousarray(a, dtype=dtype)


def remap2d_forward_numba(x, rows, row_weights, cols, col_weights, fill_value, ws=None):
    """Separable per-sample remap (Numba); same arguments, result and cache as the twin.

    With a ``ws`` the output is its buffer "remap2d.out"; with None a fresh array.
    """
    N, H, W, C = x.shape
    x = np.ascontiguousarray(x)
    rows, cols = _taps(rows, np.int64), _taps(cols, np.int64)
    rw, cw = _taps(row_weights, x.dtype), _taps(col_weights, x.dtype)
    out = buffer(ws, "remap2d.out", (N, rows.shape[1], cols.shape[1], C), x.dtype)
    fn = _remap_fwd_par if run_parallel(out.size, ws) else _remap_fwd_ser
    fn(x, rows, rw, cols, cw, x.dtype.type(fill_value), out)
    return out, RemapCache(x.shape, rows, rw, cols, cw)


def remap2d_backward_numba(dy, cache, ws=None):
    """Remap backward (Numba): the adjoint scatter-add, same result as the twin. ``dy`` is never written.

    With a ``ws``, dx (N, H, W, C) is its buffer "remap2d.dx"; with None a fresh array.
    """
    x_shape, rows, row_weights, cols, col_weights = cache
    dy = np.ascontiguousarray(dy)
    dx = buffer(ws, "remap2d.dx", x_shape, dy.dtype)
    fn = _remap_bwd_par if run_parallel(dy.size, ws) else _remap_bwd_ser
    fn(dy, _taps(rows, np.int64), _taps(row_weights, dy.dtype), _taps(cols, np.int64),
       _taps(col_weights, dy.dtype), dx)
    return dx


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "remap2d_forward": (remap2d_forward_numpy, remap2d_forward_numba),
    "remap2d_backward": (remap2d_backward_numpy, remap2d_backward_numba),
}
