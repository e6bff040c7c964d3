"""Benchmark session setup: one thread count for npcnn (Numba + BLAS) and PyTorch, recorded facts.

NPCNN_BENCH_THREADS (default: all cores) sets the threads of every engine in the run.
At the end the session prints images/s per configuration and the ratios
numba/torch and numba/numpy, from the same run.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from common import machine_info  # noqa: E402

import npcnn  # noqa: E402

THREADS = int(os.environ.get("NPCNN_BENCH_THREADS", "0")) or npcnn.threads.max_threads()
npcnn.set_num_threads(THREADS)
try:
    import torch

    torch.set_num_threads(THREADS)
except ImportError:  # the torch extra is optional
    torch = None

# (kind, batch) -> {engine: images per second}, filled by the model benchmarks
THROUGHPUT: dict = {}


@pytest.fixture
def info(benchmark):
    """The benchmark's extra_info, pre-filled with the machine, threads and BLAS facts."""
    benchmark.extra_info.update(machine_info())
    if torch is not None:
        benchmark.extra_info["torch"] = torch.__version__
        benchmark.extra_info["torch_threads"] = torch.get_num_threads()
    return benchmark.extra_info


def record_throughput(benchmark, kind, batch, engine):
    """Store images/s (from the mean time of one call on ``batch`` images) in extra_info and the summary.

    With ``--benchmark-disable`` (a smoke test: each benchmark runs once, untimed) ``benchmark.stats``
    is None and nothing is recorded.
    """
    if getattr(benchmark, "stats", None) is None:
        return None
    ips = batch / benchmark.stats.stats.mean
    benchmark.extra_info["images_per_s"] = round(ips, 1)
    THROUGHPUT.setdefault((kind, batch), {})[engine] = ips
    return ips


def pytest_terminal_summary(terminalreporter):
    if not THROUGHPUT:
        return
    tr = terminalreporter
    tr.section(f"images per second ({THREADS} threads, same run)")
    tr.write_line(f"{'what':<18}{'batch':>6}{'numba':>10}{'numpy':>10}{'torch':>10}{'numba/torch':>13}{'numba/numpy':>13}")
    for (kind, batch), r in sorted(THROUGHPUT.items()):
        cells = [f"{r[e]:>10,.0f}" if e in r else f"{'-':>10}" for e in ("numba", "numpy", "torch")]
        vs_t = f"{r['numba'] / r['torch']:>13.2f}" if "numba" in r and "torch" in r else f"{'-':>13}"
        vs_n = f"{r['numba'] / r['numpy']:>13.2f}" if "numba" in r and "numpy" in r else f"{'-':>13}"
        tr.write_line(f"{kind:<18}{batch:>6}{''.join(cells)}{vs_t}{vs_n}")
