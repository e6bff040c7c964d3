"""Training across processes and machines with MPI: ``mpiexec -n K python train.py``.

Synchronous data-parallel SGD, the same arithmetic as npcnn's threads (:mod:`npcnn.parallel`) one
level up. Under ``mpiexec -n K`` every process (a *rank*) holds the whole model and the whole data
set; :meth:`npcnn.models.Sequential.fit` then

1. at its start, copies rank 0's weights, buffers, optimizer state and random generator to every
   rank (:func:`sync_model`), and checks that every rank holds the same data (:func:`check_same_data`);
2. shuffles with the shared generator, so every rank sees the same order, and gives rank r the
   r-th of K contiguous slices of each global batch of ``batch_size`` samples (:func:`split`);
   inside a rank, the slice is cut again into the shards of its threads;
3. computes its slice's loss gradient scaled by ``n_slice / batch_size``, so that the sum over all
   ranks is the mean gradient of the global batch, and adds the gradients of all ranks with **one**
   ``Allreduce`` on a single contiguous float32 buffer (every trained gradient, then the step's loss
   sum and metric counts; :func:`allreduce_`), in place;
4. runs the same optimizer step on every rank, so the weights stay identical; a checksum of every
   weight is compared across ranks after each epoch (:func:`check_in_sync`) and a drift raises;
5. BatchNormalization's batch sums go through ``ctx.reduce``, which adds them over the threads of a
   rank and then over the ranks (:func:`allreduce`), so its statistics are those of the global batch;
   Dropout's and the augmentation layers' random draws depend on (step seed, index in the global
   batch), so a K-rank run computes the function of a 1-process run: the same up to float rounding.

``evaluate`` and ``predict`` split their data across the ranks and add (``evaluate``) or gather
(``predict``) the results, so every rank returns the whole answer. They are collective: every rank
must call them (wrap rank-local calls in ``with npcnn.distributed.local():``). Progress bars are
drawn by rank 0 only, and the writing callbacks (ModelCheckpoint, CSVLogger, TrainingCheckpoint)
write from rank 0 only, then wait at a barrier, so no rank runs ahead of a checkpoint.

Faults: under MPI an uncaught exception on any rank prints ``npcnn: rank r of K: ...`` with the
traceback and calls ``MPI_Abort``, which ends every process of the job at once (exit status 1; 130
for Ctrl-C); a killed process ends the job through the launcher. Without that, the other ranks would
wait in their next collective forever. A rank that hangs without dying (a deadlock, a stuck file
system) is caught by ``NPCNN_MPI_TIMEOUT=<seconds>``: a process that waits longer than that in one
collective aborts the job, naming the collective (off by default: the first collectives may wait
for rank 0's download of the data). Do not end one rank with ``sys.exit`` while the others train;
call :func:`abort`.

When MPI is used: when the launcher's environment says the job has more than one process
(``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE``, ``PMIX_SIZE``, ``MV2_COMM_WORLD_SIZE``), or when
``NPCNN_MPI=1``. ``NPCNN_MPI=0`` never imports mpi4py (each process then trains on its own).
Otherwise mpi4py is never imported and nothing changes. Install with ``pip install -e ".[mpi]"``
(mpi4py and the MPICH wheel; a system MPI with its own mpi4py works too).

Example (two processes, one thread each; across hosts add ``-f hostfile``)::

    mpiexec -n 2 python -m npcnn.examples.cifar10 --threads 1
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import threading
import time
import zlib

import numpy as np

from npcnn.parallel import shard_bounds
from npcnn.utils import env_flag

LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")

_world = None
_world_lock = threading.Lock()


class DistributedError(RuntimeError):
    """The ranks of an MPI job disagree (weights drifted apart, different data), or MPI is missing."""


def launcher_size() -> int:
    """The number of processes the MPI launcher's environment announces (1 when not under a launcher)."""
    for var in LAUNCHER_SIZE_VARS:
        value = os.environ.get(var)
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                continue
    return 1


def _wanted():
    """Whether to use MPI in this process: NPCNN_MPI=1 / 0, else whether a launcher started several."""
    setting = os.environ.get("NPCNN_MPI")
    if setting is not None and setting.strip() != "":
        return env_flag("NPCNN_MPI", False)
    return launcher_size() > 1


