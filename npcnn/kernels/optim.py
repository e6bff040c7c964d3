"""The Adam update (Keras's rule) as a kernel: the readable NumPy twin and one fused Numba pass.

At step t, with ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)`` computed by the caller::

    m = m + (1 - beta_1) * (g - m)
    v = v + (1 - beta_2) * (g^2 - v)
    p = p - alpha * m / (sqrt(v) + epsilon)

All arrays have one shape (any) and dtype; p, m, v are updated in place; g is only read.
The NumPy twin makes about eight passes over memory with temporaries; the Numba version one,
element by element, in the same order of float operations (no fastmath), so the two agree to
the last bit on float32 and float64 (tested).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def adam_update_numpy(p, g, m, v, beta_1, beta_2, alpha, epsilon):
    """Adam step in place (readable twin). p, g, m, v: same shape and dtype."""
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


def adam_update_numba(p, g, m, v, beta_1, beta_2, alpha, epsilon):
    """Adam step in place (one fused Numba pass); same arguments and result as the twin.

    Falls back to the twin for arrays that are not contiguous (their flat views would be copies).
    """
    arrays = (p, g, m, v)
    if not all(a.flags.c_contiguous and a.dtype == p.dtype and a.shape == p.shape for a in arrays):
        return adam_update_numpy(p, g, m, v, beta_1, beta_2, alpha, epsilon)
    t = p.dtype.type  # the scalars in the arrays' precision, as NumPy's weak Python floats are
    _adam_flat(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
               t(1 - beta_1), t(1 - beta_2), t(alpha), t(epsilon))
