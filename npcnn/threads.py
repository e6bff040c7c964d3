"""One thread count for both of npcnn's thread pools: Numba's and BLAS's.

The training step alternates Numba kernels (im2col, col2im, pooling, ...) with BLAS GEMMs.
If each pool sized itself independently they could together run more threads than there
are cores and fight over them; :func:`set_num_threads` gives both the same count
(``threadpoolctl`` for BLAS / OpenMP libraries, ``numba.set_num_threads`` for Numba).

Numba's ``workqueue`` threading layer is selected (unless ``NUMBA_THREADING_LAYER`` says
otherwise): its idle workers sleep, while OpenMP's spin for a while after each kernel and
steal the cores from the BLAS threads of the GEMM that follows (measured: a conv forward
at batch 32 ran 3x slower on 2 cores with the OpenMP layer). The workqueue layer does not
allow parallel kernels to be launched from several Python threads at once.

On the Numba backend, training and inference batches are by default split into one shard per
thread instead (data parallelism, :mod:`npcnn.parallel`): each thread then runs serial kernels
and single-threaded BLAS on its shard, and the per-kernel thread hand-offs disappear.
``NPCNN_DATA_PARALLEL=0`` (or ``npcnn.set_data_parallel(False)``) goes back to splitting
every kernel across the threads.

The default is every core Numba sees (``numba.config.NUMBA_NUM_THREADS``, which honours
``NUMBA_NUM_THREADS``); the environment variable ``NPCNN_NUM_THREADS`` overrides it
at import.

Example::

    import npcnn
    npcnn.set_num_threads(2)
    npcnn.get_num_threads()   # 2
"""

from __future__ import annotations

import operator
import os

import numba

_limiter = None  # the threadpoolctl limit in force (kept alive so it stays applied)
_num_threads = None


def max_threads() -> int:
    """The most threads npcnn can use: Numba's pool size (all cores unless NUMBA_NUM_THREADS says less)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def set_num_threads(n) -> int:
    """Use ``n`` threads in both Numba kernels and BLAS; returns the previous setting.

    Args:
        n: a positive int, at most :func:`max_threads` (all cores by default).
    Raises:
        ValueError: n is not a positive integer or exceeds :func:`max_threads`.
    """
    global _limiter, _num_threads
    try:
        if isinstance(n, bool):
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise ValueError(f"set_num_threads: n must be a positive integer, got {n!r}") from None
    hi = max_threads()
    if not 1 <= n <= hi:
        raise ValueError(
            f"set_num_threads: n must be between 1 and {hi} (the cores Numba can use), got {n}"
        )
    previous = get_num_threads()
    from threadpoolctl import threadpool_limits

    _limiter = threadpool_limits(limits=n)
    numba.set_num_threads(n)
    _num_threads = n
    return previous


def get_num_threads() -> int:
    """The thread count npcnn's kernels and BLAS use (set by :func:`set_num_threads`, default all cores)."""
    if _num_threads is None:
        return max_threads()
    return _num_threads


def thread_info() -> dict:
    """What each pool reports now: {'npcnn': n, 'numba': n, 'numba_layer': str, 'blas': [threadpoolctl info]}."""
    from threadpoolctl import threadpool_info

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = "not started"
    return {
        "npcnn": get_num_threads(),
        "numba": numba.get_num_threads(),
        "numba_layer": layer,
        "blas": [
            {k: d.get(k) for k in ("internal_api", "num_threads", "architecture", "version", "threading_layer")}
            for d in threadpool_info()
        ],
    }


ENV_THREADS = "NPCNN_NUM_THREADS"


def threads_from_env(value, hi=None):
    """The thread count that ``NPCNN_NUM_THREADS=value`` asks for, checked.

    Raises:
        ValueError: not an integer in [1, :func:`max_threads`]; the message names the variable.
    """
    hi = max_threads() if hi is None else hi
    try:
        n = int(value.strip())
    except ValueError:
        n = None
    if n is None or not 1 <= n <= hi:
        raise ValueError(f"{ENV_THREADS}={value!r}: must be an integer between 1 and {hi} "
                         "(the cores Numba can use); unset it to use them all")
    return n


def _init_from_env():
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
    value = os.environ.get(ENV_THREADS)
    if value:
        set_num_threads(threads_from_env(value))


_init_from_env()