class World:
    """The processes of this job: ``rank`` (0 ... ``size`` - 1), ``size``, and the collectives npcnn uses.

    A process not under MPI is a world of one: rank 0, size 1, every collective the identity.
    ``stats`` counts the gradient Allreduce calls of training steps and the seconds spent in them
    (``grad_allreduce_calls``, ``grad_allreduce_seconds``, ``grad_allreduce_bytes``) and the other
    reductions (``reduce_calls``, ``reduce_seconds``: BatchNormalization's sums, evaluate's totals).
    """

    def __init__(self, comm=None, timeout=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self._local_depth = 0
        # a communicator of its own for the barrier of a collective exception (:func:`_install_abort_hooks`),
        # which then cannot pair with a training collective of a rank that went on
        self._exit_comm = comm.Dup() if comm is not None and self.size > 1 else None
        self.reset_stats()
        #: seconds a collective may wait before the job is aborted (None: wait for ever); NPCNN_MPI_TIMEOUT
        self.timeout = timeout
        self._waiting = None  # (what, since) while this process waits in a collective
        if timeout and self.size > 1:
            threading.Thread(target=self._watchdog, name="npcnn-mpi-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def _collective(self, what):
        """Mark the block as waiting in collective ``what`` (the watchdog aborts it after ``timeout``)."""
        self._waiting = (what, time.monotonic())
        try:
            yield
        finally:
            self._waiting = None

    def _watchdog(self):
        """Abort the job when this process has waited in one collective for longer than ``timeout``: another
        rank hangs (a deadlock, a stuck file system) without dying, which MPI itself would wait out for ever."""
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            waiting = self._waiting
            if waiting is not None and time.monotonic() - waiting[1] > self.timeout:
                sys.stderr.write(f"npcnn: rank {self.rank} of {self.size}: waited more than {self.timeout:g} s in "
                                 f"{waiting[0]} (NPCNN_MPI_TIMEOUT): another rank is stuck; aborting the MPI job\n")
                self.abort(1)

    def reset_stats(self):
        self.stats = {"grad_allreduce_calls": 0, "grad_allreduce_seconds": 0.0, "grad_allreduce_bytes": 0,
                      "reduce_calls": 0, "reduce_seconds": 0.0}

    @property
    def active(self) -> bool:
        """Whether collectives run (several ranks, outside :func:`local`)."""
        return self.size > 1 and self._local_depth == 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size}{', local' if self._local_depth else ''})"

    # -- collectives (the identity in a world of one or inside local()) ----------------------------
    def allreduce_(self, buf):
        """Sum the contiguous array ``buf`` over all ranks, in place (one MPI call); returns ``buf``."""
        if not self.active:
            return buf
        from mpi4py import MPI

        if not buf.flags.c_contiguous:
            raise ValueError("allreduce_: the buffer must be C-contiguous")
        t = time.perf_counter()
        with self._collective("the gradient Allreduce"):
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        self.stats["grad_allreduce_seconds"] += time.perf_counter() - t
        self.stats["grad_allreduce_calls"] += 1
        self.stats["grad_allreduce_bytes"] += buf.nbytes
        return buf

    def allreduce(self, a):
        """The sum of array ``a`` over all ranks (a new array of ``a``'s dtype; ``a`` is left alone)."""
        if not self.active:
            return a
        from mpi4py import MPI

        a = np.ascontiguousarray(a)
        out = np.empty_like(a)
        t = time.perf_counter()
        with self._collective("an Allreduce"):
            self.comm.Allreduce(a, out, op=MPI.SUM)
        self.stats["reduce_seconds"] += time.perf_counter() - t
        self.stats["reduce_calls"] += 1
        return out

    def bcast(self, obj, root=0):
        """Rank ``root``'s (picklable) ``obj`` on every rank."""
        if not self.active:
            return obj
        with self._collective("a broadcast"):
            return self.comm.bcast(obj, root=root)

    def allgather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.active:
            return [obj]
        with self._collective("an allgather"):
            return self.comm.allgather(obj)

    def barrier(self):
        if self.active:
            with self._collective("a barrier"):
                self.comm.Barrier()

    def gather_rows(self, local, total):
        """Concatenate every rank's ``local`` rows (rank order) into one (total,) + row-shape array on every rank."""
        if not self.active:
            return local
        from mpi4py import MPI

        local = np.ascontiguousarray(local)
        row = int(np.prod(local.shape[1:], dtype=np.int64))
        bounds = shard_bounds(total, self.size)  # the slices split() gave each rank
        counts = [b - a for a, b in bounds]
        if len(local) != counts[self.rank]:
            raise ValueError(f"gather_rows: rank {self.rank} holds {len(local)} rows, expected {counts[self.rank]}")
        out = np.empty((total,) + local.shape[1:], dtype=local.dtype)
        sizes = [c * row for c in counts]
        offsets = [a * row for a, _ in bounds]
        with self._collective("an Allgatherv"):
            self.comm.Allgatherv(local, [out, sizes, offsets, MPI._typedict[local.dtype.char]])
        return out

    def abort(self, status=1):
        """End every process of the job now with exit status ``status`` (MPI_Abort); just exit without MPI.

        What this process printed reaches the launcher first: see :func:`_wait_until_read`."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None and self.size > 1:
            _wait_until_read()
            self.comm.Abort(int(status))
        os._exit(int(status))

    def barrier_within(self, seconds):
        """Wait in a barrier for at most ``seconds``; True when every rank reached it in that time."""
        if self._exit_comm is None:
            return True
        request = self._exit_comm.Ibarrier()
        deadline = time.monotonic() + seconds
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def world() -> World:
    """This process's :class:`World`, set up on first use (mpi4py is imported only when MPI is wanted).

    Raises:
        DistributedError: launched with several processes (or ``NPCNN_MPI=1``) but mpi4py is not
            installed: each process would otherwise train alone and overwrite the others' files.
    """
    global _world
    if _world is not None:
        return _world
    with _world_lock:
        if _world is None:
            comm = None
            if _wanted():
                try:
                    from mpi4py import MPI
                except ImportError as e:
                    raise DistributedError(
                        f"npcnn: launched by an MPI launcher with {launcher_size()} processes (or NPCNN_MPI=1), but "
                        f"mpi4py cannot be imported ({e}); install it with: pip install -e \".[mpi]\" (mpi4py and "
                        "an MPI runtime), or run without mpiexec") from None
                comm = MPI.COMM_WORLD
            w = World(comm, timeout=_timeout_setting())
            if w.size > 1:
                _install_abort_hooks(w)
            _world = w
    return _world


def _timeout_setting():
    """NPCNN_MPI_TIMEOUT: seconds (a positive number), or unset / empty / 0 for no limit."""
    value = os.environ.get("NPCNN_MPI_TIMEOUT", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise DistributedError(f"NPCNN_MPI_TIMEOUT must be a number of seconds, got {value!r}") from None
    if seconds < 0 or seconds != seconds:
        raise DistributedError(f"NPCNN_MPI_TIMEOUT must be a non-negative number of seconds, got {value!r}")
    return seconds or None


def rank() -> int:
    return world().rank


def size() -> int:
    return world().size


def is_root() -> bool:
    return world().rank == 0


def writes_here() -> bool:
    """Whether this process writes files and prints progress: always without MPI, else rank 0 only."""
    w = world()
    return not w.active or w.is_root


def active() -> bool:
    """Whether this process is one of several MPI ranks (and not inside :func:`local`)."""
    return world().active


def local_size() -> int:
    """How many ranks of this job run on this machine (1 without MPI): to share its cores among them."""
    w = world()
    if w.comm is None or w.size == 1:
        return 1
    from mpi4py import MPI

    node = w.comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


@contextlib.contextmanager
def local():
    """Within the block, npcnn runs no collective in this process: ``evaluate``/``predict``/``fit`` work on
    this rank's data alone (e.g. ``if rank() == 0: with local(): model.evaluate(...)``)."""
    w = world()
    w._local_depth += 1
    try:
        yield w
    finally:
        w._local_depth -= 1


