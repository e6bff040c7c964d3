"""The Dropout kernels (npcnn/kernels/dropout.py).

* the NumPy twin and the Numba version give bit-identical masks, outputs and gradients (random
  shapes, noise shapes, offsets, float32 and float64, with and without a reused workspace);
* the mask does not depend on the split: shards [0:a] (offset 0) and [a:N] (offset a)
  concatenated equal one call over [0:N] bit for bit; the serial and prange drivers, and any
  thread count, give the same mask;
* the hash is SplitMix64 (its published first outputs), output number n * P + j of the
  generator started at mix64(seed);
* statistics: the keep fraction is within binomial bounds of 1 - rate, E[y] = x; PyTorch's
  dropout keeps the same fraction and scales by the same 1 / (1 - rate);
* the gradient is dy * mask * scale; noise_shape broadcasting; rate 0; errors.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npcnn.kernels import dropout as D
from npcnn.kernels import workspace
from npcnn.kernels.workspace import Workspace

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
BACKENDS = ("numpy", "numba")


def fwd(backend):
    return getattr(D, f"dropout_forward_{backend}")


def bwd(backend):
    return getattr(D, f"dropout_backward_{backend}")


@st.composite
def cases(draw):
    """x shape (N, ...) of rank 2 to 4, a per-sample noise_shape (or None), rate, seed, offset."""
    sample = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    n = draw(st.integers(1, 6))
    noise = None
    if draw(st.booleans()):
        noise = tuple(draw(st.sampled_from([1, s, None])) for s in sample)
    rate = draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.9]))
    seed = draw(st.integers(0, 2**64 - 1))
    offset = draw(st.integers(0, 10**6))
    return (n,) + sample, noise, rate, seed, offset


@pytest.fixture(params=["parallel", "serial"])
def driver(request, monkeypatch):
    """Every kernel on its prange driver (even for small arrays), then on its serial one."""
    monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", 0 if request.param == "parallel" else 1 << 62)
    return request.param


# ----------------------------------------------------------------------------- twins
@settings(max_examples=60, **SETTINGS)
@given(case=cases(), dtype=st.sampled_from([np.float32, np.float64]), data_seed=st.integers(0, 2**16))
def test_twins_bit_identical(case, dtype, data_seed):
    shape, noise, rate, seed, offset = case
    rng = np.random.default_rng(data_seed)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y0, c0 = D.dropout_forward_numpy(x, rate, seed, offset, noise)
    dx0 = D.dropout_backward_numpy(dy, c0)
    assert y0.dtype == dtype and dx0.dtype == dtype and c0.mask.dtype == np.uint8
    assert np.dtype(type(c0.scale)) == dtype
    ws = Workspace()
    for use_ws in (None, ws, ws):
        y1, c1 = D.dropout_forward_numba(x, rate, seed, offset, noise, ws=use_ws)
        np.testing.assert_array_equal(c0.mask, c1.mask)
        np.testing.assert_array_equal(y0, y1)
        assert y1.dtype == dtype and c1.scale == c0.scale and type(c1.scale) is type(c0.scale)
        np.testing.assert_array_equal(dx0, D.dropout_backward_numba(dy, c1, ws=use_ws))
    assert "dropout_forward.mask" in ws and "dropout_backward.dx" in ws


# ----------------------------------------------------------------------------- the mask is split-free
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("noise", [None, (1, 1, 4), (5, 1, 1)])
def test_shards_concatenate_to_the_full_batch(backend, noise):
    x = np.random.default_rng(0).standard_normal((9, 5, 3, 4)).astype(np.float32)
    f = fwd(backend)
    y_full, c_full = f(x, 0.4, 2024, 0, noise)
    y_full, m_full = y_full.copy(), c_full.mask.copy()
    for a in (1, 4, 8):
        y0, c0 = f(x[:a], 0.4, 2024, 0, noise)
        y0, m0 = y0.copy(), c0.mask.copy()
        y1, c1 = f(x[a:], 0.4, 2024, a, noise)
        np.testing.assert_array_equal(np.concatenate([y0, y1]), y_full)
        np.testing.assert_array_equal(np.concatenate([m0, c1.mask]), m_full)
    # three shards, one per backend and a reused workspace each: still the same
    ws = Workspace()
    parts = [D.dropout_forward_numpy(x[0:3], 0.4, 2024, 0, noise)[0],
             D.dropout_forward_numba(x[3:7], 0.4, 2024, 3, noise, ws=ws)[0].copy(),
             D.dropout_forward_numba(x[7:], 0.4, 2024, 7, noise, ws=ws)[0]]
    np.testing.assert_array_equal(np.concatenate(parts), y_full)


@pytest.mark.parametrize("noise", [None, (1, 1, 8)])
def test_drivers_and_thread_counts_give_the_same_mask(noise, monkeypatch):
    x = np.random.default_rng(1).standard_normal((16, 8, 8, 8)).astype(np.float32)
    dy = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    results = []
    old = numba.get_num_threads()
    for threshold, threads in ((1 << 62, old), (0, old), (0, 1)):  # serial; prange; prange on 1 thread
        monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", threshold)
        numba.set_num_threads(threads)
        try:
            y, c = D.dropout_forward_numba(x, 0.3, 77, 5, noise)
            results.append((y, c.mask, D.dropout_backward_numba(dy, c)))
        finally:
            numba.set_num_threads(old)
    for r in results[1:]:
        for a, b in zip(results[0], r):
            np.testing.assert_array_equal(a, b)


def test_the_hash_is_splitmix64():
    """SplitMix64 seeded with 1234567 starts 6457827717110365317, 3203168211198807973, ... (the
    reference splitmix64.c), and mask element (n, j) is output n * P + j of the generator at mix64(seed)."""
    def splitmix64(state):
        while True:
            state = (state + D.GOLDEN) & D.MASK64
            yield D.mix64(state)

    gen = splitmix64(1234567)
    assert [next(gen) for _ in range(3)] == [6457827717110365317, 3203168211198807973, 9817491932198370423]
    seed, rate, n, P = 99, 0.5, 4, 6
    gen = splitmix64(D.mix64(seed))
    want = np.array([(next(gen) >> 11) / 2.0**53 >= rate for _ in range(n * P)], np.uint8).reshape(n, P)
    for backend in BACKENDS:
        _, cache = fwd(backend)(np.ones((n, P)), rate, seed, 0)
        np.testing.assert_array_equal(cache.mask, want)


def test_seeds_and_offsets():
    x = np.ones((8, 100), np.float32)
    for backend in BACKENDS:
        f = fwd(backend)
        m = {s: f(x, 0.5, s, 0)[1].mask.copy() for s in (0, 1, 2**63, 2**64 - 1)}
        assert len({v.tobytes() for v in m.values()}) == 4  # different seeds, different masks
        np.testing.assert_array_equal(f(x, 0.5, 1, 0)[1].mask, m[1])  # same seed, same mask
        np.testing.assert_array_equal(f(x, 0.5, 2**64 + 1, 0)[1].mask, m[1])  # seeds are taken mod 2^64
        assert not np.array_equal(m[1][0], m[1][1])  # samples differ from each other
        np.testing.assert_array_equal(f(x[:1], 0.5, 1, 3)[1].mask[0], m[1][3])  # offset 3 = row 3
        np.testing.assert_array_equal(f(x, 0.5, np.uint64(1), np.int64(0))[1].mask, m[1])  # NumPy ints


def test_fold_seed():
    assert D.fold_seed(5, 1, 2) == D.fold_seed(5, 1, 2)
    assert len({D.fold_seed(5, 1, 2), D.fold_seed(5, 2, 1), D.fold_seed(6, 1, 2), D.fold_seed(5, 1, 3)}) == 4
    assert 0 <= D.fold_seed(-1, 10**30) < 2**64


# ----------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.9])
def test_keep_fraction_within_binomial_bounds(backend, rate):
    n = 200 * 1000
    _, cache = fwd(backend)(np.ones((200, 1000), np.float32), rate, 31337, 0)
    kept = int(cache.mask.sum())
    p = 1 - rate
    assert abs(kept - n * p) < 5 * np.sqrt(n * p * (1 - p))  # 5 standard deviations
    # and per sample (1000 elements each): no sample is far off
    per = cache.mask.sum(axis=1)
    assert np.all(np.abs(per - 1000 * p) < 6 * np.sqrt(1000 * p * (1 - p)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_expectation_is_the_input(backend):
    """Each of 4000 samples carries the same x; their independent masks average to E[y] = x."""
    rate, N = 0.3, 4000
    x1 = np.linspace(-2, 3, 50).astype(np.float64)
    y, _ = fwd(backend)(np.broadcast_to(x1, (N, 50)).copy(), rate, 8, 0)
    sd = np.abs(x1) * np.sqrt(rate / (1 - rate)) / np.sqrt(N)  # std of the mean of N samples
    assert np.all(np.abs(y.mean(axis=0) - x1) <= 5 * sd + 1e-12)
    kept = y != 0
    np.testing.assert_allclose(y[kept], (np.broadcast_to(x1, (N, 50)) / (1 - rate))[kept], rtol=1e-15)


def test_torch_keeps_the_same_fraction_and_scale():
    torch = pytest.importorskip("torch")
    rate, n = 0.3, 200 * 1000
    torch.manual_seed(0)
    yt = torch.nn.functional.dropout(torch.ones(200, 1000), p=rate, training=True).numpy()
    bound = 5 * np.sqrt(n * rate * (1 - rate))
    for backend in BACKENDS:
        y, cache = fwd(backend)(np.ones((200, 1000), np.float32), rate, 4, 0)
        assert abs(int(cache.mask.sum()) - n * (1 - rate)) < bound
        assert np.unique(y[y != 0]).tolist() == np.unique(yt[yt != 0]).tolist()  # both 1 / (1 - rate) in float32
    assert abs(int((yt != 0).sum()) - n * (1 - rate)) < bound


# ----------------------------------------------------------------------------- gradient, shapes, rate 0
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_is_mask_times_scale(backend, driver):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 5)).astype(np.float64)
    dy = rng.standard_normal(x.shape)
    y, cache = fwd(backend)(x, 0.25, 10, 2)
    keep_dy, keep_mask = dy.copy(), cache.mask.copy()
    dx = bwd(backend)(dy, cache)
    np.testing.assert_array_equal(dx, dy * cache.mask * (1 / 0.75))
    np.testing.assert_array_equal(y, x * cache.mask * (1 / 0.75))
    np.testing.assert_array_equal(dy, keep_dy)  # inputs never written
    np.testing.assert_array_equal(cache.mask, keep_mask)
    # y is linear in x for a fixed (seed, offset): its Jacobian is diag(mask * scale)
    e = np.zeros_like(x)
    e[1, 2, 3] = 1.0
    assert fwd(backend)(x + e, 0.25, 10, 2)[0][1, 2, 3] - y[1, 2, 3] == pytest.approx(cache.mask[1, 2, 3] / 0.75)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_shape_broadcasts(backend, driver):
    x = np.random.default_rng(4).standard_normal((6, 4, 5, 8)).astype(np.float32)
    for noise in [(1, 1, 8), (4, 5, 1), (1, 5, 1), (None, 1, None), (1, 1, 1)]:
        y, cache = fwd(backend)(x, 0.5, 12, 0, noise)
        expect = tuple(s if d is None else d for d, s in zip(noise, x.shape[1:]))
        assert cache.mask.shape == (6,) + expect and cache.mask.dtype == np.uint8
        full = np.broadcast_to(cache.mask, x.shape)
        np.testing.assert_array_equal(y, np.where(full != 0, x * np.float32(2), np.float32(0)))
        dy = np.ones_like(x)
        np.testing.assert_array_equal(bwd(backend)(dy, cache), full * np.float32(2))
    # (1, 1, C): whole channels of a sample dropped together
    _, cache = fwd(backend)(x, 0.5, 12, 0, (1, 1, 8))
    assert 0 < cache.mask.mean() < 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_rate_zero_is_the_identity(backend):
    x = np.random.default_rng(5).standard_normal((3, 7)).astype(np.float32)
    y, cache = fwd(backend)(x, 0.0, 1, 0)
    np.testing.assert_array_equal(y, x)
    assert cache.mask.all() and cache.scale == 1 and y.dtype == np.float32
    np.testing.assert_array_equal(bwd(backend)(x, cache), x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend):
    x = np.ones((2, 3, 4), np.float32)
    for rate in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="rate"):
            fwd(backend)(x, rate, 0, 0)
    for noise in [(3,), (3, 4, 1), (2, 4), (3, 5)]:
        with pytest.raises(ValueError, match="noise_shape"):
            fwd(backend)(x, 0.5, 0, 0, noise)
    with pytest.raises(ValueError, match="sample_offset"):
        fwd(backend)(x, 0.5, 0, -1)


def test_non_contiguous_input():
    x = np.random.default_rng(6).standard_normal((5, 6, 4)).astype(np.float32).transpose(0, 2, 1)
    dy = np.ones_like(x)
    a, ca = D.dropout_forward_numpy(x, 0.5, 3, 0)
    b, cb = D.dropout_forward_numba(x, 0.5, 3, 0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(D.dropout_backward_numpy(dy, ca), D.dropout_backward_numba(dy, cb))


def test_registry_dict():
    assert D.KERNELS == {"dropout_forward": (D.dropout_forward_numpy, D.dropout_forward_numba),
                         "dropout_backward": (D.dropout_backward_numpy, D.dropout_backward_numba)}


def test_caches_cross_backends():
    x = np.random.default_rng(7).standard_normal((4, 3, 2)).astype(np.float32)
    dy = np.ones_like(x)
    _, ca = D.dropout_forward_numpy(x, 0.5, 9, 0, (1, 2))
    _, cb = D.dropout_forward_numba(x, 0.5, 9, 0, (1, 2))
    assert type(ca) is type(cb) is D.DropoutCache
    np.testing.assert_array_equal(D.dropout_backward_numba(dy, ca), D.dropout_backward_numpy(dy, cb))
