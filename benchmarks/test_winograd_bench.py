"""The deep model's 3x3 'same' convolutions one by one: Winograd F(2x2, 3x3) vs im2col (both npcnn/Numba)
vs PyTorch's nn.functional.conv2d, forward + backward (input and kernel gradients), same threads, same run.

Shapes: one data-parallel shard of the deep model's training step at batch 64 (32 images), float32,
NHWC for npcnn and NCHW for PyTorch (its native layout). The conv kernels get a Workspace as in a
model. GFLOP/s in ``extra_info`` count a direct convolution's multiply-adds (3 x 2 x N*OH*OW*9*C*F for
forward + two gradients), so Winograd's figure is an effective rate.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE NPCNN_BENCH_THREADS=2 \\
        python -m pytest benchmarks/test_winograd_bench.py --benchmark-columns=median,min,stddev,rounds
"""

from __future__ import annotations

import numpy as np
import pytest

from npcnn.kernels import conv, im2col, winograd
from npcnn.kernels.workspace import Workspace

N = 32
# name: (H, W, C) -> F, as in npcnn.models.cifar10_deep (every conv but the first qualifies)
LAYERS = {"32x32x32->32": ((32, 32, 32), 32), "16x16x32->64": ((16, 16, 32), 64),
          "16x16x64->64": ((16, 16, 64), 64), "8x8x64->128": ((8, 8, 64), 128),
          "8x8x128->128": ((8, 8, 128), 128)}
ALGORITHMS = ("winograd", "im2col", "torch")


def _data(layer):
    (h, w, c), f = LAYERS[layer]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, h, w, c)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, c, f)) * np.sqrt(2 / (9 * c))).astype(np.float32)
    bias = np.zeros(f, np.float32)
    dy = rng.standard_normal((N, h, w, f)).astype(np.float32)
    return x, kernel, bias, dy


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv_forward_backward(benchmark, info, algorithm, layer):
    x, kernel, bias, dy = _data(layer)
    flops = 3 * 2 * x.shape[0] * x.shape[1] * x.shape[2] * 9 * x.shape[3] * kernel.shape[3]
    info.update(layer=layer, algorithm=algorithm, batch=N, mflop=round(flops / 1e6, 1))
    if algorithm == "torch":
        torch = pytest.importorskip("torch")
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).requires_grad_(True)
        wt = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).requires_grad_(True)
        bt = torch.from_numpy(bias).requires_grad_(True)
        dyt = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))

        def step():
            xt.grad = wt.grad = bt.grad = None
            torch.nn.functional.conv2d(xt, wt, bt, padding=1).backward(dyt)
    else:
        previous = winograd.set_enabled(algorithm == "winograd")
        ws = Workspace()
        oh, ow, pads = im2col.conv_geometry(x.shape, (3, 3), (1, 1), "same")
        assert isinstance(conv.conv2d_forward_numba(x, kernel, bias, (1, 1), pads, (oh, ow), ws=ws)[1],
                          winograd.WinogradCache) == (algorithm == "winograd")

        def step():
            _, cache = conv.conv2d_forward_numba(x, kernel, bias, (1, 1), pads, (oh, ow), ws=ws)
            conv.conv2d_backward_numba(dy, cache, True, ws=ws)

    try:
        step()  # warm-up: JIT (cached), buffers
        benchmark(step)
    finally:
        if algorithm != "torch":
            winograd.set_enabled(previous)
    if getattr(benchmark, "stats", None) is not None:
        info["gflop_per_s"] = round(flops / benchmark.stats.stats.median / 1e9, 1)
