"""Deep model (issue 14, npcnn.models.cifar10_deep) throughput: one training step at batch 64 and 128
(forward, loss, backward, Adam; BatchNormalization, dropout) and inference at batch 256.

npcnn on the Numba backend and, when torch is installed, the same network in PyTorch
(``common.torch_deep_model``: ``nn.BatchNorm2d(momentum=0.01, eps=1e-3)`` as Keras's BN) with the same
thread count, in the same run; for each batch size the npcnn and PyTorch benchmarks run one after the
other. Augmentation is off in both (the PyTorch twin has none). Images per second are in each
benchmark's extra_info and in the session's summary table (rows 'deep train step', 'deep inference').

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE NPCNN_BENCH_THREADS=2 \\
        python -m pytest benchmarks/test_deep_bench.py --benchmark-min-rounds=5 --benchmark-max-time=2 \\
        --benchmark-columns=median,min,stddev,rounds
"""

from __future__ import annotations

import numpy as np
import pytest
from common import batch, deep_model, model_flops, torch_deep_model
from conftest import record_throughput

import npcnn

TRAIN_BATCHES = (64, 128)
INFER_BATCH = 256
ENGINES = ("numba", "torch")


def _npcnn_train_step(n):
    npcnn.set_backend("numba")
    model = deep_model()
    x, y = batch(n)
    for _ in range(2):  # warm-up: JIT (cached on disk) and buffers
        model._train_step(x, y)
    return model, lambda: model._train_step(x, y)


def _torch_train_step(n):
    torch = pytest.importorskip("torch")
    model = torch_deep_model().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)  # Keras's epsilon, as npcnn's Adam
    x, y = batch(n)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    return step


def _flops_info(info, per_image, n, benchmark):
    info["mflop_per_image"] = round(per_image / 1e6, 1)
    if getattr(benchmark, "stats", None) is not None:
        info["gflop_per_s"] = round(per_image * n / benchmark.stats.stats.mean / 1e9, 2)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("n", TRAIN_BATCHES)
def test_deep_train_step(benchmark, info, n, engine):
    if engine == "torch":
        step = _torch_train_step(n)
    else:
        _, step = _npcnn_train_step(n)
    info.update(kind="deep train step", engine=engine, batch=n, augmentation=False)
    benchmark(step)
    record_throughput(benchmark, "deep train step", n, engine)
    _flops_info(info, model_flops(deep_model())[1], n, benchmark)


@pytest.mark.parametrize("engine", ENGINES)
def test_deep_inference(benchmark, info, engine):
    n = INFER_BATCH
    x, _ = batch(n)
    if engine == "torch":
        torch = pytest.importorskip("torch")
        model = torch_deep_model().eval()
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

        def run():
            with torch.inference_mode():
                model(xt)
    else:
        npcnn.set_backend("numba")
        model = deep_model()

        def run():
            model.forward(x, training=False)
    run()
    info.update(kind="deep inference", engine=engine, batch=n)
    benchmark(run)
    record_throughput(benchmark, "deep inference", n, engine)
    _flops_info(info, model_flops(deep_model())[0], n, benchmark)


def test_deep_models_agree_in_size():
    """The two networks compared above have the same parameters (npcnn's count, Keras's 552,874)."""
    torch = pytest.importorskip("torch")
    model = torch_deep_model()
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    assert n == deep_model().count_params() == 552_874
    out = model.eval()(torch.zeros(2, 3, 32, 32))
    assert tuple(out.shape) == (2, 10)


def interleaved(rounds=15, threads=2, batches=TRAIN_BATCHES + (INFER_BATCH,)):
    """Alternate npcnn and PyTorch call by call (numba, torch, numba, torch, ...) for each batch size, so
    that a busy neighbour on the machine slows both alike; {(kind, batch): {engine: [seconds, ...]}}.
    ``INFER_BATCH`` in ``batches`` is the inference row; the others are training steps."""
    import time

    import torch

    npcnn.set_num_threads(threads)
    torch.set_num_threads(threads)
    times = {}
    for n in batches:
        if n == INFER_BATCH:
            runs = _inference_pair(n, torch)
            kind = "deep inference"
        else:
            runs = {"numba": _npcnn_train_step(n)[1], "torch": _torch_train_step(n)}
            kind = "deep train step"
        row = times.setdefault((kind, n), {"numba": [], "torch": []})
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(rounds):
            for engine, fn in runs.items():
                t = time.perf_counter()
                fn()
                row[engine].append(time.perf_counter() - t)
    return times


def _inference_pair(n, torch):
    x, _ = batch(n)
    model, tmodel = deep_model(), torch_deep_model().eval()
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def tstep():
        with torch.inference_mode():
            tmodel(xt)

    return {"numba": lambda: model.forward(x, training=False), "torch": tstep}


def main(argv=None):
    """``python benchmarks/test_deep_bench.py [--rounds R] [--threads T]``: the interleaved comparison, one
    line per row: images/s from the median and from the fastest call, and numba / torch for each."""
    import argparse
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    print(f"load average before: {os.getloadavg()}")
    times = interleaved(args.rounds, args.threads)
    print(f"{args.threads} threads, {args.rounds} interleaved rounds; images/s from the median (from the fastest)")
    print(f"{'what':<18}{'batch':>6}{'numba':>18}{'torch':>18}{'numba/torch':>20}")
    for (kind, n), row in times.items():
        med = {e: n / float(np.median(v)) for e, v in row.items()}
        best = {e: n / min(v) for e, v in row.items()}
        cells = "".join(f"{f'{med[e]:,.0f} ({best[e]:,.0f})':>18}" for e in ("numba", "torch"))
        ratio = f"{med['numba'] / med['torch']:.2f} ({best['numba'] / best['torch']:.2f})"
        print(f"{kind:<18}{n:>6}{cells}{ratio:>20}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
