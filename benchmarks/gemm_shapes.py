"""The deep model's conv GEMMs one by one, single-threaded, against NumPy's sgemm rate.

A data-parallel shard of the deep model (``npcnn.models.cifar10_deep``) runs each 'same' 3x3 Conv2D as
three single-threaded GEMMs on its im2col columns (M = shard images x output pixels, K = 9 x input
channels, N = filters): forward ``cols @ W`` (M x K x N), kernel gradient ``cols.T @ dy`` and column
gradient ``dy @ W.T``. This script times each with NumPy (the same OpenBLAS calls npcnn makes) and prints
GFLOP/s next to the square-sgemm rate, to show where the step's GEMM time goes::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/gemm_shapes.py --shard 32
"""

import argparse
import time

import numpy as np

# (H, W, C_in, filters) of the six convolutions ('same' padding, stride 1)
CONVS = [(32, 32, 3, 32), (32, 32, 32, 32), (16, 16, 32, 64), (16, 16, 64, 64), (8, 8, 64, 128), (8, 8, 128, 128)]


def best_of(fn, reps, *args, **kwargs):
    fn(*args, **kwargs)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    from threadpoolctl import threadpool_info, threadpool_limits

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shard", type=int, default=32, help="images per shard (batch 64 on 2 threads: 32)")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args(argv)
    threadpool_limits(1)
    blas = [(d.get("internal_api"), d.get("architecture"), d.get("num_threads")) for d in threadpool_info()
            if d.get("user_api") == "blas"]
    rng = np.random.default_rng(0)
    n = 1024
    a = rng.random((n, n), dtype=np.float32)
    peak = 2 * n ** 3 / best_of(np.matmul, args.reps, a, a) / 1e9
    print(f"1 thread, BLAS {blas}; square sgemm ({n}^3): {peak:.0f} GFLOP/s")
    print(f"{'conv (H x W x C -> F)':24} {'M':>6} {'K':>5} {'N':>4}   {'forward':>16} {'kernel grad':>16} "
          f"{'column grad':>16}")
    total_t = total_f = 0.0
    for h, w, c, f in CONVS:
        m, k = args.shard * h * w, 9 * c
        cols = rng.random((m, k), dtype=np.float32)
        kern = rng.random((k, f), dtype=np.float32)
        dy = rng.random((m, f), dtype=np.float32)
        out, dk, dcols = np.empty((m, f), np.float32), np.empty((k, f), np.float32), np.empty((m, k), np.float32)
        flops = 2 * m * k * f
        times = [best_of(np.matmul, args.reps, cols, kern, out=out),
                 best_of(np.matmul, args.reps, cols.T, dy, out=dk),
                 best_of(np.matmul, args.reps, dy, kern.T, out=dcols)]
        if c == 3:  # the first layer computes no input gradient
            times[2] = None
        cells = [f"{t * 1e3:6.2f} ms {flops / t / 1e9:4.0f} GF/s" if t else f"{'-':>16}" for t in times]
        total_t += sum(t for t in times if t)
        total_f += flops * sum(1 for t in times if t)
        shape = f"{h:2d} x {w:2d} x {c:3d} -> {f:3d}"
        print(f"{shape:24} {m:6d} {k:5d} {f:4d}   " + " ".join(f"{x:>16}" for x in cells))
    print(f"all conv GEMMs of one shard's step: {total_t * 1e3:.1f} ms, {total_f / total_t / 1e9:.0f} GFLOP/s "
          f"({100 * total_f / total_t / 1e9 / peak:.0f} % of square sgemm)")


if __name__ == "__main__":
    main()
