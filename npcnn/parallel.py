"""Data parallelism across cores for the Numba backend: one batch, several shards, one update.

With ``n`` threads, a training batch of N images is cut into ``n`` contiguous shards; each
shard's forward, loss and backward run in their own Python thread through the model's plan, with
their own per-call states (:class:`npcnn.layers.LayerState`: caches, gradients, workspaces; the
layers and their weights are shared and only read), serial Numba kernels (compiled
``nogil=True``, their workspaces say ``parallel=False``) and single-threaded BLAS (which releases
the GIL). The shard gradients are then summed in shard order and the model's optimizer runs once.
Compared with splitting every kernel across the cores, this avoids the ~20 thread wake-ups of each
step and halves each thread's working set.

The math is the full-batch step: each shard's loss gradient is scaled by ``n_shard / N``, so the
summed gradient is the full-batch mean gradient ``(p - onehot) / N``. (The scale is 1/shards for
equal shards: exact in binary only for 1, 2, 4, ... shards; otherwise it rounds like any float32
product.) A layer that needs statistics of the whole batch (BatchNormalization) sums its per-shard
partial sums with ``ctx.reduce`` (:class:`ShardReducer`: every shard gets the same total, added in
shard order), so a sharded step computes the function of the unsharded one. Random layers draw per
sample from (step seed, index in the whole batch), so their masks do not depend on the shards
either. The result is deterministic for a given thread count (fixed summation orders); it differs
from the one-thread result only by float rounding.

Used by :class:`npcnn.models.Sequential` for the Numba backend when
:func:`npcnn.get_num_threads` is above 1 and each shard gets at least :data:`MIN_SHARD` images.
Switch it off with ``NPCNN_DATA_PARALLEL=0`` or ``npcnn.set_data_parallel(False)``: every kernel
then splits its own work across the threads instead (the intra-op path).

Processes and threads: one multi-threaded computation runs at a time in a process
(:func:`compute_section`), since Numba's workqueue layer refuses parallel kernels launched from two
threads at once and BLAS's thread count is process-wide; calls from several Python threads take
turns, each with its own state, and get exactly the results of serial calls. The shard pool is
re-created in a forked child (``os.register_at_fork``), where kernels then run serial drivers only.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from npcnn.layers.base import Context
from npcnn.utils import env_flag

MIN_SHARD = 8  # fewer images per shard: not worth the hand-off (and tiny batches stay bit-for-bit unsharded)

_enabled = env_flag("NPCNN_DATA_PARALLEL", True)
_pool = None
_pool_size = 0
_pool_lock = threading.Lock()
_compute_lock = threading.RLock()
_blas = None  # threadpoolctl controllers of the BLAS libraries NumPy uses
_forked = False


def set_data_parallel(enabled) -> bool:
    """Turn data-parallel training and inference on or off (Numba backend); returns the previous setting."""
    global _enabled
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"set_data_parallel: enabled must be True or False, got {enabled!r}")
    previous, _enabled = _enabled, bool(enabled)
    return previous


def get_data_parallel() -> bool:
    """Whether data-parallel execution is switched on (it runs only where :func:`shard_count` > 1)."""
    return _enabled


def shard_count(n_images) -> int:
    """How many shards a batch of ``n_images`` is split into now (1: run it unsharded)."""
    if not _enabled:
        return 1
    from npcnn.backend import get_backend
    from npcnn.threads import get_num_threads

    if get_backend() != "numba":
        return 1
    return max(1, min(get_num_threads(), n_images // MIN_SHARD))


def shard_bounds(n, shards):
    """[(start, stop)] of ``shards`` contiguous slices of n items, sizes differing by at most one."""
    base, extra = divmod(n, shards)
    bounds, start = [], 0
    for s in range(shards):
        stop = start + base + (s < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def forked_child() -> bool:
    """True in a process forked from one that had imported npcnn (kernels then run serial drivers:
    Numba's worker threads do not survive a fork)."""
    return _forked


@contextlib.contextmanager
def compute_section():
    """Hold the process's compute lock while a multi-threaded computation runs (re-entrant; free
    when npcnn uses one thread, since then nothing is shared)."""
    from npcnn.threads import get_num_threads

    if get_num_threads() <= 1:
        yield
        return
    with _compute_lock:
        yield


# ------------------------------------------------------------------ shard sums
class ShardReducer:
    """``ctx.reduce`` for ``shards`` shards running at once: each shard passes its array, all get the
    sum (shard 0 + shard 1 + ..., the same bits in every shard, since each adds the same slots in the
    same order). One barrier per call: the slots alternate between two sets, so a shard already in
    the next call never overwrites a slot another shard is still adding (it cannot pass that next
    call's barrier before every shard has finished this one). Every shard must call it the same number
    of times; a shard that fails breaks the barrier so the others stop instead of waiting."""

    def __init__(self, shards, outer=None):
        self.slots = ([None] * shards, [None] * shards)
        self.calls = [0] * shards
        self.barrier = threading.Barrier(shards)
        self.outer = outer  # e.g. a sum over MPI ranks: run by shard 0 on the rank's total
        self.results = [None, None]

    def for_shard(self, index):
        def reduce(a):
            parity = self.calls[index] % 2
            slots = self.slots[parity]
            self.calls[index] += 1
            slots[index] = a
            self.barrier.wait()
            if self.outer is None:
                return _ordered_sum(slots)
            # shard 0 (the calling thread: MPI is called from one thread only) sums over the ranks; a
            # second barrier hands its result to the others (results[parity] is written again only two
            # calls later, after every shard has passed the next call's first barrier)
            if index == 0:
                self.results[parity] = self.outer(_ordered_sum(slots))
            self.barrier.wait()
            return np.array(self.results[parity], copy=True)

        return reduce

    def abort(self):
        self.barrier.abort()


def _ordered_sum(arrays):
    """arrays[0] + arrays[1] + ..., in that order, in a new array."""
    total = np.array(arrays[0], copy=True)
    for a in arrays[1:]:
        total += a
    return total


# ------------------------------------------------------------------ threads
def _serial_worker():
    numba.set_num_threads(1)  # thread-local; the kernels' workspaces say parallel=False anyway


def _get_pool(workers):
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npcnn-shard",
                                       initializer=_serial_worker)
            _pool_size = workers
        return _pool


