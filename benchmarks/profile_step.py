"""Where one training step of the seed model spends its time: GEMM vs im2col/col2im/pool/other.

Run (2 threads, batch 32 and 128; numba backend unless --backend numpy)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/profile_step.py --threads 2 --batch 32 128

``--model deep`` profiles npcnn.models.cifar10_deep (issue 14) instead, with its augmentation layers
(``--no-augment`` leaves them out, as the throughput benchmark does) and plain Adam; its parts add
BatchNormalization (its kernels, and separately the time shards wait for each other at its
whole-batch sums: "BN shard sync"), dropout, the augmentation remap and the ReLU layers. It also
prints the step's achieved GFLOP/s (Conv2D and Dense multiply-adds only) next to NumPy's sgemm rate
on a 2048^3 product with the same threads::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        python benchmarks/profile_step.py --model deep --threads 2 --batch 64 128

Every kernel the step calls is wrapped with a timer (the wrappers cost a few microseconds a
call, so the shares are close to, not exactly, those of an unwrapped step); "other" is the
step's wall time minus everything timed (Python glue, Flatten, allocation, the loss glue).

With data parallelism (the Numba backend's default with several threads: one shard of the
batch per thread, see ``npcnn.parallel``) the timers add up the time of every thread, so the
figures are *thread*-milliseconds per step and the shares are of ``threads x wall time``;
"other" then also holds the time a thread waits (for the GIL, or for the other shard).
``--no-data-parallel`` profiles the intra-op path (each kernel split across the threads).
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections import defaultdict

import numpy as np

import npcnn
from npcnn import kernels as K
from npcnn import parallel
from npcnn.kernels import conv as conv_mod
from npcnn.kernels import winograd as winograd_mod

try:
    from benchmarks.common import deep_model, model_flops, seed_model, sgemm_peak
except ImportError:  # run as a script from benchmarks/
    from common import deep_model, model_flops, seed_model, sgemm_peak

TIMES = defaultdict(float)
_LOCK = threading.Lock()


def _timed(category, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t
            with _LOCK:  # shards time their kernels from several threads
                TIMES[category] += dt

    wrapper.__wrapped__ = fn
    return wrapper


def instrument(model):
    """Wrap every kernel entry point with a timer; returns an undo function.

    Whole kernels are replaced through the registry (``npcnn.kernels.override``, both backends),
    which also reaches them inside the composite kernels (conv's im2col and col2im, the fused
    op's max-pool); the GEMMs and the bias/ReLU passes of conv and the fused op are module
    attributes that those kernels look up at call time.
    """
    stack = contextlib.ExitStack()

    def patch(obj, name, category):
        old = getattr(obj, name)
        setattr(obj, name, _timed(category, old))
        stack.callback(setattr, obj, name, old)

    patch(conv_mod, "gemm", "GEMM (conv)")
    patch(winograd_mod, "gemm", "GEMM (conv)")  # the 16 stacked GEMMs of the Winograd convolutions
    for fn in ("_in_par", "_in_ser", "_out_par", "_out_ser", "_out_adjoint_par", "_out_adjoint_ser",
               "_in_adjoint_par", "_in_adjoint_ser", "_kernel_transform", "_kernel_transform_adjoint"):
        patch(winograd_mod, fn, "Winograd transforms")
    for driver in ("par", "ser"):
        patch(conv_mod, f"_bias_relu_{driver}", "bias+ReLU (conv fwd)")
        patch(conv_mod, f"_mask_db_{driver}", "ReLU mask + db (conv bwd)")
    for name, cat in (("im2col", "im2col"), ("col2im", "col2im"),
                      ("maxpool2d_forward", "max-pool fwd"), ("maxpool2d_backward", "max-pool bwd"),
                      ("dense_forward", "Dense (GEMM)"), ("dense_backward", "Dense (GEMM)"),
                      ("relu_forward", "ReLU layers"), ("relu_backward", "ReLU layers"),
                      ("sparse_softmax_ce", "softmax-CE"), ("add_arrays", "shard sum + NaN check"),
                      ("all_finite", "shard sum + NaN check"),
                      # the deep model's layers (issue 14)
                      ("batchnorm_sum", "BatchNorm"), ("batchnorm_sqdev_sum", "BatchNorm"),
                      ("batchnorm_forward", "BatchNorm"), ("batchnorm_backward_sums", "BatchNorm"),
                      ("batchnorm_backward", "BatchNorm"), ("dropout_forward", "Dropout"),
                      ("dropout_backward", "Dropout"), ("remap2d_forward", "augmentation (remap)"),
                      ("remap2d_backward", "augmentation (remap)")):
        for backend in ("numpy", "numba"):
            stack.enter_context(K.override(name, _timed(cat, K.get_kernel(name, backend)), backend))
    patch(model.optimizer, "apply", "Adam")

    for_shard = parallel.ShardReducer.for_shard  # BN's whole-batch sums: a barrier between the shards

    def timed_for_shard(self, index):
        return _timed("BN shard sync (wait + sum)", for_shard(self, index))

    parallel.ShardReducer.for_shard = timed_for_shard
    stack.callback(setattr, parallel.ShardReducer, "for_shard", for_shard)
    return stack.close


def profile(backend, batch, steps, model_name="seed", augment=True):
    npcnn.set_backend(backend)
    model = seed_model() if model_name == "seed" else deep_model(augment=augment)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    for _ in range(3):  # warm-up: compile, buffers
        model._train_step(x, y)
    restore = instrument(model)
    TIMES.clear()
    t = time.perf_counter()
    for _ in range(steps):
        model._train_step(x, y)
    total = time.perf_counter() - t
    restore()
    shards = model._shards(batch)
    TIMES["other"] = total * shards - sum(TIMES.values())
    profile.model = model
    return total / steps, shards, {k: v / steps for k, v in TIMES.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numba", choices=("numba", "numpy"))
    ap.add_argument("--model", default="seed", choices=("seed", "deep"),
                    help="seed: the Keras tutorial CNN (default); deep: npcnn.models.cifar10_deep")
    ap.add_argument("--no-augment", action="store_true", help="--model deep without its augmentation layers")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-data-parallel", action="store_true", help="intra-op threading instead of shards")
    args = ap.parse_args(argv)
    if args.threads:
        npcnn.set_num_threads(args.threads)
    if args.no_data_parallel:
        npcnn.set_data_parallel(False)
    peak = sgemm_peak() if args.model == "deep" else None
    for batch in args.batch:
        step, shards, parts = profile(args.backend, batch, args.steps, args.model, not args.no_augment)
        mode = f"{shards} data-parallel shards, thread-ms" if shards > 1 else "ms"
        what = "" if args.model == "seed" else f"{args.model} model{' (no augmentation)' if args.no_augment else ''}, "
        print(f"\n{what}{args.backend}, batch {batch}, {npcnn.get_num_threads()} threads: "
              f"{step * 1e3:.2f} ms/step, {batch / step:,.0f} img/s ({mode})")
        print(f"  {'part':<28}{'ms/step':>9}{'share':>8}")
        for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"  {k:<28}{v * 1e3:>9.2f}{v / (step * shards):>8.1%}")
        if peak is not None:
            train_flops = model_flops(profile.model)[1] * batch
            gemm = parts.get("GEMM (conv)", 0.0) + parts.get("Dense (GEMM)", 0.0)
            print(f"  achieved: {train_flops / step / 1e9:.1f} GFLOP/s over the step, "
                  f"{train_flops / gemm * shards / 1e9 if gemm else float('nan'):.1f} GFLOP/s inside the GEMMs "
                  f"(Conv2D + Dense multiply-adds of a direct convolution, {train_flops / batch / 1e6:.0f} MFLOP "
                  f"per image; layers that run by Winograd do 2.25x fewer in their GEMMs, so these are effective "
                  f"rates); NumPy sgemm peak (2048^3, {npcnn.get_num_threads()} threads): {peak:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
