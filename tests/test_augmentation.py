"""RandomFlip and RandomTranslation (issue 13, item 3) and their remap kernel (npcnn/kernels/augment.py).

* the remap kernel: NumPy twin and Numba version agree bit for bit (random taps with 1 or 2 per
  output index, cells outside the image, fill values; float32 and float64; ws=None and one Workspace
  reused twice; prange and serial drivers); backward is the adjoint (<remap x, d> = <x, remap^T d>)
  and never writes dy;
* fill modes against hand-computed rows (Keras's (d c b a | a b c d | d c b a) pictures) and the
  reflect rule against Keras's own index formula; bilinear weights by hand;
* statistics: each flip happens with probability 1/2 (binomial bounds), independently; shifts lie
  in the factor's range and are roughly uniform (bins within binomial bounds); the output equals
  the image moved by the drawn shift;
* inference is the identity; a batch split in two shards (sample_offset 0 and a) gives the rows of
  the unsplit batch, forward and backward; different steps, layers and seeds draw differently;
  1 and 2 data-parallel threads give the same gradients;
* gradient checks (the remap is linear; the draws are frozen by the check's step seed) on both
  backends, and a model with the layers trains; Keras's arguments and errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npcnn
from npcnn import gradcheck, threads
from npcnn.kernels import augment
from npcnn.kernels.workspace import Workspace
from npcnn.layers import Context, Conv2D, Dense, Flatten, LayerState, RandomFlip, RandomTranslation
from npcnn.models import Sequential

SETTINGS = dict(deadline=None, database=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])


def run(layer, x, seed=0, offset=0, training=True, dy=None, need_dx=True):
    """(y, dx) copies of one forward (and backward when dy is given) with a step seed and shard offset."""
    if not layer.built:
        layer.build(x.shape[1:])
    st_ = LayerState(need_dx=need_dx)
    ctx = Context(training, seed=seed, sample_offset=offset, batch_size=len(x))
    y = np.array(layer.forward_op(x, st_, ctx), copy=True)
    dx = None
    if dy is not None:
        dx = layer.backward_op(dy, st_, ctx)
        dx = None if dx is None else np.array(dx, copy=True)
    return y, dx


def binomial_ok(count, n, p, sigmas=5):
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


# ------------------------------------------------------------------------------- the kernel
@st.composite
def remap_cases(draw):
    n, h, w, c = (draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6)),
                  draw(st.integers(1, 3)))
    oh, ow = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    taps_r, taps_c = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**31))
    fill = draw(st.sampled_from([0.0, 1.5, -2.0]))
    rng = np.random.default_rng(seed)
    rows = rng.integers(-1, h, size=(n, oh, taps_r))     # -1: outside, reads fill_value
    cols = rng.integers(-1, w, size=(n, ow, taps_c))
    rw = rng.random((n, oh, taps_r)).astype(dtype)
    cw = rng.random((n, ow, taps_c)).astype(dtype)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    dy = rng.standard_normal((n, oh, ow, c)).astype(dtype)
    return x, rows, rw, cols, cw, fill, dy


@settings(**SETTINGS)
@given(remap_cases())
def test_remap_twins_agree_bit_for_bit(case):
    x, rows, rw, cols, cw, fill, dy = case
    dy_before = dy.copy()
    y0, c0 = augment.remap2d_forward_numpy(x, rows, rw, cols, cw, fill)
    dx0 = augment.remap2d_backward_numpy(dy, c0)
    assert y0.dtype == x.dtype and dx0.dtype == x.dtype and dx0.shape == x.shape
    ws = Workspace()
    for w in (None, ws, ws):
        y1, c1 = augment.remap2d_forward_numba(x, rows, rw, cols, cw, fill, ws=w)
        np.testing.assert_array_equal(y1, y0)
        np.testing.assert_array_equal(augment.remap2d_backward_numba(dy, c1, ws=w), dx0)
        np.testing.assert_array_equal(augment.remap2d_backward_numpy(dy, c1), dx0)  # caches cross backends
    np.testing.assert_array_equal(dy, dy_before)
    assert sorted(ws) == ["remap2d.dx", "remap2d.out"]


@settings(**SETTINGS)
@given(remap_cases())
def test_remap_backward_is_the_adjoint(case):
    x, rows, rw, cols, cw, _, dy = case
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    for be in ("numpy", "numba"):
        fwd, bwd = getattr(augment, f"remap2d_forward_{be}"), getattr(augment, f"remap2d_backward_{be}")
        y, cache = fwd(x, rows, rw, cols, cw, 0.0)  # fill 0: a linear map
        lhs, rhs = np.sum(y * dy), np.sum(x * bwd(dy, cache))
        assert abs(lhs - rhs) <= 1e-12 * max(1.0, np.abs(y * dy).sum())


@pytest.mark.parametrize("mode", ["parallel", "serial"])
def test_prange_and_serial_drivers_agree(monkeypatch, mode):
    from npcnn.kernels import workspace

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7, 6, 3)).astype(np.float32)
    rows, rw = augment.shift_taps(rng.uniform(-3, 3, 5), 7, "reflect", "bilinear", np.float32)
    cols, cw = augment.shift_taps(rng.uniform(-3, 3, 5), 6, "constant", "bilinear", np.float32)
    y0, c0 = augment.remap2d_forward_numpy(x, rows, rw, cols, cw, 0.5)
    dy = rng.standard_normal(y0.shape).astype(np.float32)
    monkeypatch.setattr(workspace, "PARALLEL_MIN_ELEMENTS", 0 if mode == "parallel" else 1 << 62)
    ws = Workspace(parallel=mode == "parallel")
    y1, c1 = augment.remap2d_forward_numba(x, rows, rw, cols, cw, 0.5, ws=ws)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(augment.remap2d_backward_numba(dy, c1, ws=ws),
                                  augment.remap2d_backward_numpy(dy, c0))


# ------------------------------------------------------------------------------- fill modes by hand
A, B, C, D = 1.0, 2.0, 3.0, 4.0
K_ = -9.0  # the constant fill value


def shifted_row(shift, fill_mode, interpolation="nearest", backend="numpy"):
    """The row [a b c d] (an image 1 x 4 x 1) shifted right by ``shift`` cells."""
    x = np.array([A, B, C, D]).reshape(1, 1, 4, 1)
    rows, rw = augment.flip_taps(np.array([False]), 1, np.float64)
    cols, cw = augment.shift_taps(np.array([shift]), 4, fill_mode, interpolation, np.float64)
    y, _ = getattr(augment, f"remap2d_forward_{backend}")(x, rows, rw, cols, cw, K_)
    return y.reshape(4).tolist()


@pytest.mark.parametrize("shift, fill_mode, expected", [
    # right by 2: output j reads j - 2, i.e. indices -2 -1 0 1
    (2, "reflect", [B, A, A, B]),        # (d c b a | a b c d | d c b a): -1 -> a, -2 -> b
    (2, "wrap", [C, D, A, B]),           # (a b c d | a b c d | a b c d)
    (2, "nearest", [A, A, A, B]),        # (a a a a | a b c d | d d d d)
    (2, "constant", [K_, K_, A, B]),     # (k k k k | a b c d | k k k k)
    # left by 3: output j reads j + 3, i.e. 3 4 5 6
    (-3, "reflect", [D, D, C, B]),
    (-3, "wrap", [D, A, B, C]),
    (-3, "nearest", [D, D, D, D]),
    (-3, "constant", [D, K_, K_, K_]),
    # a whole width (factor 1.0): 4 -> reads -4 -3 -2 -1
    (4, "reflect", [D, C, B, A]),
    (4, "wrap", [A, B, C, D]),
    (0, "reflect", [A, B, C, D]),
    (1.4, "constant", [K_, A, B, C]),    # nearest: round(j - 1.4) = j - 1
    (1.6, "constant", [K_, K_, A, B]),   # round(j - 1.6) = j - 2
])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_fill_modes_by_hand(shift, fill_mode, expected, backend):
    assert shifted_row(shift, fill_mode, backend=backend) == expected


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_bilinear_by_hand(backend):
    # right by 0.5: output j = 0.5 x[j - 1] + 0.5 x[j], the neighbours' fill applied one by one
    assert shifted_row(0.5, "constant", "bilinear", backend) == [0.5 * K_ + 0.5 * A, 1.5, 2.5, 3.5]
    assert shifted_row(0.5, "reflect", "bilinear", backend) == [A, 1.5, 2.5, 3.5]
    assert shifted_row(0.5, "wrap", "bilinear", backend) == [0.5 * D + 0.5 * A, 1.5, 2.5, 3.5]
    # left by 0.25: output j = 0.75 x[j] + 0.25 x[j + 1]
    assert shifted_row(-0.25, "nearest", "bilinear", backend) == [1.25, 2.25, 3.25, D]
    assert shifted_row(2, "reflect", "bilinear", backend) == shifted_row(2, "reflect", "nearest", backend)


def keras_reflect(index, size):
    """Keras's index fixer for fill_mode='reflect' (keras/src/backend/*/image.py), written out."""
    def mirror(i, n):
        s = n - 1
        return np.abs((i + s) % (2 * s) - s)
    return (mirror(2 * index + 1, 2 * size + 1) - 1) // 2


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_index_fixers_match_keras(size):
    index = np.arange(-3 * size - 2, 4 * size + 3)
    np.testing.assert_array_equal(augment.fix_index(index, size, "reflect"), keras_reflect(index, size))
    np.testing.assert_array_equal(augment.fix_index(index, size, "wrap"), index % size)
    np.testing.assert_array_equal(augment.fix_index(index, size, "nearest"), np.clip(index, 0, size - 1))
    inside = (index >= 0) & (index < size)
    np.testing.assert_array_equal(augment.fix_index(index, size, "constant"), np.where(inside, index, -1))
    with pytest.raises(ValueError, match="fill_mode"):
        augment.fix_index(index, size, "mirror")


