"""Small shared helpers: seeding, name suggestions, atomic file writes, argument checks."""

from __future__ import annotations

import difflib
import os
import re
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


def snake_case(name) -> str:
    """Keras's class name to name conversion: 'MaxPooling2D' -> 'max_pooling2d', 'GlorotUniform' -> 'glorot_uniform'."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def did_you_mean(name, choices) -> str:
    """Return " Did you mean 'x'?" for the closest valid choice, or a list of the valid ones."""
    close = difflib.get_close_matches(str(name).lower(), list(choices), n=1, cutoff=0.5)
    if close:
        return f". Did you mean {close[0]!r}?"
    return f". Valid names: {', '.join(repr(c) for c in choices)}"


@contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file next to ``path``; rename it over ``path`` only if the block succeeds.

    A crash (or SIGKILL) in the middle leaves either the old file or none, never a half-written one
    (a killed process may leave its ``.<name>.*.tmp`` file behind; nothing ever reads those).
    The file is fsynced before the rename and the folder after it; the new file keeps the old
    one's permissions (or the umask's default), not ``mkstemp``'s 0600.
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
        try:
            os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o666 & ~_umask())
        except OSError:
            pass
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory):
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ModelStateError(RuntimeError, ValueError):
    """The model is not ready for this call (no layers, not built, not compiled).

    A ``RuntimeError`` as in Keras, and also a ``ValueError`` so that every bad call
    to npcnn's public API can be caught as ``(ValueError, TypeError)``.
    """


class NotCompiledError(ModelStateError):
    """``fit``/``evaluate``/``train_on_batch`` called before ``compile``."""


class NotBuiltError(ModelStateError):
    """The model has no layers, or its input shape is not known yet."""


def _where(owner):
    return f"{owner}: " if owner else ""


def positive_int(value, name, owner=None):
    """Return ``value`` as int if it is a positive integer, else raise naming the argument.

    Raises:
        TypeError: not an integer (bools and floats such as 32.0 are refused).
        ValueError: zero or negative.
    """
    where = _where(owner)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{where}{name} must be a positive integer, got {value!r}")
    return int(value)


def int_pair(value, name, owner=None):
    """Normalise an int or a pair of ints (Keras's kernel_size/strides/pool_size) to a tuple of 2.

    Raises:
        TypeError: not an int or a tuple/list of 2 ints.
        ValueError: an entry is zero or negative (the message quotes the whole value).
    """
    where = _where(owner)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(
            f"{where}{name} must be a positive int or a tuple of 2 positive ints, got {value!r} "
            f"({type(value).__name__}{f' of length {len(value)}' if isinstance(value, (tuple, list)) else ''})"
        )
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(
                f"{where}{name} must be a positive int or a tuple of 2 positive ints, got {tuple(value)!r} "
                f"(an entry is {type(v).__name__})"
            )
        if v <= 0:
            raise ValueError(
                f"{where}{name} must be a positive int or a tuple of 2 positive ints, got {tuple(value)!r}"
            )
    return tuple(int(v) for v in value)


def lookup(identifier, registry, kind, owner=None):
    """``registry[identifier.lower()]`` for a name, or raise naming ``kind`` with the closest valid name.

    Raises:
        TypeError: ``identifier`` is not a string.
        ValueError: an unknown name (" Did you mean 'adam'?" or the list of valid names).
    """
    where = _where(owner)
    valid = ", ".join(repr(k) for k in registry)
    if not isinstance(identifier, str):
        raise TypeError(
            f"{where}{kind} must be a name ({valid}) or an instance, got {identifier!r} ({type(identifier).__name__})"
        )
    key = identifier.lower()
    if key not in registry:
        raise ValueError(f"{where}unknown {kind} {identifier!r}" + did_you_mean(identifier, registry))
    return registry[key]


def check_verbose(verbose, owner=None):
    """Keras's verbose: 0 (silent), 1 (progress bar), 2 (one line per epoch) or 'auto' (1)."""
    if isinstance(verbose, str) and verbose == "auto":
        return 1
    if isinstance(verbose, (int, np.integer)) and verbose in (0, 1, 2):
        return int(verbose)
    raise ValueError(f"{_where(owner)}verbose must be 0, 1, 2 or 'auto', got {verbose!r}")


def float_dtype(dtype, owner=None):
    """``np.dtype(dtype)`` if it is a floating type (float32 or float64), else raise naming ``dtype``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{_where(owner)}dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{_where(owner)}dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


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


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None (after saying so) when matplotlib is missing.

    matplotlib is an optional extra (``pip install -e ".[plot]"``); plots are written as PNG files.
    """
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plot]'): skipping the plot")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_flag(name, default):
    """The on/off switch in environment variable ``name`` (1/0, true/false, yes/no, on/off; unset or
    empty: ``default``).

    Raises:
        ValueError: any other value, naming the variable and the accepted values.
    """
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return bool(default)
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={os.environ[name]!r} is not an on/off value: use one of "
                     f"{', '.join(_TRUE)} (on) or {', '.join(_FALSE)} (off)")
