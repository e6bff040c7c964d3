"""Training across processes with MPI (npcnn.distributed): real ``mpiexec -n 2`` jobs.

The jobs live in tests/mpi_jobs.py. They need mpi4py and an MPI launcher (``pip install -e ".[mpi]"``
brings both, as CI does); where they are absent these tests skip and say so. The unit tests at the end
need neither.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from npcnn import distributed
from npcnn.parallel import ShardReducer, shard_bounds

ROOT = Path(__file__).resolve().parents[1]
JOBS = str(ROOT / "tests" / "mpi_jobs.py")
LAUNCHER_VARS = ("PMI_", "OMPI_", "PMIX_", "MV2_", "HYDRA_", "MPI_LOCAL", "NPCNN_MPI")

try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC),
                               reason="needs mpi4py and mpiexec: pip install -e '.[mpi]'")


def clean_env(**extra):
    """This process's environment without a launcher's variables (a test run under mpiexec stays sane)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_VARS)}
    env.update(extra)
    return env


def run(cmd, timeout=180, env=None):
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env())
    proc.seconds = time.monotonic() - started
    return proc


def mpi(n, *args, timeout=180, env=None):
    return run([MPIEXEC, "-n", str(n), sys.executable, *args], timeout=timeout, env=env)


def ok(proc):
    assert proc.returncode == 0, \
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def weights(path):
    with np.load(path) as f:
        return [f[k] for k in sorted((k for k in f.files if k.startswith("arr_")), key=lambda k: int(k[4:]))], \
            f["stats"]


def max_diff(a, b):
    return max(float(np.max(np.abs(u.astype(np.float64) - v))) for u, v in zip(a, b))


def identical(a, b):
    return all(u.shape == v.shape and np.array_equal(u, v) for u, v in zip(a, b))


# ---------------------------------------------------------------------------------------------- training
@needs_mpi
@pytest.mark.slow
def test_two_ranks_train_the_seed_model_as_one_process(tmp_path):
    """8 steps of global batch 32: 2 ranks x 1 thread give the weights of 1 process with batch 32 (to float32
    summation tolerance), the same on both ranks, and exactly those of 1 process with 2 threads (the same sum:
    two halves, each scaled by 16/32, added)."""
    out = str(tmp_path / "w")
    ok(mpi(2, JOBS, "steps", out, "--steps", "8", "--threads", "1"))
    ok(run([sys.executable, JOBS, "steps", out + "_t1", "--steps", "8", "--threads", "1"]))
    ok(run([sys.executable, JOBS, "steps", out + "_t2", "--steps", "8", "--threads", "2"]))
    r0, stats0 = weights(out + ".0of2.npz")
    r1, stats1 = weights(out + ".1of2.npz")
    one, _ = weights(out + "_t1.0of1.npz")
    two_threads, _ = weights(out + "_t2.0of1.npz")
    assert identical(r0, r1), "the two ranks hold different weights"
    assert max_diff(r0, one) <= 1e-5, f"2 ranks vs 1 process: max |dw| = {max_diff(r0, one):.3g}"
    assert identical(r0, two_threads), f"2 ranks vs 2 threads: max |dw| = {max_diff(r0, two_threads):.3g}"
    # one gradient Allreduce per step; the seed model has no other reduction
    assert stats0[0] == 8 and stats1[0] == 8
    assert stats0[1] == 0


@needs_mpi
def test_two_ranks_take_the_mean_gradient_of_the_global_batch(tmp_path):
    """With plain SGD the step is proportional to the gradient (Adam's is nearly scale-free, so it would hide
    a rank that forgot to scale its slice's gradient by n_slice / batch_size): 2 ranks equal 1 process."""
    out = str(tmp_path / "g")
    ok(mpi(2, JOBS, "steps", out, "--steps", "4", "--sgd"))
    ok(run([sys.executable, JOBS, "steps", out + "_one", "--steps", "4", "--sgd"]))
    r0, _ = weights(out + ".0of2.npz")
    one, _ = weights(out + "_one.0of1.npz")
    assert max_diff(r0, one) <= 1e-5, f"2 ranks vs 1 process (SGD): max |dw| = {max_diff(r0, one):.3g}"