def abort(status=1, message=None):
    """Print ``message`` (if any) to stderr and end the whole job with ``status`` (just this process without MPI)."""
    if message:
        sys.stderr.write(message.rstrip("\n") + "\n")
    world().abort(status)


# ---------------------------------------------------------------------------------------------- faults
#: seconds the ranks wait for each other to reach an uncaught collective exception before aborting anyway
COLLECTIVE_EXIT_WAIT = 60.0


def _wait_until_read(seconds=2.0):
    """Wait (at most ``seconds``) until the launcher has read what this process wrote to stdout and stderr.

    Under ``mpiexec`` they are pipes to the launcher, and MPI_Abort ends the job without emptying them:
    a message written just before an Abort was lost in about one job in twenty (MPICH 5.0's Hydra,
    measured). ``FIONREAD`` on a pipe counts the bytes not read yet, from either end. Not a pipe (a file,
    a terminal): nothing to wait for."""
    import fcntl
    import stat
    import struct
    import termios

    deadline = time.monotonic() + seconds
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            while struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0] > 0:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.005)
        except (AttributeError, OSError, ValueError):  # closed, replaced by an object without a descriptor
            continue


def _install_abort_hooks(w):
    """Uncaught exceptions (main thread or any other) print the traceback with the rank and abort the job."""
    import traceback

    def report_and_abort(exc_type, exc, tb, thread=None):
        status = 130 if issubclass(exc_type, KeyboardInterrupt) else 1
        where = f" (thread {thread.name})" if thread is not None else ""
        if getattr(exc, "collective", False) and thread is None:
            # raised alike on every rank (a failed check of a collective): rank 0 alone reports it; no rank
            # aborts before rank 0's report has reached the launcher (an Abort ends the job at once), unless
            # some rank does not come within a minute (it caught the exception and went on)
            if w.is_root:
                sys.stderr.write(f"npcnn: rank 0 of {w.size}: uncaught {exc_type.__name__} (raised on every rank); "
                                 f"ending the MPI job\n{''.join(traceback.format_exception(exc_type, exc, tb))}")
                sys.stderr.flush()
                _wait_until_read()
            w.barrier_within(COLLECTIVE_EXIT_WAIT)
            w.abort(status)
        try:
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            sys.stderr.write(f"npcnn: rank {w.rank} of {w.size}{where}: uncaught {exc_type.__name__}; "
                             f"aborting the MPI job\n{text}")
            sys.stderr.write(f"npcnn: rank {w.rank} of {w.size}: {exc_type.__name__}: {exc}\n")
        finally:
            w.abort(status)

    sys.excepthook = report_and_abort
    threading.excepthook = lambda args: report_and_abort(args.exc_type, args.exc_value, args.exc_traceback,
                                                         args.thread)


