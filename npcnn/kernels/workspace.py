"""Reusable scratch buffers for the kernels: the one buffer convention, ``ws``.

Every kernel, NumPy twin and Numba version alike, takes one keyword ``ws=None``. A caller that
runs a kernel every step (a layer, or a fused block of layers) owns a :class:`Workspace` and
passes it each time; a Numba kernel asks :func:`buffer` for every array it allocates, outputs
included, under a name unique to that kernel (``"im2col.cols"``, ``"conv.out"``, ``"pool.argmax"``,
``"fused.dp_masked"``...), and gets the same memory back on every call with the same shapes,
instead of a fresh allocation. Since the names differ from kernel to kernel, one Workspace can
serve a whole layer or a fused block (conv + pool) without two kernels sharing a buffer. The
twins ignore ``ws`` and allocate as NumPy does.

The consequence, which every caller must respect:

* with a ``ws``, a kernel's outputs (and the arrays its cache refers to) are buffers that the
  next call with the same ``ws`` overwrites. Whatever must outlive that call is copied by its
  owner (the model copies what leaves it: its predictions, its input gradient);
* with ``ws=None``, every output is a fresh array (the pure-function behaviour).

Gradients of parameters (dkernel, dbias) are always fresh arrays: they are summed across the
data-parallel shards and handed to the optimizer after the step.

A Workspace also says which driver the Numba kernels may use (:func:`run_parallel`): its
``parallel`` attribute is True (the ``prange`` drivers for large work), False (the serial drivers
only, e.g. a data-parallel shard already runs on its own thread) or None (decide by
``numba.get_num_threads() > 1``; for direct calls from user code).
"""

from __future__ import annotations

import numpy as np


class Workspace(dict):
    """Named scratch buffers (name -> ndarray) plus the driver choice ``parallel``.

    Args:
        parallel: True (prange drivers allowed for large work), False (serial drivers only),
            or None (decide by ``numba.get_num_threads() > 1`` at each call).

    Example::

        ws = Workspace(parallel=False)
        y, cache = npcnn.kernels.conv2d_forward(x, kernel, bias, (1, 1), pads, out_hw, ws=ws)
        sorted(ws)   # ['conv.out', 'im2col.cols']
    """

    def __init__(self, *args, parallel=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.parallel = parallel

    def nbytes(self):
        """Total bytes held by the buffers."""
        return sum(a.nbytes for a in self.values())

    def __repr__(self):
        items = ", ".join(f"{k!r}: {v.shape} {v.dtype}" for k, v in self.items())
        return f"Workspace(parallel={self.parallel!r}, {{{items}}})"


def buffer(ws, name, shape, dtype, zero=False):
    """Return ``ws[name]`` if it has ``shape`` and ``dtype``, else a new array stored there.

    Args:
        ws: a Workspace (or any dict), or None (None: always a new array, never stored).
        name: the buffer's key, ``"<kernel>.<array>"``. shape: tuple of ints. dtype: numpy dtype.
        zero: fill with zeros (otherwise the content is undefined).
    Returns:
        an array of ``shape`` and ``dtype`` (C-contiguous).
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    arr = None if ws is None else ws.get(name)
    if arr is None or arr.shape != shape or arr.dtype != dtype:
        arr = np.empty(shape, dtype=dtype)
        if ws is not None:
            ws[name] = arr
    if zero:
        arr.fill(0)
    return arr


# Each Numba kernel comes in two drivers over the same per-image (or per-chunk) body: a
# ``prange`` one and a plain loop. Waking the worker threads costs tens of microseconds (far
# more on a loaded machine), more than small layers' whole kernel, so below this many
# elements of work the serial driver runs.
PARALLEL_MIN_ELEMENTS = 1 << 19


def run_parallel(n_elements, ws=None):
    """True when a kernel touching ``n_elements`` array elements should use its prange driver.

    False below :data:`PARALLEL_MIN_ELEMENTS`; otherwise ``ws.parallel`` when ``ws`` is a
    :class:`Workspace` whose ``parallel`` is not None, else ``numba.get_num_threads() > 1``.
    """
    if n_elements < PARALLEL_MIN_ELEMENTS:
        return False
    if isinstance(ws, Workspace) and ws.parallel is not None:
        return bool(ws.parallel)
    import numba

    return numba.get_num_threads() > 1
