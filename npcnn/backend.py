"""Backend switch: which implementation of the kernels runs.

Every kernel in :mod:`npcnn.kernels` exists twice: a short, readable pure-NumPy
twin (``*_numpy``) and a compiled Numba version (``*_numba``). One switch picks
which one the layers call:

* the environment variable ``NPCNN_BACKEND=numpy|numba`` read at import, or
* :func:`set_backend` at run time (also usable as a context manager via
  :func:`use_backend`).

``numba`` is the default.
"""

from __future__ import annotations

import contextlib
import os

BACKENDS = ("numpy", "numba")


def _validate(name):
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(
            f"backend must be one of {BACKENDS}, got {name!r}. "
            "Set NPCNN_BACKEND=numpy or NPCNN_BACKEND=numba, or call npcnn.set_backend('numpy')."
        )
    return name.lower()


_backend = _validate(os.environ.get("NPCNN_BACKEND", "numba") or "numba")


def get_backend() -> str:
    """Return the active backend name, ``'numpy'`` or ``'numba'``."""
    return _backend


def set_backend(name: str) -> str:
    """Select the kernel backend (``'numpy'`` or ``'numba'``); returns the previous one."""
    global _backend
    previous = _backend
    _backend = _validate(name)
    return previous


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: run a block with another backend, then restore the previous one."""
    previous = set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)
