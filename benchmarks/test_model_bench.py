"""Seed model throughput: one full training step (forward, loss, backward, Adam) and inference.

npcnn on both backends and, when torch is installed, the same network in PyTorch with the
same thread count, in the same run. Images per second are in each benchmark's extra_info
and in the summary table the session prints at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
from common import batch, seed_model, torch_seed_model
from conftest import record_throughput

import npcnn

TRAIN_BATCHES = (32, 128)
INFER_BATCH = 256


def _npcnn_train_step(backend, n):
    npcnn.set_backend(backend)
    model = seed_model()
    x, y = batch(n)
    for _ in range(2):  # warm-up: JIT (cached on disk) and buffers
        model._train_step(x, y)

    def step():
        model._train_step(x, y)

    return step


@pytest.mark.parametrize("n", TRAIN_BATCHES)
@pytest.mark.parametrize("engine", ["numba", "numpy", "torch"])
def test_train_step(benchmark, info, engine, n):
    if engine == "torch":
        step = _torch_train_step(n)
    else:
        step = _npcnn_train_step(engine, n)
    info.update(kind="train step", engine=engine, batch=n)
    benchmark(step)
    record_throughput(benchmark, "train step", n, engine)


@pytest.mark.parametrize("engine", ["numba", "numpy", "torch"])
def test_inference(benchmark, info, engine):
    n = INFER_BATCH
    x, _ = batch(n)
    if engine == "torch":
        torch = pytest.importorskip("torch")
        model = torch_seed_model().eval()
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

        def run():
            with torch.inference_mode():
                model(xt)
    else:
        npcnn.set_backend(engine)
        model = seed_model()

        def run():
            model.forward(x, training=False)
    run()
    info.update(kind="inference", engine=engine, batch=n)
    benchmark(run)
    record_throughput(benchmark, "inference", n, engine)


def _torch_train_step(n):
    torch = pytest.importorskip("torch")
    model = torch_seed_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
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