# ---------------------------------------------------------------------------------------------- data
def collective(exc):
    """Mark ``exc`` as raised alike on every rank (the outcome of a collective check): an uncaught one is
    then reported by rank 0 alone. Returns ``exc``."""
    with contextlib.suppress(AttributeError, TypeError):
        exc.collective = True
    return exc


def split(n):
    """(start, stop): this rank's slice of n items (everything in a world of one)."""
    w = world()
    return shard_bounds(n, w.size)[w.rank] if w.active else (0, int(n))


def _fingerprint(a, samples=4096):
    """A cheap fingerprint of an array: shape, dtype and the CRC-32 of up to ``samples`` evenly spaced rows."""
    a = np.asarray(a)
    rows = np.unique(np.linspace(0, len(a) - 1, num=min(samples, len(a))).astype(np.int64)) if len(a) else []
    return (a.shape, a.dtype.str, zlib.crc32(np.ascontiguousarray(a[rows]).tobytes()) if len(a) else 0)


def check_same_data(where, *arrays):
    """Raise :class:`DistributedError` on every rank unless every rank holds the same arrays (shapes,
    dtypes and a sample of the values); a no-op without MPI."""
    w = world()
    if not w.active:
        return
    mine = [_fingerprint(a) for a in arrays]
    every = w.allgather(mine)
    for r, theirs in enumerate(every):
        if theirs != every[0]:
            i = next(i for i, (a, b) in enumerate(zip(theirs, every[0])) if a != b)
            raise collective(DistributedError(
                f"{where}: the MPI ranks hold different data: argument {i + 1} is {_describe(every[0][i])} on rank 0 "
                f"but {_describe(theirs[i])} on rank {r}; every rank must load the same x and y (same files, "
                "same --limit), since each takes its slice of every batch by index"))


