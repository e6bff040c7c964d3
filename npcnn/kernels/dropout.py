"""Inverted dropout with counter-based masks: the same mask however the batch is split.

Training::

    keep[n, j] = u(seed, n, j) >= rate            u uniform in [0, 1)
    y = x * keep / (1 - rate)                     (kept values scaled up, so E[y] = x)
    dx = dy * keep / (1 - rate)

At inference the layer does not call the kernel: y = x (that is what the 1 / (1 - rate) scaling
in training buys). ``npcnn/layers/regularization.py::Dropout`` is the layer.

The mask. ``u`` is not drawn from a generator that walks through the batch (its values would
depend on which shard or thread reached which sample first) but is a pure function of the seed,
the sample's index ``n`` in the *full* batch and the element's index ``j`` within the sample's
mask (row-major over the per-sample mask shape, ``P`` elements)::

    key  = mix64(seed mod 2^64)
    h    = mix64(key + (n * P + j + 1) * 0x9E3779B97F4A7C15  mod 2^64)
    u    = (h >> 11) * 2^-53                       the top 53 bits: a double in [0, 1)
    keep = u >= rate     (computed exactly as the integer test  h >> 11 >= ceil(rate * 2^53))

    mix64(z): z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
              z = (z ^ (z >> 27)) * 0x94D049BB133111EB
              return z ^ (z >> 31)              (all mod 2^64)

``h`` is output number ``n * P + j`` of the SplitMix64 generator started in state ``key``
(G. Steele, D. Lea, C. Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014;
constants and the 53-bit double conversion from S. Vigna's splitmix64.c,
https://prng.di.unimi.it/splitmix64.c): a counter-based generator, like NumPy's Philox, where
any output is computed directly from its counter. A shard holding samples ``a:b`` of the batch
passes ``sample_offset=a`` and gets exactly the rows ``a:b`` of the full batch's mask, so
masks depend neither on the thread count nor on how the batch is split across workers or MPI
ranks. Both twins compute the hash with the same unsigned 64-bit wrap-around operations
(NumPy uint64 arrays, Numba uint64 scalars) and give bit-identical masks (tested).

``noise_shape`` (Keras's argument without its batch axis): the per-sample mask shape, one
entry per axis of a sample, each either that axis's size (or None) or 1 where one mask value is
shared along the axis. ``(1, 1, C)`` on (N, H, W, C) drops whole channels (SpatialDropout2D).
The layer converts Keras's full ``noise_shape`` (batch axis first) by dropping its first entry.
"""

from __future__ import annotations

from math import ceil, prod
from typing import NamedTuple

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: SplitMix64's state increment
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


class DropoutCache(NamedTuple):
    """mask: uint8 (N,) + per-sample mask shape, 1 = kept. scale: x's dtype scalar, 1 / (1 - rate)."""

    mask: np.ndarray
    scale: np.generic