# ------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("mode", ["horizontal", "vertical", "horizontal_and_vertical"])
def test_flip_statistics(backend, mode):
    n = 4000
    x = np.broadcast_to(np.arange(6.0).reshape(1, 2, 3, 1), (n, 2, 3, 1)).copy()
    y, _ = run(RandomFlip(mode, seed=3), x, seed=11)
    h = np.all(y == x[:, :, ::-1], axis=(1, 2, 3)) & ~np.all(y == x, axis=(1, 2, 3))
    v = np.all(y == x[:, ::-1], axis=(1, 2, 3))
    hv = np.all(y == x[:, ::-1, ::-1], axis=(1, 2, 3))
    none = np.all(y == x, axis=(1, 2, 3))
    assert np.all(h | v | hv | none)  # every output is one of the four
    if mode == "horizontal":
        assert not v.any() and not hv.any() and binomial_ok(h.sum(), n, 0.5)
    elif mode == "vertical":
        assert not h.any() and not hv.any() and binomial_ok(v.sum(), n, 0.5)
    else:  # independent: each of the four outcomes a quarter of the time
        for outcome in (h, v, hv, none):
            assert binomial_ok(outcome.sum(), n, 0.25)


@pytest.mark.parametrize("factor, lo, hi", [(0.2, -0.2, 0.2), ((-0.1, 0.3), -0.1, 0.3), ((0.0, 0.5), 0.0, 0.5)])
def test_shift_statistics(factor, lo, hi):
    layer = RandomTranslation(factor, factor)
    n, h, w = 20000, 10, 20
    dh, dw = layer.shifts(Context(True, seed=7), n, h, w)
    for d, size in ((dh, h), (dw, w)):
        assert d.min() >= lo * size and d.max() <= hi * size
        counts, _ = np.histogram(d, bins=10, range=(lo * size, hi * size))
        assert all(binomial_ok(k, n, 0.1) for k in counts), counts  # uniform
    assert abs(np.corrcoef(dh, dw)[0, 1]) < 5 / np.sqrt(n)  # the two draws are independent


