"""Shared pieces of the benchmarks: the seed model (npcnn and PyTorch) and machine facts."""

from __future__ import annotations

import os
import platform

import numpy as np

from npcnn.models import cifar10_cnn


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