def mix64(z):
    """SplitMix64's output function on a Python int (mod 2^64): a bijection of 64-bit words."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def fold_seed(seed, *words):
    """One 64-bit seed from several integers, e.g. ``fold_seed(layer_seed, step, layer_index)``.

    Each word is mixed in with ``h = mix64(h + (word + 1) * GOLDEN)``, so (seed, 1, 2) and
    (seed, 2, 1) give unrelated results.
    """
    h = mix64(int(seed))
    for w in words:
        h = mix64(h + ((int(w) + 1) * GOLDEN & MASK64))
    return h


def _mask_shape(x_shape, noise_shape):
    """The per-sample mask shape: x_shape[1:] or noise_shape (None entries -> x's size). Raises ValueError."""
    sample = tuple(x_shape[1:])
    if noise_shape is None:
        return sample
    ns = tuple(noise_shape)
    if len(ns) != len(sample):
        raise ValueError(
            f"noise_shape {ns} must have one entry per axis of a sample {sample} "
            "(Keras's noise_shape without the batch axis)")
    out = tuple(s if d is None else int(d) for d, s in zip(ns, sample))
    if any(d not in (1, s) for d, s in zip(out, sample)):
        raise ValueError(f"noise_shape {ns}: each entry must be 1 or the sample's size {sample}")
    return out


def _check(rate, sample_offset):
    if not 0 <= rate < 1:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if not 0 <= sample_offset < 2**63:
        raise ValueError(f"sample_offset is an index into the batch, >= 0; got {sample_offset}")


def _threshold(rate):
    """The integer t with: (h >> 11) * 2^-53 >= rate  <=>  (h >> 11) >= t (exact: rate * 2^53 is)."""
    return ceil(float(rate) * 2.0 ** 53)


def _scale(rate, dtype):
    return np.dtype(dtype).type(1.0 / (1.0 - float(rate)))


# --------------------------------------------------------------------------- NumPy twins


def _mix64_array(z):
    """mix64 on a uint64 array (wrap-around arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


def dropout_mask_numpy(seed, sample_offset, n, mask_shape, rate):
    """The keep mask of samples sample_offset : sample_offset + n: uint8 (n,) + mask_shape, 1 = kept."""
    P = prod(mask_shape)
    sample = np.uint64(sample_offset) + np.arange(n, dtype=np.uint64)     # (n,) full-batch indices
    counter = sample[:, None] * np.uint64(P) + np.arange(P, dtype=np.uint64)  # (n, P)
    h = _mix64_array(np.uint64(mix64(int(seed))) + (counter + np.uint64(1)) * np.uint64(GOLDEN))
    keep = (h >> np.uint64(11)) >= np.uint64(_threshold(rate))
    return keep.astype(np.uint8).reshape((n,) + tuple(mask_shape))


def dropout_forward_numpy(x, rate, seed, sample_offset, noise_shape=None, ws=None):
    """Inverted dropout, training mode (readable twin).

    Args:
        x: (N, ...). rate: drop probability in [0, 1). seed: int (any, taken mod 2^64).
        sample_offset: index of x[0] in the full batch (0 unless x is a shard of it).
        noise_shape: None or the per-sample mask shape (1 where shared), see the module doc.
    Returns:
        y: x's shape and dtype, x * keep * 1 / (1 - rate) (dropped values exactly 0);
        cache: :class:`DropoutCache`.
    Raises:
        ValueError: rate outside [0, 1); a negative sample_offset; noise_shape not of a sample's
            rank, or an entry neither 1 nor the axis size.
    """
    _check(rate, sample_offset)
    mask = dropout_mask_numpy(seed, sample_offset, x.shape[0], _mask_shape(x.shape, noise_shape), rate)
    scale = _scale(rate, x.dtype)
    y = np.where(mask != 0, x * scale, x.dtype.type(0))  # mask broadcasts along its 1s
    return y, DropoutCache(mask, scale)


def dropout_backward_numpy(dy, cache, ws=None):
    """Dropout backward. dy: (N, ...). Returns dx = dy * mask * scale (0 where dropped), dy's dtype."""
    return np.where(cache.mask != 0, dy * cache.scale, dy.dtype.type(0))


# --------------------------------------------------------------------------- Numba versions
#
# Per sample (prange over the batch: each sample's elements are written by one iteration). With
# no noise_shape one fused pass hashes, writes the mask and y. With a broadcast mask the mask is
# hashed first (P values per sample), then applied through `index`: for element r of a sample
# (flat, row-major), index[r] is the flat position of its mask value.

from numba import njit, prange  # noqa: E402

from npcnn.kernels.workspace import buffer, run_parallel  # noqa: E402

_U1 = np.uint64(1)
_S11 = np.uint64(11)
_S27 = np.uint64(27)
_S30 = np.uint64(30)
_S31 = np.uint64(31)
_GOLDEN = np.uint64(GOLDEN)
_MIX1 = np.uint64(MIX1)
_MIX2 = np.uint64(MIX2)


@njit(cache=True, nogil=True, inline="always")
def _keep(key, counter, threshold):
    """1 when SplitMix64 output ``counter`` of state ``key`` passes the threshold (all uint64)."""
    z = key + (counter + _U1) * _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return (z >> _S11) >= threshold


@njit(cache=True, nogil=True)
def _mask_sample(n, key, n0, threshold, mask):
    """Row n of mask (N, P) uint8: the keep bits of full-batch sample n0 + n."""
    P = mask.shape[1]
    base = (n0 + np.uint64(n)) * np.uint64(P)
    mr = mask[n]
    for j in range(P):
        mr[j] = 1 if _keep(key, base + np.uint64(j), threshold) else 0


@njit(cache=True, nogil=True)
def _apply_sample(x, n, mask, index, full, scale, y):
    """Row n of x, y (N, R): y = x * scale where the mask keeps (mask[n, r], or mask[n, index[r]]), else 0."""
    xr = x[n]
    mr = mask[n]
    yr = y[n]
    for r in range(x.shape[1]):
        k = mr[r] if full else mr[index[r]]
        yr[r] = xr[r] * scale if k != 0 else 0


@njit(cache=True, nogil=True)
def _fwd_sample(x, n, key, n0, threshold, scale, mask, y, index, full):
    """Sample n: its mask, then y. With no broadcast (full) one fused loop hashes and writes both."""
    if full:
        P = x.shape[1]
        base = (n0 + np.uint64(n)) * np.uint64(P)
        xr = x[n]
        mr = mask[n]
        yr = y[n]
        for j in range(P):
            if _keep(key, base + np.uint64(j), threshold):
                mr[j] = 1
                yr[j] = xr[j] * scale
            else:
                mr[j] = 0
                yr[j] = 0
    else:
        _mask_sample(n, key, n0, threshold, mask)
        _apply_sample(x, n, mask, index, False, scale, y)


@njit(parallel=True, cache=True, nogil=True)
def _fwd_par(x, key, n0, threshold, scale, mask, y, index, full):
    """x, y (N, R); mask (N, P) uint8; index (R,) int64 (read when not full); scalars uint64 / x's dtype."""
    for n in prange(x.shape[0]):
        _fwd_sample(x, n, key, n0, threshold, scale, mask, y, index, full)


@njit(cache=True, nogil=True)
def _fwd_ser(x, key, n0, threshold, scale, mask, y, index, full):
    for n in range(x.shape[0]):
        _fwd_sample(x, n, key, n0, threshold, scale, mask, y, index, full)


@njit(parallel=True, cache=True, nogil=True)
def _bwd_par(dy, mask, index, full, scale, dx):
    """dy, dx (N, R); mask (N, P) uint8; index (R,) int64."""
    for n in prange(dy.shape[0]):
        _apply_sample(dy, n, mask, index, full, scale, dx)


@njit(cache=True, nogil=True)
def _bwd_ser(dy, mask, index, full, scale, dx):
    for n in range(dy.shape[0]):
        _apply_sample(dy, n, mask, index, full, scale, dx)


def _mask_index(sample_shape, mask_shape, ws, name):
    """(full, index): full when the mask is not broadcast; else index (R,) int64, the flat mask
    position of each flat element of a sample (a workspace buffer)."""
    if tuple(mask_shape) == tuple(sample_shape):
        return True, _NO_INDEX
    index = buffer(ws, name, (prod(sample_shape),), np.int64)
    index.reshape(sample_shape)[...] = np.arange(prod(mask_shape), dtype=np.int64).reshape(mask_shape)
    return False, index


_NO_INDEX = np.zeros(0, np.int64)


def _contiguous(a, ws, name):
    if a.flags.c_contiguous:
        return a
    out = buffer(ws, name, a.shape, a.dtype)
    out[...] = a
    return out


def dropout_forward_numba(x, rate, seed, sample_offset, noise_shape=None, ws=None):
    """Inverted dropout (Numba); same arguments, result, mask and errors as :func:`dropout_forward_numpy`.

    y and the cache's mask are workspace buffers.
    """
    _check(rate, sample_offset)
    x = _contiguous(np.asarray(x), ws, "dropout_forward.x")
    N = x.shape[0]
    mask_shape = _mask_shape(x.shape, noise_shape)
    full, index = _mask_index(x.shape[1:], mask_shape, ws, "dropout_forward.index")
    mask = buffer(ws, "dropout_forward.mask", (N,) + mask_shape, np.uint8)
    y = buffer(ws, "dropout_forward.y", x.shape, x.dtype)
    scale = _scale(rate, x.dtype)
    fn = _fwd_par if run_parallel(x.size, ws) else _fwd_ser
    fn(x.reshape(N, -1), np.uint64(mix64(int(seed))), np.uint64(sample_offset), np.uint64(_threshold(rate)),
       scale, mask.reshape(N, -1), y.reshape(N, -1), index, full)
    return y, DropoutCache(mask, scale)


def dropout_backward_numba(dy, cache, ws=None):
    """Dropout backward (Numba): dx = dy * mask * scale, as :func:`dropout_backward_numpy`; dx is a workspace buffer."""
    dy = _contiguous(np.asarray(dy), ws, "dropout_backward.dy")
    N = dy.shape[0]
    mask = cache.mask
    full, index = _mask_index(dy.shape[1:], mask.shape[1:], ws, "dropout_backward.index")
    dx = buffer(ws, "dropout_backward.dx", dy.shape, dy.dtype)
    fn = _bwd_par if run_parallel(dy.size, ws) else _bwd_ser
    fn(dy.reshape(N, -1), np.ascontiguousarray(mask).reshape(N, -1), index, full,
       dy.dtype.type(cache.scale), dx.reshape(N, -1))
    return dx


KERNELS = {
    "dropout_forward": (dropout_forward_numpy, dropout_forward_numba),
    "dropout_backward": (dropout_backward_numpy, dropout_backward_numba),
}
