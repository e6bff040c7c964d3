"""Shared pieces of the benchmarks: the seed and deep models (npcnn and PyTorch) and machine facts."""

from __future__ import annotations

import os
import platform

import numpy as np

from npcnn.models import cifar10_cnn, cifar10_deep


def seed_model(seed=0):
    """The Keras CIFAR-10 tutorial CNN (122,570 parameters), compiled with Adam."""
    npcnn_seed(seed)
    return cifar10_cnn()


def npcnn_seed(seed):
    from npcnn import set_random_seed

    set_random_seed(seed)


def torch_seed_model():
    """The same network in PyTorch (NCHW), with torch.optim.Adam; None when torch is absent."""
    try:
        import torch
    except ImportError:
        return None
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(1024, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    return model


def deep_model(seed=0, augment=False):
    """npcnn.models.cifar10_deep (552,874 parameters), compiled with plain Adam (lr 1e-3, no schedule, as
    the PyTorch twin). ``augment=False`` (the default here) leaves out RandomFlip and RandomTranslation, as
    the PyTorch twin has none: the timings compare the same network."""
    npcnn_seed(seed)
    return cifar10_deep(augment=augment, decay_steps=None, weight_decay=None)


def torch_deep_model():
    """cifar10_deep in PyTorch (NCHW), no augmentation; BatchNorm with Keras's settings (momentum 0.99 there
    is PyTorch's 0.01, epsilon 1e-3), Keras's initialisation (glorot-uniform kernels, zero biases). Train it
    with torch.optim.Adam; None when torch is absent."""
    try:
        import torch
    except ImportError:
        return None
    nn = torch.nn
    torch.manual_seed(0)
    layers, c = [], 3
    for f, rate in ((32, 0.2), (64, 0.3), (128, 0.4)):
        for _ in range(2):
            layers += [nn.Conv2d(c, f, 3, padding=1), nn.BatchNorm2d(f, momentum=0.01, eps=1e-3), nn.ReLU()]
            c = f
        layers += [nn.MaxPool2d(2), nn.Dropout(rate)]
    layers += [nn.Flatten(), nn.Linear(4 * 4 * 128, 128), nn.BatchNorm1d(128, momentum=0.01, eps=1e-3), nn.ReLU(),
               nn.Dropout(0.5), nn.Linear(128, 10)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def model_flops(model):
    """(forward, training) floating-point operations per image of an npcnn model's Conv2D and Dense layers
    (2 per multiply-add; training = forward + the kernel gradient + the input gradient, which the first
    layer does not compute). The other layers' element-wise work is left out."""
    fwd = first = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            oh, ow, _ = layer.output_shape
            n = 2 * oh * ow * layer.params["kernel"].size  # kernel (KH, KW, C, F)
        elif kind == "Dense":
            n = 2 * layer.params["kernel"].size  # kernel (D, U)
        else:
            continue
        if not fwd:
            first = n
        fwd += n
    return fwd, 3 * fwd - first


def sgemm_peak(n=2048, repeats=5):
    """NumPy's float32 GEMM rate (GFLOP/s, best of ``repeats``) on an n x n x n product, with the BLAS
    threads as set now (npcnn.set_num_threads sets them)."""
    import time

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def batch(n, seed=0):
    """Random NHWC float32 images in [0, 1) and integer labels."""
    rng = np.random.default_rng(seed)
    return rng.random((n, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, n)


def machine_info():
    """CPU model, core count, BLAS (threadpoolctl) and Numba threading facts for extra_info."""
    from npcnn.threads import thread_info

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = thread_info()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": info["npcnn"],
        "numba_threads": info["numba"],
        "numba_layer": info["numba_layer"],
        "blas": info["blas"],
        "openblas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ},
    }
