"""npcnn.set_num_threads drives both Numba's and BLAS's thread counts."""

from __future__ import annotations

import numba
import pytest
from threadpoolctl import threadpool_info

import npcnn
from npcnn import threads


@pytest.fixture
def restore_threads():
    before = npcnn.get_num_threads()
    yield
    npcnn.set_num_threads(before)


def _blas_threads():
    return {d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}


def test_default_is_all_cores():
    assert npcnn.get_num_threads() >= 1
    assert threads.max_threads() == numba.config.NUMBA_NUM_THREADS


def test_one_setting_drives_numba_and_blas(restore_threads):
    previous = npcnn.set_num_threads(1)
    assert isinstance(previous, int)
    assert npcnn.get_num_threads() == 1
    assert numba.get_num_threads() == 1
    assert _blas_threads() <= {1}
    n = threads.max_threads()
    npcnn.set_num_threads(n)
    assert npcnn.get_num_threads() == numba.get_num_threads() == n
    assert _blas_threads() <= {n}


@pytest.mark.parametrize("bad", [0, -1, 10**6, 1.5, "2", True, None])
def test_bad_counts_are_refused(bad, restore_threads):
    with pytest.raises(ValueError, match="set_num_threads"):
        npcnn.set_num_threads(bad)


def test_thread_info_reports_both_pools():
    info = threads.thread_info()
    assert info["npcnn"] == npcnn.get_num_threads()
    assert "numba_layer" in info and isinstance(info["blas"], list)


def test_results_do_not_depend_on_the_thread_count(restore_threads, rng):
    import numpy as np

    from npcnn.kernels import conv

    x = rng.standard_normal((16, 12, 12, 8)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    out = []
    for n in sorted({1, threads.max_threads()}):
        npcnn.set_num_threads(n)
        y, cache = conv.conv2d_forward_numba(x, kernel, bias, (1, 1), (1, 1, 1, 1), (12, 12), relu=True)
        out.append((y, *conv.conv2d_backward_numba(np.ones_like(y), cache)[1:]))
    for a, b in zip(out[0], out[-1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # BLAS may split its sums differently
