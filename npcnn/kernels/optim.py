"""The Adam update (Keras's rule) as a kernel: the readable NumPy twin and one fused Numba pass.

At step t, with ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)`` computed by the caller::

    m = m + (1 - beta_1) * (g - m)
    v = v + (1 - beta_2) * (g^2 - v)
    p = p - alpha * m / (sqrt(v) + epsilon)

All arrays have one shape (any) and dtype; p, m, v are updated in place; g is only read.
These kernels are not per-layer and allocate nothing reusable: they accept ``ws=None`` as every
kernel does, and ignore it (the shard sum is always a fresh array: the optimizer keeps it).
The NumPy twin makes about eight passes over memory with temporaries; the Numba version one,
element by element, in the same order of float operations (no fastmath), so the two agree to
the last bit on float32 and float64 (tested).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def adam_update_numpy(p, g, m, v, beta_1, beta_2, alpha, epsilon, ws=None):
    """Adam step in place (readable twin). p, g, m, v: same shape and dtype. Returns None."""
    m += (1 - beta_1) * (g - m)
    v += (1 - beta_2) * (g * g - v)
    denom = np.sqrt(v)
    denom += epsilon
    np.divide(m, denom, out=denom)
    denom *= alpha
    p -= denom


@njit(cache=True, nogil=True, error_model="numpy")  # IEEE division: no zero check, so it vectorises
def _adam_flat(p, g, m, v, c1, c2, alpha, epsilon):
    for i in range(p.size):
        gi = g[i]
        mi = m[i] + c1 * (gi - m[i])
        vi = v[i] + c2 * (gi * gi - v[i])
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - (mi / (math.sqrt(vi) + epsilon)) * alpha


def adam_update_numba(p, g, m, v, beta_1, beta_2, alpha, epsilon, ws=None):
    """Adam step in place (one fused Numba pass); same arguments and result as the twin.

    Falls back to the twin for arrays that are not contiguous (their flat views would be copies).
    """
    arrays = (p, g, m, v)
    if not all(a.flags.c_contiguous and a.dtype == p.dtype and a.shape == p.shape for a in arrays):
        return adam_update_numpy(p, g, m, v, beta_1, beta_2, alpha, epsilon)
    t = p.dtype.type  # the scalars in the arrays' precision, as NumPy's weak Python floats are
    _adam_flat(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
               t(1 - beta_1), t(1 - beta_2), t(alpha), t(epsilon))


# --------------------------------------------------------------------------- gradient bookkeeping
# The two passes between the backward and the update: summing the data-parallel shards'
# gradients (npcnn.parallel) and checking that every gradient is finite before any weight
# moves (Sequential's NaN/Inf guard).


def add_arrays_numpy(arrays, ws=None):
    """arrays[0] + arrays[1] + ... in that order, as a new array (same shape and dtype)."""
    out = arrays[0].copy()
    for a in arrays[1:]:
        out += a
    return out


def all_finite_numpy(a, ws=None):
    """True when no element of ``a`` is NaN or +-inf."""
    return bool(np.isfinite(a).all())


@njit(cache=True, nogil=True)
def _add2(a, b, out):
    for i in range(out.size):
        out[i] = a[i] + b[i]


@njit(cache=True, nogil=True)
def _any_exponent_all_ones(bits, mask):
    """bits: the float array viewed as unsigned ints; NaN and inf are the values whose exponent
    field (``mask``) is all ones. An integer OR-reduction: vectorised, no early exit needed."""
    found = 0
    for i in range(bits.size):
        found |= (bits[i] & mask) == mask
    return found != 0


def add_arrays_numba(arrays, ws=None):
    """Same as :func:`add_arrays_numpy`; one fused pass for two contiguous arrays (the 2-core case)."""
    a = arrays[0]
    if len(arrays) != 2 or not all(x.flags.c_contiguous and x.dtype == a.dtype and x.shape == a.shape
                                   for x in arrays):
        return add_arrays_numpy(arrays)
    out = np.empty_like(a)
    _add2(a.reshape(-1), arrays[1].reshape(-1), out.reshape(-1))
    return out


_EXPONENT_BITS = {np.dtype(np.float32): (np.uint32, 0x7F800000), np.dtype(np.float64): (np.uint64, 0x7FF0000000000000)}


def all_finite_numba(a, ws=None):
    """Same as :func:`all_finite_numpy`, one integer pass over the bits (float32/float64, contiguous)."""
    kind = _EXPONENT_BITS.get(a.dtype)
    if kind is None or not a.flags.c_contiguous:
        return all_finite_numpy(a)
    utype, mask = kind
    return not _any_exponent_all_ones(a.reshape(-1).view(utype), utype(mask))


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "adam_update": (adam_update_numpy, adam_update_numba),
    "add_arrays": (add_arrays_numpy, add_arrays_numba),
    "all_finite": (all_finite_numpy, all_finite_numba),
}
