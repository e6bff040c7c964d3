"""The optimizers' update rules (Keras's forms) as kernels: readable NumPy twins and fused Numba passes.

Adam (and AdamW, amsgrad), at step t, with ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``
computed by the caller::

    p = p - p * decay                                   (decoupled weight decay; decay = lr * weight_decay)
    m = m + (1 - beta_1) * (g - m)
    v = v + (1 - beta_2) * (g^2 - v)
    max_v = max(max_v, v); use max_v for v below        (amsgrad)
    p = p - alpha * m / (sqrt(v) + epsilon)

SGD (:func:`sgd_update_numpy`) and RMSprop (:func:`rmsprop_update_numpy`) give their rules in their
docstrings (docs/optimizers.md has all of them).

All arrays have one shape (any) and dtype; the parameter and the optimizer's slots are updated in
place; g is only read. These kernels are not per-layer and allocate nothing reusable: they accept
``ws=None`` as every kernel does, and ignore it (the shard sum is always a fresh array: the
optimizer keeps it). The NumPy twins make several passes over memory with temporaries; the Numba
versions one, element by element, in the same order of float operations (no fastmath, the scalars
cast to the arrays' dtype as NumPy's weak Python floats are), so the two agree to the last bit on
float32 and float64 (tested)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def adam_update_numpy(p, g, m, v, beta_1, beta_2, alpha, epsilon, max_v=None, decay=0.0, ws=None):
    """Adam step in place (readable twin). p, g, m, v (and max_v): same shape and dtype. Returns None.

    ``max_v`` (amsgrad): the running maximum of v, updated in place and used instead of v.
    ``decay`` (AdamW's decoupled weight decay, ``lr * weight_decay``): p -= p * decay first.
    """
    if decay:
        p -= p * decay
    m += (1 - beta_1) * (g - m)
    v += (1 - beta_2) * (g * g - v)
    if max_v is not None:
        np.maximum(max_v, v, out=max_v)
    denom = np.sqrt(v if max_v is None else max_v)
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


@njit(cache=True, nogil=True, error_model="numpy")
def _adam_general_flat(p, g, m, v, max_v, amsgrad, c1, c2, alpha, epsilon, decay):
    """Adam with the options: amsgrad (max_v is used only when ``amsgrad``), decay (0: none)."""
    for i in range(p.size):
        pi = p[i]
        if decay != 0:
            pi = pi - pi * decay
        gi = g[i]
        mi = m[i] + c1 * (gi - m[i])
        vi = v[i] + c2 * (gi * gi - v[i])
        m[i] = mi
        v[i] = vi
        if amsgrad:
            mx = max_v[i]
            if vi > mx or vi != vi:  # as np.maximum: a NaN on either side gives NaN
                mx = vi
            max_v[i] = mx
            vi = mx
        p[i] = pi - (mi / (math.sqrt(vi) + epsilon)) * alpha


def _contiguous_alike(p, *arrays):
    return all(a is None or (a.flags.c_contiguous and a.dtype == p.dtype and a.shape == p.shape)
               for a in (p,) + arrays)


def adam_update_numba(p, g, m, v, beta_1, beta_2, alpha, epsilon, max_v=None, decay=0.0, ws=None):
    """Adam step in place (one fused Numba pass); same arguments and result as the twin.

    Falls back to the twin for arrays that are not contiguous (their flat views would be copies).
    """
    if not _contiguous_alike(p, g, m, v, max_v):
        return adam_update_numpy(p, g, m, v, beta_1, beta_2, alpha, epsilon, max_v, decay)
    t = p.dtype.type  # the scalars in the arrays' precision, as NumPy's weak Python floats are
    if max_v is None and not decay:
        _adam_flat(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
                   t(1 - beta_1), t(1 - beta_2), t(alpha), t(epsilon))
        return
    mv = (max_v if max_v is not None else v).reshape(-1)
    _adam_general_flat(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), mv, max_v is not None,
                       t(1 - beta_1), t(1 - beta_2), t(alpha), t(epsilon), t(decay))


# --------------------------------------------------------------------------- SGD (Keras's rule)
def sgd_update_numpy(p, g, velocity, momentum, lr, nesterov=False, decay=0.0, ws=None):
    """SGD step in place (readable twin), Keras's form. p, g, velocity: same shape and dtype.

    ``decay`` (decoupled weight decay, ``lr * weight_decay``): p -= p * decay first. Then::

        velocity is None (momentum 0):  p = p - lr * g
        else:  velocity = momentum * velocity - lr * g
               p = p + velocity                             (nesterov: p = p + momentum * velocity - lr * g)
    """
    if decay:
        p -= p * decay
    if velocity is None:
        p -= lr * g
        return
    step = lr * g
    velocity *= momentum
    velocity -= step
    if nesterov:
        p += momentum * velocity - step
    else:
        p += velocity


@njit(cache=True, nogil=True)
def _sgd_flat(p, g, vel, use_velocity, momentum, lr, nesterov, decay):
    for i in range(p.size):
        pi = p[i]
        if decay != 0:
            pi = pi - pi * decay
        step = lr * g[i]
        if not use_velocity:
            p[i] = pi - step
            continue
        vi = vel[i] * momentum - step
        vel[i] = vi
        if nesterov:
            p[i] = pi + (momentum * vi - step)
        else:
            p[i] = pi + vi


def sgd_update_numba(p, g, velocity, momentum, lr, nesterov=False, decay=0.0, ws=None):
    """SGD step in place (one fused Numba pass); same arguments and result as the twin."""
    if not _contiguous_alike(p, g, velocity):
        return sgd_update_numpy(p, g, velocity, momentum, lr, nesterov, decay)
    t = p.dtype.type
    vel = (velocity if velocity is not None else p).reshape(-1)
    _sgd_flat(p.reshape(-1), g.reshape(-1), vel, velocity is not None, t(momentum), t(lr), bool(nesterov),
              t(decay))


# --------------------------------------------------------------------------- RMSprop (Keras's rule)
def rmsprop_update_numpy(p, g, v, rho, lr, epsilon, mom=None, momentum=0.0, mg=None, decay=0.0, ws=None):
    """RMSprop step in place (readable twin), Keras's form (epsilon *inside* the square root).

    p, g, v, mom, mg: same shape and dtype (mom: the momentum buffer, None when momentum is 0; mg: the
    running mean gradient, None unless centered). ``decay``: p -= p * decay first. Then::

        v   = rho * v + (1 - rho) * g^2
        mg  = rho * mg + (1 - rho) * g                      (centered only)
        den = v - mg^2 + epsilon      (centered)   or   v + epsilon
        inc = lr * g / sqrt(den)
        mom = momentum * mom + inc;  p = p - mom           (momentum > 0)   or   p = p - inc
    """
    if decay:
        p -= p * decay
    v *= rho
    v += (1 - rho) * (g * g)
    if mg is not None:
        mg *= rho
        mg += (1 - rho) * g
        den = v - mg * mg
        den += epsilon
    else:
        den = v + epsilon
    np.sqrt(den, out=den)
    inc = lr * g
    inc /= den
    if mom is not None:
        mom *= momentum
        mom += inc
        p -= mom
    else:
        p -= inc


@njit(cache=True, nogil=True, error_model="numpy")
def _rmsprop_flat(p, g, v, mom, use_mom, mg, centered, rho, c, lr, epsilon, momentum, decay):
    for i in range(p.size):
        pi = p[i]
        if decay != 0:
            pi = pi - pi * decay
        gi = g[i]
        vi = v[i] * rho + c * (gi * gi)
        v[i] = vi
        if centered:
            mgi = mg[i] * rho + c * gi
            mg[i] = mgi
            den = (vi - mgi * mgi) + epsilon
        else:
            den = vi + epsilon
        inc = (lr * gi) / math.sqrt(den)
        if use_mom:
            mi = mom[i] * momentum + inc
            mom[i] = mi
            p[i] = pi - mi
        else:
            p[i] = pi - inc


def rmsprop_update_numba(p, g, v, rho, lr, epsilon, mom=None, momentum=0.0, mg=None, decay=0.0, ws=None):
    """RMSprop step in place (one fused Numba pass); same arguments and result as the twin."""
    if not _contiguous_alike(p, g, v, mom, mg):
        return rmsprop_update_numpy(p, g, v, rho, lr, epsilon, mom, momentum, mg, decay)
    t = p.dtype.type
    flat_v = v.reshape(-1)
    _rmsprop_flat(p.reshape(-1), g.reshape(-1), flat_v, (mom if mom is not None else v).reshape(-1),
                  mom is not None, (mg if mg is not None else v).reshape(-1), mg is not None,
                  t(rho), t(1 - rho), t(lr), t(epsilon), t(momentum), t(decay))


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
    "sgd_update": (sgd_update_numpy, sgd_update_numba),
    "rmsprop_update": (rmsprop_update_numpy, rmsprop_update_numba),
    "add_arrays": (add_arrays_numpy, add_arrays_numba),
    "all_finite": (all_finite_numpy, all_finite_numba),
}
