"""Reusable scratch buffers for the kernels.

A layer owns a plain dict (its *workspace*) and passes it to the kernels; a kernel asks
:func:`buffer` for a named array of a given shape and dtype and gets the same memory back
on every step with the same batch size, instead of a fresh allocation. With no workspace
(``None``) every call allocates, which is what the pure functions do by default.
"""

from __future__ import annotations

import numpy as np


def buffer(workspace, name, shape, dtype, zero=False):
    """Return ``workspace[name]`` if it has ``shape`` and ``dtype``, else a new array stored there.

    Args:
        workspace: dict or None (None: always a new array, never stored).
        name: the buffer's key. shape: tuple of ints. dtype: numpy dtype.
        zero: fill with zeros (otherwise the content is undefined).
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    arr = None if workspace is None else workspace.get(name)
    if arr is None or arr.shape != shape or arr.dtype != dtype:
        arr = np.empty(shape, dtype=dtype)
        if workspace is not None:
            workspace[name] = arr
    if zero:
        arr.fill(0)
    return arr


# Each Numba kernel comes in two drivers over the same per-image (or per-chunk) body: a
# ``prange`` one and a plain loop. Waking the worker threads costs tens of microseconds (far
# more on a loaded machine), more than small layers' whole kernel, so below this many
# elements of work the serial driver runs.
PARALLEL_MIN_ELEMENTS = 1 << 19


def run_parallel(n_elements):
    """True when a kernel touching ``n_elements`` array elements should use its prange driver."""
    if n_elements < PARALLEL_MIN_ELEMENTS:
        return False
    import numba

    return numba.get_num_threads() > 1