def test_translation_output_is_the_shifted_image(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 6, 7, 2))
    layer = RandomTranslation(0.5, (-0.4, 0.4), fill_mode="constant", interpolation="nearest",
                              fill_value=-5.0, seed=1)
    y, _ = run(layer, x, seed=3)
    dh, dw = layer.shifts(Context(True, seed=3), 50, 6, 7)
    for n in range(50):
        sh, sw = int(np.floor(dh[n] + 0.5)), int(np.floor(dw[n] + 0.5))  # rounded shifts (nearest)
        expected = np.full((6, 7, 2), -5.0)
        for i in range(6):
            for j in range(7):
                if 0 <= i - sh < 6 and 0 <= j - sw < 7:
                    expected[i, j] = x[n, i - sh, j - sw]
        np.testing.assert_array_equal(y[n], expected)


# ------------------------------------------------------------------------------- training only, shards, seeds
LAYERS = [
    lambda: RandomFlip("horizontal_and_vertical"),
    lambda: RandomTranslation(0.3, 0.4),
    lambda: RandomTranslation((-0.5, 0.2), 0.3, fill_mode="constant", interpolation="nearest", fill_value=1.0),
    lambda: RandomTranslation(0.4, 0.4, fill_mode="wrap"),
]


@pytest.mark.parametrize("make", LAYERS)
def test_inference_is_the_identity(backend, make):
    x = np.random.default_rng(0).standard_normal((4, 5, 6, 2)).astype(np.float32)
    layer = make()
    layer.build(x.shape[1:])
    state = LayerState()
    assert layer.forward_op(x, state, Context(False, seed=5)) is x
    assert layer.forward(x) is x
    model = Sequential([make(), Flatten(), Dense(3)])
    model.build((None, 5, 6, 2))
    np.testing.assert_array_equal(model.predict(x), Sequential([Flatten(input_shape=(5, 6, 2)), model.layers[-1]])
                                  .predict(x))


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("split", [1, 3, 5])
def test_two_shards_equal_one_batch(backend, make, split):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 5, 6, 2)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    layer = make()
    y, dx = run(layer, x, seed=9, dy=dy)
    assert not np.array_equal(y, x)  # something moved
    y1, dx1 = run(layer, x[:split], seed=9, offset=0, dy=dy[:split])
    y2, dx2 = run(layer, x[split:], seed=9, offset=split, dy=dy[split:])
    np.testing.assert_array_equal(np.concatenate([y1, y2]), y)
    np.testing.assert_array_equal(np.concatenate([dx1, dx2]), dx)


