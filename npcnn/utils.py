"""Small shared helpers: seeding, name suggestions, atomic file writes, argument checks."""

from __future__ import annotations

import difflib
import os
import tempfile
from contextlib import contextmanager

import numpy as np

_rng = np.random.default_rng()


def set_random_seed(seed: int) -> None:
    """Seed npcnn's global generator (weight initialisation, shuffling), like ``keras.utils.set_random_seed``.

    Also seeds NumPy's legacy global generator and Python's ``random`` for user code.
    """
    global _rng
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    import random

    _rng = np.random.default_rng(int(seed))
    np.random.seed(int(seed) % 2**32)
    random.seed(int(seed))


def get_rng() -> np.random.Generator:
    """Return npcnn's global random generator."""
    return _rng


def did_you_mean(name, choices) -> str:
    """Return " Did you mean 'x'?" for the closest valid choice, or a list of the valid ones."""
    close = difflib.get_close_matches(str(name).lower(), list(choices), n=1, cutoff=0.5)
    if close:
        return f". Did you mean {close[0]!r}?"
    return f". Valid names: {', '.join(repr(c) for c in choices)}"


@contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file next to ``path``; rename it over ``path`` only if the block succeeds.

    A crash (or SIGKILL) in the middle leaves either the old file or none, never a half-written one.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def positive_int(value, name, owner=None):
    """Return ``value`` as int if it is a positive integer, else raise naming the argument."""
    where = f"{owner}: " if owner else ""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{where}{name} must be a positive integer, got {value!r}")
    return int(value)


def int_pair(value, name, owner=None):
    """Normalise an int or a pair of ints (Keras's kernel_size/strides/pool_size) to a tuple of 2."""
    where = f"{owner}: " if owner else ""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{where}{name} must be an int or a tuple of 2 ints, got {value!r}")
    return tuple(positive_int(v, name, owner) for v in value)


def get_rng_state() -> dict:
    """A JSON-able copy of the state of npcnn's global generator (for checkpoints).

    Example::

        state = get_rng_state()          # {'bit_generator': 'PCG64', 'state': {...}, ...}
        json.dumps(state)                # plain dicts and ints
        set_rng_state(state)             # the next draws repeat exactly
    """
    import copy

    return copy.deepcopy(_rng.bit_generator.state)


def set_rng_state(state: dict) -> None:
    """Restore a state returned by :func:`get_rng_state`; the following draws repeat exactly.

    Raises:
        ValueError: ``state`` is not a NumPy bit-generator state.
    """
    global _rng
    if not isinstance(state, dict) or not isinstance(state.get("bit_generator"), str):
        raise ValueError(f"set_rng_state: expected a dict from get_rng_state(), got {type(state).__name__}")
    name = state["bit_generator"]
    bitgen_cls = getattr(np.random, name, None)
    if not (isinstance(bitgen_cls, type) and issubclass(bitgen_cls, np.random.BitGenerator)):
        raise ValueError(f"set_rng_state: unknown bit generator {name!r}")
    if type(_rng.bit_generator) is bitgen_cls:
        _rng.bit_generator.state = state
    else:
        bitgen = bitgen_cls()
        bitgen.state = state
        _rng = np.random.Generator(bitgen)
