"""Weight initialisers with Keras's names and fan conventions.

For a Dense kernel (D, U): fan_in = D, fan_out = U.
For a Conv2D kernel (KH, KW, C, F): fan_in = KH*KW*C, fan_out = KH*KW*F.
"""

from __future__ import annotations

import numpy as np

from npcnn.utils import did_you_mean, get_rng


def _fans(shape):
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) >= 3:
        receptive = int(np.prod(shape[:-2]))
        return shape[-2] * receptive, shape[-1] * receptive
    return shape[0] if shape else 1, shape[0] if shape else 1


def zeros(shape, dtype=np.float32):
    """All zeros."""
    return np.zeros(shape, dtype=dtype)


def ones(shape, dtype=np.float32):
    """All ones."""
    return np.ones(shape, dtype=dtype)


def glorot_uniform(shape, dtype=np.float32):
    """U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out)) (Keras's default kernel initialiser)."""
    fan_in, fan_out = _fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return get_rng().uniform(-limit, limit, size=shape).astype(dtype)


def glorot_normal(shape, dtype=np.float32):
    """Truncated normal (2 std), std = sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(shape)
    return _truncated_normal(shape, np.sqrt(2.0 / (fan_in + fan_out)), dtype)


def he_uniform(shape, dtype=np.float32):
    """U(-limit, limit), limit = sqrt(6 / fan_in)."""
    fan_in, _ = _fans(shape)
    limit = np.sqrt(6.0 / fan_in)
    return get_rng().uniform(-limit, limit, size=shape).astype(dtype)


def he_normal(shape, dtype=np.float32):
    """Truncated normal (2 std), std = sqrt(2 / fan_in)."""
    fan_in, _ = _fans(shape)
    return _truncated_normal(shape, np.sqrt(2.0 / fan_in), dtype)


def _truncated_normal(shape, std, dtype):
    # Keras divides by .87962566 so the truncated distribution has the requested std.
    std = std / 0.87962566103423978
    rng = get_rng()
    out = rng.standard_normal(size=shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(out) > 2
    return (out * std).astype(dtype)


_INITIALIZERS = {
    "zeros": zeros, "ones": ones, "glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal,
    "he_uniform": he_uniform, "he_normal": he_normal,
}


def get(identifier):
    """Return an initialiser function from a name or a callable ``f(shape, dtype)``."""
    if callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _INITIALIZERS:
        return _INITIALIZERS[identifier.lower()]
    raise ValueError(f"Unknown initializer {identifier!r}" + did_you_mean(identifier, _INITIALIZERS))
