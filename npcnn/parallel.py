"""Data parallelism across cores for the Numba backend: one batch, several shards, one update.

With ``n`` threads, a training batch of N images is cut into ``n`` contiguous shards; each
shard's forward, loss and backward run in their own Python thread, on *replicas* of the
model's layers (same parameter arrays, their own caches, gradients and workspaces), with
serial Numba kernels (compiled ``nogil=True``) and single-threaded BLAS (which releases the
GIL). The shard gradients are then summed in shard order and the model's optimizer runs
once. Compared with splitting every kernel across the cores, this avoids the ~20 thread
wake-ups of each step and halves each thread's working set.

The math is the full-batch step: each shard's loss gradient is scaled by ``n_shard / N``,
so the summed gradient is the full-batch mean gradient ``(p - onehot) / N`` (for shards of
equal size the scale is a power of two and exact). The result is deterministic for a given
thread count (the sums run in a fixed order); it differs from the one-thread result only by
float32 rounding.

Used by :class:`npcnn.models.Sequential` for the Numba backend when
:func:`npcnn.get_num_threads` is above 1 and each shard gets at least
:data:`MIN_SHARD` images. Switch it off with ``NPCNN_DATA_PARALLEL=0`` or
``npcnn.set_data_parallel(False)``: every kernel then splits its own work across the
threads instead (the intra-op path).
"""

from __future__ import annotations

import copy
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from npcnn import kernels

MIN_SHARD = 8  # fewer images per shard: not worth the hand-off (and tiny batches stay bit-for-bit unsharded)

_enabled = os.environ.get("NPCNN_DATA_PARALLEL", "1").strip().lower() not in ("0", "false", "no", "off")
_pool = None
_pool_size = 0
_pool_lock = threading.Lock()
_replicas = weakref.WeakKeyDictionary()  # model -> _Replicas (outside the model: deepcopy/pickle untouched)
_blas = None  # threadpoolctl controllers of the BLAS libraries NumPy uses


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


# ------------------------------------------------------------------ replicas
def _replicate(layer):
    """A copy of ``layer`` sharing its parameter arrays but with its own caches, grads and buffers."""
    rep = copy.copy(layer)
    for attr, value in vars(layer).items():
        if attr == "params":
            rep.params = dict(value)  # the same arrays: the optimizer's in-place updates are seen
        elif attr == "grads":
            rep.grads = {}
        elif "workspace" in attr and isinstance(value, dict):
            setattr(rep, attr, {})
        elif attr == "activation" and value is not None:
            rep.activation = _replicate(value)
        elif attr.startswith("_cache") or attr in ("_p", "_y"):
            setattr(rep, attr, None)
    return rep


class _Replicas:
    """Per-shard shadows of one model: each a shallow copy of the model with replicated layers."""

    def __init__(self, model, shards):
        self.key = _model_key(model)
        self.shadows = []
        for _ in range(shards):
            shadow = copy.copy(model)
            shadow.layers = [_replicate(layer) for layer in model.layers]
            self.shadows.append(shadow)


def _model_key(model):
    """What the replicas depend on: the layer objects, their parameter arrays and settings."""
    return tuple((id(layer), id(layer.activation), layer.need_input_grad,
                  tuple((k, id(p)) for k, p in layer.params.items())) for layer in model.layers) + (
        id(model.loss),)


def _shadows(model, shards):
    reps = _replicas.get(model)
    if reps is None or len(reps.shadows) < shards or reps.key != _model_key(model):
        reps = _Replicas(model, shards)
        _replicas[model] = reps
    return reps.shadows[:shards]


# ------------------------------------------------------------------ threads
def _serial_worker():
    numba.set_num_threads(1)  # thread-local: the kernels pick their serial drivers in this thread


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


def run_shards(fn, jobs):
    """[fn(*job) for job in jobs], job 0 in this thread and the others in the worker pool, all with
    serial kernels; results in job order. The first exception (in job order) is re-raised."""
    pool = _get_pool(len(jobs) - 1)
    with _SerialKernels():
        futures = [pool.submit(fn, *job) for job in jobs[1:]]
        results, error = [], None
        try:
            results.append(fn(*jobs[0]))
        except BaseException as e:  # wait for the others before leaving: they use the shared buffers
            error = e
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as e:
                error = error or e
        if error is not None:
            raise error
    return results


# ------------------------------------------------------------------ the model's entry points
def _shard_loss_and_grad(shadow, x, labels, scale):
    loss, out = shadow._local_loss_and_grad(x, labels, scale)
    return loss, out, [[layer.grads[k] for k in layer.params] for layer in shadow.layers]


def loss_and_grad(model, x, labels, shards):
    """Full-batch loss and output of ``model`` on (x, labels) over ``shards`` shards; the summed
    gradients go to the model's own layers' ``grads`` (as the unsharded pass leaves them)."""
    n = len(x)
    bounds = shard_bounds(n, shards)
    shadows = _shadows(model, shards)
    jobs = [(shadow, x[a:b], labels[a:b], (b - a) / n) for shadow, (a, b) in zip(shadows, bounds)]
    results = run_shards(_shard_loss_and_grad, jobs)
    loss = sum(float(r[0]) * (b - a) for r, (a, b) in zip(results, bounds)) / n
    out = np.concatenate([r[1] for r in results])
    for i, layer in enumerate(model.layers):
        if not layer.params:
            continue
        # shard 0 + shard 1 + ...: a fixed order, deterministic for a given shard count
        layer.grads = {k: kernels.add_arrays([r[2][i][j] for r in results]) for j, k in enumerate(layer.params)}
    return loss, out


def _shard_forward(shadow, x, logits):
    return shadow._local_forward(x, training=False, logits=logits)


def forward(model, x, logits, shards):
    """Inference output of ``model`` on x over ``shards`` shards (no layer state of the model changes)."""
    bounds = shard_bounds(len(x), shards)
    shadows = _shadows(model, shards)
    results = run_shards(_shard_forward, [(s, x[a:b], logits) for s, (a, b) in zip(shadows, bounds)])
    return np.concatenate(results)