def _describe(fp):
    shape, dtype, crc = fp
    return f"shape {shape} dtype {np.dtype(dtype)} (sample checksum {crc:08x})"


def check_global_batches(n, batch_size, where):
    """Every global batch of an epoch of n samples must give each rank at least one sample."""
    w = world()
    if not w.active:
        return
    last = n % batch_size or batch_size
    small = min(batch_size, last, n)
    if small < w.size:
        what = f"batch_size={batch_size}" if batch_size < w.size or n < w.size else \
            f"the last batch of an epoch of {n} samples ({last} sample{'s' if last != 1 else ''})"
        raise collective(ValueError(
            f"{where}: with {w.size} MPI processes every batch needs at least {w.size} samples, but {what} has "
            "fewer; choose a batch_size that divides the samples more evenly, or use fewer processes"))


# ---------------------------------------------------------------------------------------------- the model
def _model_arrays(model):
    """Every array that must be equal on all ranks: weights (params, buffers) in a fixed order."""
    from npcnn import saving

    return [(name, a) for name, a, _ in saving.weight_entries(model)]


def sync_model(model):
    """Copy rank 0's weights and buffers, optimizer state and npcnn's random generator to every rank
    (``fit`` does this at its start). A no-op without MPI."""
    w = world()
    if not w.active:
        return
    from npcnn.utils import get_rng_state, set_rng_state

    arrays = _model_arrays(model)
    opt = model.optimizer.get_state(model.params) if model.optimizer is not None else {}
    payload = w.bcast(pickle.dumps(([a for _, a in arrays], opt, get_rng_state()), protocol=5) if w.is_root
                      else None)
    if w.is_root:
        return
    weights, opt_state, rng = pickle.loads(payload)
    for (_, a), v in zip(arrays, weights):
        a[...] = v
    if model.optimizer is not None:
        model.optimizer.set_state(model.params, opt_state)
    set_rng_state(rng)


def weights_checksum(model):
    """CRC-32 of every weight's bytes, in order (cheap: a few ms for half a million float32)."""
    crc = 0
    for _, a in _model_arrays(model):
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8), crc)
    return crc


def check_in_sync(model, where):
    """Raise :class:`DistributedError` on every rank if any rank's weights differ from rank 0's
    (compared by checksum); a no-op without MPI."""
    w = world()
    if not w.active:
        return
    sums = w.allgather(weights_checksum(model))
    bad = [r for r, s in enumerate(sums) if s != sums[0]]
    if bad:
        raise collective(DistributedError(
            f"{where}: the weights of rank(s) {', '.join(map(str, bad))} differ from rank 0's (checksums "
            f"{', '.join(f'{s:08x}' for s in sums)}); the ranks drifted apart, so training stops. Was the model "
            "changed on one rank only (set_weights, load_weights) during fit?"))


def root_first(fn):
    """``fn()`` run on rank 0 only, its result (or its exception) passed to every rank: for work that touches
    files (checking output folders, reading a checkpoint) that every rank must then agree on. Every rank
    raises rank 0's exception, marked ``collective = True`` (so each rank may exit on its own)."""
    w = world()
    if not w.active:
        return fn()
    outcome = None
    if w.is_root:
        try:
            outcome = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - passed on to the other ranks, then raised here too
            outcome = ("error", e)
    try:
        outcome = w.bcast(outcome)
    except Exception as e:  # the result or the exception does not pickle: say so everywhere
        outcome = ("error", DistributedError(f"root_first: cannot pass rank 0's result to the other ranks ({e})"))
    kind, value = outcome
    if kind == "error":
        raise collective(value)  # raised on every rank: each may exit on its own (no abort needed)
    return value


def root_writes(fn):
    """Run ``fn()`` (which writes files) on rank 0 only, then wait at a barrier so that no rank goes on
    before the file is complete. Returns fn()'s result on rank 0, None elsewhere."""
    w = world()
    if not w.active:
        return fn()
    result = fn() if w.is_root else None
    w.barrier()
    return result


__all__ = ["World", "world", "rank", "size", "is_root", "active", "writes_here", "local", "local_size", "abort",
           "split", "sync_model", "check_in_sync", "check_same_data", "check_global_batches",
           "weights_checksum", "root_first", "root_writes", "launcher_size", "collective", "DistributedError"]