@needs_mpi
@pytest.mark.slow
def test_two_ranks_train_the_deep_model_as_one_process(tmp_path):
    """BatchNormalization's statistics are summed over the ranks, Dropout's and the augmentation's draws follow
    the index in the global batch: 2 ranks x 1 thread equal 1 process x 2 threads bit for bit (the same sums
    in the same order), and 1 process x 1 thread up to rounding."""
    out = str(tmp_path / "d")
    ok(mpi(2, JOBS, "steps", out, "--model", "deep", "--steps", "4", "--threads", "1"))
    ok(run([sys.executable, JOBS, "steps", out + "_t1", "--model", "deep", "--steps", "4", "--threads", "1"]))
    ok(run([sys.executable, JOBS, "steps", out + "_t2", "--model", "deep", "--steps", "4", "--threads", "2"]))
    r0, stats0 = weights(out + ".0of2.npz")
    r1, _ = weights(out + ".1of2.npz")
    one, _ = weights(out + "_t1.0of1.npz")
    two_threads, _ = weights(out + "_t2.0of1.npz")
    assert identical(r0, r1)
    assert identical(r0, two_threads), f"2 ranks vs 2 threads: max |dw| = {max_diff(r0, two_threads):.3g}"
    # Adam moves a weight by up to its learning rate (1e-3) per step whatever the gradient's size, so a
    # rounding-sized change in a near-zero gradient (a BatchNormalization beta) can show at that scale
    assert max_diff(r0, one) <= 1e-3, f"2 ranks vs 1 process: max |dw| = {max_diff(r0, one):.3g}"
    assert stats0[0] == 4
    # 7 BatchNormalization layers, 2 sums each forward and 1 backward (the first one's input gradient
    # is not needed only for the first layer of a model, which is no BatchNormalization here)
    assert stats0[1] == 4 * 7 * 3


@needs_mpi
def test_evaluate_and_predict_split_across_ranks(tmp_path):
    out = str(tmp_path / "i")
    ok(mpi(2, JOBS, "infer", out))
    ok(run([sys.executable, JOBS, "infer", out + "_one", "--threads", "2"]))
    with np.load(out + ".0of2.npz") as a, np.load(out + ".1of2.npz") as b, np.load(out + "_one.0of1.npz") as c:
        assert a["probs"].shape == (100, 10)
        for key in ("loss", "acc", "probs"):
            np.testing.assert_array_equal(a[key], b[key])  # every rank returns the whole answer
        np.testing.assert_allclose(a["probs"], c["probs"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(a["loss"], c["loss"], rtol=1e-6)
        assert float(a["acc"]) == float(c["acc"])
        assert a["stats"][0] >= 1  # evaluate's totals went through an Allreduce


# ---------------------------------------------------------------------------------------------- faults
@needs_mpi
def test_a_rank_that_raises_ends_the_job_with_its_message(tmp_path):
    proc = mpi(2, JOBS, "raise", str(tmp_path / "x"), timeout=120)
    assert proc.returncode != 0
    assert "rank 1 of 2" in proc.stderr and "fails on purpose in batch 3" in proc.stderr, proc.stderr[-2000:]
    assert proc.seconds < 60, f"the job took {proc.seconds:.0f} s to end"


@needs_mpi
def test_a_killed_rank_ends_the_job(tmp_path):
    proc = mpi(2, JOBS, "kill", str(tmp_path / "x"), timeout=120)
    assert proc.returncode != 0
    assert proc.seconds < 60, f"the job took {proc.seconds:.0f} s to end"


@needs_mpi
def test_a_rank_that_hangs_is_caught_by_the_timeout(tmp_path):
    """A rank stuck without dying (here: asleep for 120 s) is invisible to MPI; with NPCNN_MPI_TIMEOUT=3 the
    rank waiting for it aborts the job after 3 s, naming the collective."""
    proc = mpi(2, JOBS, "hang", str(tmp_path / "x"), timeout=120, env=clean_env(NPCNN_MPI_TIMEOUT="3"))
    assert proc.returncode != 0
    assert "waited more than 3 s in the gradient Allreduce" in proc.stderr, proc.stderr[-2000:]
    assert proc.seconds < 60, f"the job took {proc.seconds:.0f} s to end"


def test_mpi_timeout_setting_is_checked(monkeypatch):
    monkeypatch.setenv("NPCNN_MPI_TIMEOUT", "")
    assert distributed._timeout_setting() is None
    monkeypatch.setenv("NPCNN_MPI_TIMEOUT", "2.5")
    assert distributed._timeout_setting() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("NPCNN_MPI_TIMEOUT", bad)
        with pytest.raises(distributed.DistributedError, match="NPCNN_MPI_TIMEOUT"):
            distributed._timeout_setting()


@needs_mpi
def test_weights_that_drift_apart_stop_training(tmp_path):
    proc = mpi(2, JOBS, "drift", str(tmp_path / "x"), timeout=120)
    assert proc.returncode != 0
    assert "differ from rank 0's" in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.glob("x.*")), "no rank may finish after the weights drifted"


@needs_mpi
def test_ranks_with_different_data_are_refused(tmp_path):
    proc = mpi(2, JOBS, "baddata", str(tmp_path / "x"), timeout=120)
    assert proc.returncode != 0
    assert "the MPI ranks hold different data" in proc.stderr and "rank 1" in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- the example
def cli(n, *args):
    base = ["-m", "npcnn.examples.cifar10", "--sample", "--limit", "128", "--threads", "1", "--seed", "1",
            "--verbose", "2", *args]
    return mpi(n, *base) if n > 1 else run([sys.executable, *base])


@needs_mpi
@pytest.mark.slow
def test_example_under_mpi_resumes_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    whole = ok(cli(2, "--epochs", "2", "--checkpoint-dir", str(a), "--save", str(a / "w.npz")))
    assert whole.stdout.count("MPI: 2 processes x 1 thread(s)") == 1, whole.stdout  # rank 0 prints, once
    assert whole.stdout.count("Test accuracy:") == 1
    assert whole.stdout.splitlines()[0].startswith("MPI: 2 processes")
    ok(cli(2, "--epochs", "1", "--checkpoint-dir", str(b)))
    resumed = ok(cli(2, "--epochs", "2", "--checkpoint-dir", str(b), "--resume", "--save", str(b / "w.npz")))
    assert "Resuming from" in resumed.stdout
    with np.load(a / "w.npz") as wa, np.load(b / "w.npz") as wb:
        assert sorted(wa.files) == sorted(wb.files)
        for k in wa.files:
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    # another number of processes is refused, with the way out
    refused = cli(1, "--epochs", "3", "--checkpoint-dir", str(b), "--resume")
    assert refused.returncode == 1
    assert "written by a run of 2 MPI process(es), this run has 1" in refused.stderr, refused.stderr
    assert "mpiexec -n 2" in refused.stderr


@needs_mpi
def test_example_error_under_mpi_is_one_line_per_job(tmp_path):
    """A settings error found by rank 0 (an existing checkpoint without --resume) ends every rank with
    status 1 and one message, not a traceback per rank."""
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "checkpoint.npz").write_bytes(b"x")
    proc = cli(2, "--epochs", "1", "--checkpoint-dir", str(ck))
    assert proc.returncode == 1
    assert proc.stderr.count("already holds a checkpoint") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- no MPI needed