def test_steps_layers_and_seeds_draw_differently():
    x = np.random.default_rng(2).standard_normal((16, 6, 6, 1))
    a, _ = run(RandomTranslation(0.4, 0.4, name="t1"), x, seed=1)
    assert not np.array_equal(run(RandomTranslation(0.4, 0.4, name="t1"), x, seed=2)[0], a)  # another step
    assert not np.array_equal(run(RandomTranslation(0.4, 0.4, name="t2"), x, seed=1)[0], a)  # another layer
    np.testing.assert_array_equal(run(RandomTranslation(0.4, 0.4, name="t1"), x, seed=1)[0], a)  # same: same
    s1 = run(RandomTranslation(0.4, 0.4, seed=5, name="a"), x, seed=1)[0]
    np.testing.assert_array_equal(run(RandomTranslation(0.4, 0.4, seed=5, name="b"), x, seed=1)[0], s1)  # seed wins
    flip = RandomFlip(seed=5)
    trans = RandomTranslation(0.4, 0.4, seed=5)
    assert not np.array_equal(flip.draws(Context(True, seed=1), 8), trans.draws(Context(True, seed=1), 8))


def test_first_layer_computes_no_input_gradient(backend):
    x = np.ones((2, 3, 4, 1))
    _, dx = run(RandomFlip(), x, dy=np.ones_like(x), need_dx=False)
    assert dx is None


def test_backward_needs_a_training_forward():
    layer = RandomFlip()
    layer.forward(np.ones((1, 2, 2, 1)))
    with pytest.raises(RuntimeError, match="needs a preceding forward"):
        layer.backward(np.ones((1, 2, 2, 1)))


@pytest.mark.parametrize("make", LAYERS + [lambda: RandomTranslation(0.3, 0.3, interpolation="nearest"),
                                           lambda: RandomTranslation(0.5, 0.6, fill_mode="nearest")])
def test_gradcheck(backend, make):
    results = gradcheck.check_layer(make(), (5, 6, 2), batch_size=3)
    assert all(r.passed for r in results), results


@pytest.mark.skipif(threads.max_threads() < 2, reason="needs 2 threads")
def test_one_and_two_threads_give_the_same_gradients():
    from npcnn import parallel

    x = np.random.default_rng(0).random((32, 6, 5, 2), dtype=np.float32)
    y = np.arange(32) % 4
    previous_threads, previous_dp = npcnn.get_num_threads(), npcnn.get_data_parallel()
    results = []
    try:
        with npcnn.use_backend("numba"):
            npcnn.set_data_parallel(True)
            for n in (1, 2):
                npcnn.set_num_threads(n)
                assert parallel.shard_count(32) == n
                npcnn.set_random_seed(2)
                model = Sequential([Conv2D(3, 2, input_shape=(6, 5, 2)), RandomFlip(),
                                    RandomTranslation(0.3, 0.3), Flatten(), Dense(4, activation="softmax")])
                model.compile("sgd", "sparse_categorical_crossentropy")
                npcnn.set_random_seed(5)
                loss, _, _ = model._loss_and_grad(x, y)
                results.append((loss, [g.copy() for g in model.grads]))
    finally:
        npcnn.set_num_threads(previous_threads)
        npcnn.set_data_parallel(previous_dp)
    (l1, g1), (l2, g2) = results
    assert l2 == pytest.approx(l1, rel=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max())


