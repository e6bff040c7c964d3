"""Weight initialisers with Keras's names and fan conventions.

For a Dense kernel (D, U): fan_in = D, fan_out = U.
For a Conv2D kernel (KH, KW, C, F): fan_in = KH*KW*C, fan_out = KH*KW*F.
"""

from __future__ import annotations

import numpy as np

from npcnn.utils import get_rng, lookup


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


def get(identifier, owner=None, name="initializer"):
    """Return an initialiser function from a name or a callable ``f(shape, dtype)``.

    A callable is wrapped so that an array of the wrong shape, a non-numeric or a
    non-finite result is refused when the layer is built.

    Raises:
        ValueError: an unknown name (the closest valid one is suggested).
        TypeError: neither a name nor a callable.
    """
    if callable(identifier):
        return _checked(identifier, owner, name)
    if not isinstance(identifier, str):
        raise TypeError(
            f"{owner + ': ' if owner else ''}{name} must be a name ({', '.join(map(repr, _INITIALIZERS))}) "
            f"or a callable f(shape, dtype), got {identifier!r} ({type(identifier).__name__})"
        )
    return lookup(identifier, _INITIALIZERS, name, owner)


def _checked(fn, owner, name):
    if getattr(fn, "_npcnn_checked", False) or fn in _INITIALIZERS.values():
        return fn

    def init(shape, dtype=np.float32):
        out = np.asarray(fn(shape, dtype))
        where = f"{owner + ': ' if owner else ''}{name} {getattr(fn, '__name__', fn)!r}"
        if out.shape != tuple(shape):
            raise ValueError(f"{where} returned an array of shape {out.shape}, expected {tuple(shape)}")
        if out.dtype.kind not in "biuf":
            raise TypeError(f"{where} returned dtype {out.dtype}, expected numbers")
        out = out.astype(dtype, copy=False)
        if not np.isfinite(out).all():
            raise ValueError(f"{where} returned NaN or Inf values")
        return out

    init._npcnn_checked = True
    init.__name__ = getattr(fn, "__name__", "initializer")
    init.__doc__ = getattr(fn, "__doc__", None)
    return init