def test_shard_bounds_cover_every_item_once():
    """The slices of a batch that split() gives the ranks (and the threads their shards)."""
    for n in range(0, 40):
        for parts in range(1, 6):
            bounds = shard_bounds(n, parts)
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(b[1] == c[0] for b, c in zip(bounds, bounds[1:]))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_launcher_size_reads_the_launchers_variables(monkeypatch):
    for var in distributed.LAUNCHER_SIZE_VARS:
        monkeypatch.delenv(var, raising=False)
    assert distributed.launcher_size() == 1
    monkeypatch.setenv("PMI_SIZE", "4")
    assert distributed.launcher_size() == 4
    monkeypatch.setenv("PMI_SIZE", "junk")
    assert distributed.launcher_size() == 1


def test_without_a_launcher_the_world_is_one_process():
    w = distributed.World()
    assert (w.rank, w.size, w.active, w.is_root) == (0, 1, False, True)
    buf = np.arange(4, dtype=np.float32)
    assert w.allreduce_(buf) is buf and w.allreduce(buf) is buf
    assert w.gather_rows(buf, 4) is buf
    if not distributed.world().active:
        assert distributed.split(10) == (0, 10)


def test_launched_without_mpi4py_says_how_to_install(tmp_path):
    """Under a launcher of 2 processes but without mpi4py, npcnn refuses to train alone (the processes
    would overwrite each other's files) and says what to install."""
    fake = tmp_path / "mpi4py"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no mpi4py here (test)')\n")
    env = clean_env(PMI_SIZE="2", PMI_RANK="0", PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    proc = run([sys.executable, "-m", "npcnn.examples.cifar10", "--sample", "--epochs", "1"], env=env, timeout=120)
    assert proc.returncode == 1
    assert "mpi4py cannot be imported" in proc.stderr and 'pip install -e ".[mpi]"' in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_npcnn_mpi_0_never_imports_mpi4py():
    code = ("import sys, npcnn.distributed as d; w = d.world(); "
            "print(w.size, 'mpi4py' in sys.modules)")
    proc = run([sys.executable, "-c", code], env=clean_env(PMI_SIZE="2", NPCNN_MPI="0"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "False"]


def test_shard_reducer_hands_every_shard_the_outer_sum():
    """With an outer reduction (the ranks' sum), shard 0 applies it to the shards' total and every shard
    gets its result, call after call, with uneven timing."""
    shards, calls = 3, 40
    reducer = ShardReducer(shards, outer=lambda a: a * 10.0)
    results = [[] for _ in range(shards)]

    def work(i):
        reduce = reducer.for_shard(i)
        rng = np.random.default_rng(i)
        for c in range(calls):
            if rng.random() < 0.3:
                time.sleep(0.001)
            results[i].append(reduce(np.full(2, float(i + c))))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(shards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in range(calls):
        expected = 10.0 * sum(i + c for i in range(shards))
        for i in range(shards):
            np.testing.assert_array_equal(results[i][c], [expected, expected])


class _FakeWorld:
    active, size, rank, is_root = True, 2, 0, True


def test_batches_too_small_for_the_processes_are_refused(monkeypatch):
    monkeypatch.setattr(distributed, "_world", _FakeWorld())
    with pytest.raises(ValueError, match="every batch needs at least 2 samples"):
        distributed.check_global_batches(100, 1, "fit")
    with pytest.raises(ValueError, match="the last batch of an epoch of 65 samples"):
        distributed.check_global_batches(65, 32, "fit")
    distributed.check_global_batches(66, 32, "fit")
    distributed.check_global_batches(64, 32, "fit")


@needs_mpi
def test_the_scaling_benchmark_runs(tmp_path):
    """benchmarks/mpi_scaling.py (the README's figures) still runs: 2 steps per configuration."""
    out = tmp_path / "s.json"
    proc = ok(run([sys.executable, str(ROOT / "benchmarks" / "mpi_scaling.py"), "--steps", "2", "--warmup", "1",
                   "--json", str(out)], timeout=300))
    assert "2 processes x 1 thread (MPI)" in proc.stdout and "Scaling estimate" in proc.stdout
    import json

    runs = json.loads(out.read_text())["runs"]
    mpi_run = runs["2 processes x 1 thread (MPI)"]
    assert mpi_run["processes"] == 2 and mpi_run["gradient_values"] == 122_570
    assert mpi_run["allreduce_ms_per_step"] > 0


def test_wait_until_read_waits_for_the_reader_of_a_pipe(monkeypatch):
    """Before an MPI_Abort, what the process printed must have left the pipe to the launcher (an Abort drops
    what is still in it): the wait ends when the reader has read it all, or at the deadline."""
    r, w = os.pipe()
    try:
        with os.fdopen(w, "w", closefd=False) as stream:
            monkeypatch.setattr(sys, "stderr", stream)
            monkeypatch.setattr(sys, "stdout", stream)
            stream.write("x" * 1000)
            stream.flush()
            started = time.monotonic()
            distributed._wait_until_read(seconds=0.3)  # nobody reads: gives up at the deadline
            assert 0.3 <= time.monotonic() - started < 2.0

            reader = threading.Timer(0.5, lambda: os.read(r, 4096))
            reader.start()
            started = time.monotonic()
            distributed._wait_until_read(seconds=10.0)
            waited = time.monotonic() - started
            reader.join()
            assert 0.4 <= waited < 5.0, waited  # returned once the reader had read, not at the deadline

            started = time.monotonic()
            distributed._wait_until_read(seconds=10.0)  # nothing unread: no wait
            assert time.monotonic() - started < 0.5
    finally:
        os.close(r)
        os.close(w)


def test_wait_until_read_ignores_files_and_closed_streams(monkeypatch, tmp_path):
    with open(tmp_path / "log", "w") as f:
        f.write("y" * 100)
        f.flush()
        monkeypatch.setattr(sys, "stderr", f)
        monkeypatch.setattr(sys, "stdout", f)
        started = time.monotonic()
        distributed._wait_until_read(seconds=5.0)
        assert time.monotonic() - started < 0.5
    monkeypatch.setattr(sys, "stdout", None)
    distributed._wait_until_read(seconds=5.0)