def _after_fork_in_child():
    """The parent's pool threads and locks do not exist in a forked child: start afresh."""
    global _pool, _pool_size, _pool_lock, _compute_lock, _forked
    _pool, _pool_size = None, 0
    _pool_lock = threading.Lock()
    _compute_lock = threading.RLock()
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _blas_controllers():
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = [c for c in ThreadpoolController().select(user_api="blas").lib_controllers
                 if "torch" not in (c.filepath or "")]
    return _blas


class _SerialKernels:
    """Context: this thread's Numba kernels serial and NumPy's BLAS single-threaded; restored after."""

    def __enter__(self):
        self.numba_threads = numba.get_num_threads()
        numba.set_num_threads(1)
        self.blas = [(c, c.num_threads) for c in _blas_controllers()]
        for c, n in self.blas:
            if n != 1:
                c.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        for c, n in self.blas:
            if n != 1:
                c.set_num_threads(n)
        numba.set_num_threads(self.numba_threads)
        return False


def run_shards(fn, jobs, reducer=None):
    """[fn(*job) for job in jobs], job 0 in this thread and the others in the worker pool, all with
    serial kernels; results in job order. The first exception (in job order, a broken barrier
    counting last) is re-raised after every job has stopped."""
    def guarded(*job):
        try:
            return fn(*job)
        except BaseException:
            if reducer is not None:
                reducer.abort()
            raise

    pool = _get_pool(len(jobs) - 1)
    with _SerialKernels():
        futures = [pool.submit(guarded, *job) for job in jobs[1:]]
        results, errors = [], []
        try:
            results.append(guarded(*jobs[0]))
        except BaseException as e:  # wait for the others before leaving: they use the shared weights
            errors.append(e)
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as e:
                errors.append(e)
        if errors:
            real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
            raise (real or errors)[0]
    return results


# ------------------------------------------------------------------ the model's entry points
def _shard_loss_and_grad(plan, states, x, labels, scale, ctx):
    return plan.loss_and_grad(x, labels, states, ctx, scale)


def loss_and_grad(plan, shard_states, x, labels, seed=0, total=None, offset=0, outer=None):
    """Loss and output of ``plan`` on (x, labels) over ``len(shard_states)`` shards; each shard's
    gradients stay in its states (the caller sums them). Returns (loss, out): the mean loss of x.

    x may be one slice of a larger batch (an MPI rank's): ``total`` samples in all, x starting at
    ``offset`` in it; each shard's loss gradient is then scaled by n_shard / total, and ``outer``
    (a sum over the other slices, e.g. :meth:`npcnn.distributed.World.allreduce`) completes the
    shards' sums of whole-batch statistics."""
    n = len(x)
    total = n if total is None else total
    shards = len(shard_states)
    bounds = shard_bounds(n, shards)
    reducer = ShardReducer(shards, outer)
    jobs = [(plan, states, x[a:b], labels[a:b], (b - a) / total,
             Context(True, seed=seed, sample_offset=offset + a, batch_size=total, reduce=reducer.for_shard(i),
                     parallel=False))
            for i, (states, (a, b)) in enumerate(zip(shard_states, bounds))]
    results = run_shards(_shard_loss_and_grad, jobs, reducer)
    loss = sum(float(r[0]) * (b - a) for r, (a, b) in zip(results, bounds)) / n
    return loss, np.concatenate([r[1] for r in results])


def _shard_forward(plan, states, x, logits, ctx):
    return plan.forward(x, states, ctx, logits)


def forward(plan, shard_states, x, logits):
    """Inference output of ``plan`` on x over ``len(shard_states)`` shards (a new array)."""
    n = len(x)
    bounds = shard_bounds(n, len(shard_states))
    jobs = [(plan, states, x[a:b], logits, Context(False, sample_offset=a, batch_size=n, parallel=False))
            for states, (a, b) in zip(shard_states, bounds)]
    return np.concatenate(run_shards(_shard_forward, jobs))