def test_a_model_with_augmentation_trains(backend):
    rng = np.random.default_rng(3)
    x = rng.random((32, 8, 8, 1), dtype=np.float32)
    y = (x[:, :, :, 0].mean(axis=(1, 2)) > 0.5).astype(int)  # flip- and shift-invariant labels
    npcnn.set_random_seed(0)
    model = Sequential([RandomFlip("horizontal", input_shape=(8, 8, 1)), RandomTranslation(0.1, 0.1),
                        Conv2D(4, 3, activation="relu"), Flatten(), Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    assert model.plan.needs_rng
    hist = model.fit(x, y, epochs=8, batch_size=8, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    np.testing.assert_array_equal(model.predict(x), model.predict(x))  # inference: no randomness


# ------------------------------------------------------------------------------- arguments
def test_keras_defaults_and_factor_forms():
    flip = RandomFlip()
    assert flip.mode == "horizontal_and_vertical" and flip.seed is None  # Keras's defaults
    t = RandomTranslation(0.2, (-0.1, 0.3))
    assert (t.fill_mode, t.interpolation, t.fill_value) == ("reflect", "bilinear", 0.0)  # Keras's defaults
    assert (t.height_lower, t.height_upper) == (-0.2, 0.2)
    assert (t.width_lower, t.width_upper) == (-0.1, 0.3)
    with pytest.raises(ValueError, match="lower <= upper"):  # Keras 3 refuses a reversed pair (checked: 3.15.1)
        RandomTranslation(0.2, (0.3, -0.1))
    assert (RandomTranslation(-0.3, 0).height_lower, RandomTranslation(-0.3, 0).height_upper) == (-0.3, 0.3)
    assert RandomTranslation(0.1, 0.1).compute_output_shape((5, 6, 3)) == (5, 6, 3)


@pytest.mark.parametrize("make, error, match", [
    (lambda: RandomFlip("diagonal"), ValueError, "mode must be one of"),
    (lambda: RandomFlip(seed=1.5), TypeError, "seed"),
    (lambda: RandomTranslation(1.5, 0.1), ValueError, r"height_factor .*\[-1, 1\]"),
    (lambda: RandomTranslation(0.1, (0.1, 0.2, 0.3)), ValueError, "width_factor"),
    (lambda: RandomTranslation(0.1, "a"), ValueError, "width_factor"),
    (lambda: RandomTranslation(0.1, 0.1, fill_mode="mirror"), ValueError, "fill_mode"),
    (lambda: RandomTranslation(0.1, 0.1, interpolation="bicubic"), ValueError, "interpolation"),
    (lambda: RandomTranslation(0.1, 0.1, fill_value="x"), ValueError, "fill_value"),
    (lambda: RandomFlip().build((5, 5)), ValueError, r"\(H, W, C\)"),
])
def test_argument_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_uniforms_depend_on_the_sample_index_only():
    u = augment.uniforms(123, 0, 10, 3)
    assert u.shape == (10, 3) and (u >= 0).all() and (u < 1).all()
    np.testing.assert_array_equal(augment.uniforms(123, 4, 6, 3), u[4:])
    with pytest.raises(ValueError, match="sample_offset"):
        augment.uniforms(1, -1, 2, 2)


def test_workspace_bytes_are_what_the_kernels_keep():
    layer = RandomTranslation(0.2, 0.2)
    layer.build((5, 6, 2))
    x = np.random.default_rng(0).standard_normal((3, 5, 6, 2)).astype(np.float32)
    with npcnn.use_backend("numba"):
        for need_dx in (True, False):
            state = LayerState(ws=Workspace(), need_dx=need_dx)
            ctx = Context(True, batch_size=3)
            y = layer.forward_op(x, state, ctx)
            layer.backward_op(np.ones_like(y), state, ctx)
            assert {k: v.nbytes for k, v in state.ws.items()} == layer.workspace_bytes((5, 6, 2), 3, need_dx)
