"""Training throughput across MPI processes against threads, on one machine, and the Allreduce's share.

Runs the same training steps (``train_on_batch`` on random images, global batch ``--batch``) as

* 1 process x 1 thread,
* K processes x 1 thread (``mpiexec -n K``, K = 2 by default; each takes half of every batch),
* 1 process x K threads (npcnn's in-process data parallelism),

and prints images per second, milliseconds per step, the time each step spends in the gradient
Allreduce (measured inside it, so it includes waiting for the slower rank) and, separately, the time of
a bare Allreduce of the same buffer after a barrier (the communication alone). It ends with a scaling
estimate for K machines from the measured compute time per step and the gradient's size:

    t_step(K) = t_compute(1) / K + 2 (K - 1) / K * bytes / bandwidth + 2 (K - 1) * latency

(a ring Allreduce moves 2 (K - 1) / K of the buffer through each link). Usage::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/mpi_scaling.py --steps 60 --batch 32
    ... --model deep --batch 64          # the deep model (BatchNormalization's sums cross the ranks too)
    ... --json out.json                  # the figures as JSON

Needs mpi4py and mpiexec (``pip install -e ".[mpi]"``). Unset OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for
figures worth quoting (they slow current NumPy on some machines).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
BANDWIDTHS = {"1 Gbit/s Ethernet": 125e6, "10 Gbit/s Ethernet": 1.25e9, "100 Gbit/s InfiniBand": 12.5e9}
LATENCY = {"1 Gbit/s Ethernet": 50e-6, "10 Gbit/s Ethernet": 20e-6, "100 Gbit/s InfiniBand": 2e-6}


def worker(args):
    """One configuration: time ``args.steps`` training steps after ``args.warmup``; rank 0 prints JSON."""
    import npcnn
    from npcnn import distributed
    from npcnn.models import cifar10_cnn, cifar10_deep

    npcnn.set_num_threads(args.threads)
    npcnn.set_random_seed(0)
    world = distributed.world()
    model = cifar10_deep() if args.model == "deep" else cifar10_cnn()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    distributed.sync_model(model)
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    world.barrier()
    world.reset_stats()
    t0 = time.perf_counter()
    c0 = time.process_time()
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    world.barrier()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    stats = dict(world.stats)
    # the bare Allreduce of the step's buffer (gradients + loss + hits), after a barrier: communication alone
    n_values = sum(p.size for p in model.params) + 2
    bare = []
    if world.active:
        buf = np.zeros(n_values, np.float32)
        for _ in range(5):
            world.allreduce_(buf)
        for _ in range(50):
            world.barrier()
            t = time.perf_counter()
            world.allreduce_(buf)
            bare.append(time.perf_counter() - t)
    if world.is_root:
        print(json.dumps({
            "processes": world.size, "threads": args.threads, "model": args.model, "batch": args.batch,
            "steps": args.steps, "wall_s": wall, "cpu_s_rank0": cpu, "ms_per_step": 1e3 * wall / args.steps,
            "images_per_s": args.steps * args.batch / wall,
            "allreduce_ms_per_step": 1e3 * stats["grad_allreduce_seconds"] / args.steps if world.active else 0.0,
            "other_reduce_ms_per_step": 1e3 * stats["reduce_seconds"] / args.steps if world.active else 0.0,
            "other_reduces_per_step": stats["reduce_calls"] / args.steps if world.active else 0.0,
            "bare_allreduce_ms_median": 1e3 * float(np.median(bare)) if bare else 0.0,
            "gradient_values": n_values - 2, "buffer_bytes": 4 * n_values,
        }), flush=True)


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def launch(processes, threads, args):
    cmd = [sys.executable, str(HERE), "--worker", "--threads", str(threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--model", args.model]
    if processes > 1:
        cmd = [_mpiexec(), "-n", str(processes)] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"mpi_scaling: {' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def estimate(one, buffer_bytes, machines=(1, 2, 4, 8, 16)):
    """Rows of the scaling estimate: per network, images/s for K machines of one process each."""
    t_compute = one["ms_per_step"] / 1e3  # one process x 1 thread on this machine
    rows = []
    for net, bw in BANDWIDTHS.items():
        cells = []
        for k in machines:
            comm = 0.0 if k == 1 else 2 * (k - 1) / k * buffer_bytes / bw + 2 * (k - 1) * LATENCY[net]
            step = t_compute / k + comm
            cells.append((k, one["batch"] / step, comm * 1e3))
        rows.append((net, cells))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--processes", type=int, default=2, help="K: processes (and threads) to compare (default 2)")
    p.add_argument("--model", choices=("seed", "deep"), default="seed")
    p.add_argument("--batch", type=int, default=32, help="global batch size (default 32)")
    p.add_argument("--steps", type=int, default=60, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--json", default=None, help="also write the figures there")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if _mpiexec() is None:
        raise SystemExit("mpi_scaling: no mpiexec found; pip install -e '.[mpi]'")
    k = args.processes
    runs = [("1 process x 1 thread", launch(1, 1, args)),
            (f"{k} processes x 1 thread (MPI)", launch(k, 1, args)),
            (f"1 process x {k} threads", launch(1, k, args))]
    base = runs[0][1]["images_per_s"]
    env = {v: os.environ[v] for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v in os.environ}
    print(f"model {args.model}, global batch {args.batch}, {args.steps} timed steps after {args.warmup}; "
          f"{os.cpu_count()} cores; OPENBLAS env: {env or 'unset'}")
    print(f"{'configuration':32} {'images/s':>9} {'speed-up':>8} {'ms/step':>8} {'in Allreduce':>13} "
          f"{'bare Allreduce':>15}")
    for name, r in runs:
        ar = f"{r['allreduce_ms_per_step']:.3f} ms" if r["processes"] > 1 else "-"
        bare = f"{r['bare_allreduce_ms_median']:.3f} ms" if r["processes"] > 1 else "-"
        print(f"{name:32} {r['images_per_s']:9.0f} {r['images_per_s'] / base:7.2f}x {r['ms_per_step']:8.2f} "
              f"{ar:>13} {bare:>15}")
    mpi = runs[1][1]
    if mpi["other_reduces_per_step"]:
        print(f"(BatchNormalization: {mpi['other_reduces_per_step']:.0f} more Allreduce calls per step, "
              f"{mpi['other_reduce_ms_per_step']:.3f} ms per step)")
    nbytes = mpi["buffer_bytes"]
    print(f"\nScaling estimate, K machines x 1 process x 1 thread, global batch {args.batch}: compute "
          f"{runs[0][1]['ms_per_step']:.1f} ms per step on one (measured above) / K, plus a ring Allreduce "
          f"of {mpi['gradient_values']:,} float32 gradients + 2 ({nbytes / 1e6:.2f} MB) per step:")
    machines = (1, 2, 4, 8, 16)
    print(f"{'network':24} " + " ".join(f"{f'K={m}':>16}" for m in machines))
    for net, cells in estimate(runs[0][1], nbytes, machines):
        print(f"{net:24} " + " ".join(f"{f'{ips:,.0f} img/s':>16}" for _, ips, _ in cells))
    print("(images/s; the Allreduce's time per step, in ms: "
          + "; ".join(f"{net}: " + ", ".join(f"K={m} {c:.2f}" for m, _, c in cells[1:])
                      for net, cells in estimate(runs[0][1], nbytes, machines)) + ")")
    print("Note: as K grows at a fixed global batch, each process's slice shrinks and its step gets less efficient; "
          "the estimate assumes the per-image compute time stays that of one process with the whole batch.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": {name: r for name, r in runs}}, f, indent=2)


if __name__ == "__main__":
    main()
