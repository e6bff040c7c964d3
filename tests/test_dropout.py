"""The Dropout layer (npcnn/layers/regularization.py).

* training keeps each element with probability 1 - rate (binomial bounds), scales kept ones by
  1 / (1 - rate), as torch.nn.functional.dropout does; E[y] = x; identity at inference and at rate 0;
* backward is dy * mask * scale with the forward's mask; the gradient check (mask frozen), the
  ``--layer dropout`` command line;
* the mask depends only on (step seed, layer, sample index in the whole batch): shards of a batch get
  the rows of the whole batch's mask; two layers differ; each step differs; ``seed`` fixes a layer;
* in a model: a fresh step seed per training step, deterministic predict, the same gradients with 1
  thread and 2 data-parallel shards;
* Keras's arguments: rate, noise_shape (batch axis first), seed.
"""

from __future__ import annotations

import numpy as np
import pytest

import npcnn
from npcnn import gradcheck, threads
from npcnn.layers import Context, Dense, Dropout, Flatten, LayerState
from npcnn.models import Sequential


def run(layer, x, seed=0, offset=0, batch_size=None, training=True):
    """(y, state) of one forward with a given step seed and shard offset (y copied: it may be a buffer)."""
    if not layer.built:
        layer.build(x.shape[1:])
    st = LayerState()
    y = layer.forward_op(x, st, Context(training, seed=seed, sample_offset=offset,
                                        batch_size=batch_size or len(x)))
    return np.array(y, copy=True), st


def binomial_ok(kept, n, p, sigmas=5):
    return abs(kept - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_keep_rate_and_scale(backend, rate, dtype):
    x = np.ones((64, 10, 10, 3), dtype)
    layer = Dropout(rate, dtype=np.dtype(dtype).name)
    y, _ = run(layer, x, seed=12345)
    assert y.dtype == dtype and y.shape == x.shape
    kept = np.count_nonzero(y)
    assert binomial_ok(kept, x.size, 1 - rate)
    np.testing.assert_array_equal(np.unique(y), [0, dtype(1 / (1 - rate))])


def test_statistics_match_pytorch(backend):
    torch = pytest.importorskip("torch")
    rate = 0.3
    x = np.ones((200, 500), np.float32)
    y, _ = run(Dropout(rate), x, seed=3)
    torch.manual_seed(0)
    ty = torch.nn.functional.dropout(torch.from_numpy(x), p=rate, training=True).numpy()
    for out in (y, ty):
        assert binomial_ok(np.count_nonzero(out), x.size, 1 - rate)
    assert np.unique(ty[ty != 0]).tolist() == pytest.approx(np.unique(y[y != 0]).tolist(), rel=1e-6)
    # both are unbiased: E[y] = x
    rng = np.random.default_rng(0)
    v = rng.standard_normal((1, 50))
    mean = np.mean([run(Dropout(rate, dtype="float64"), v, seed=s)[0] for s in range(4000)], axis=0)
    sd = np.abs(v) * np.sqrt(rate / (1 - rate) / 4000)
    assert np.all(np.abs(mean - v) <= 5 * sd + 1e-12)


def test_identity_at_inference_and_at_rate_zero(backend):
    x = np.random.default_rng(0).standard_normal((5, 4, 3)).astype(np.float32)
    layer = Dropout(0.5)
    y, st = run(layer, x, training=False)
    np.testing.assert_array_equal(y, x)
    assert st.cache is None
    assert layer.forward(x) is x  # standalone, inference
    zero = Dropout(0.0)
    y0 = zero.forward(x, training=True)
    np.testing.assert_array_equal(y0, x)
    dy = np.ones_like(x)
    np.testing.assert_array_equal(zero.backward(dy), dy)
    assert zero.workspace_bytes((4, 3), 5) == {}


@pytest.mark.parametrize("noise_shape", [None, (None, 1, 1, None), (None, 4, 1, 3)])
def test_gradient_is_mask_times_scale(backend, noise_shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4, 5, 3)) + 0.1
    layer = Dropout(0.4, noise_shape=noise_shape, dtype="float64")
    layer.build(x.shape[1:])
    st = LayerState()
    ctx = Context(True, seed=9, batch_size=6)
    y = np.array(layer.forward_op(x, st, ctx), copy=True)
    mask = y != 0
    dy = rng.standard_normal(x.shape)
    dy_before = dy.copy()
    dx = layer.backward_op(dy, st, ctx)
    np.testing.assert_array_equal(dx, np.where(mask, dy / 0.6, 0))
    np.testing.assert_array_equal(dy, dy_before)  # backward never writes into dy
    np.testing.assert_allclose(y, np.where(mask, x / 0.6, 0), rtol=1e-15)
    if noise_shape is not None:  # one decision per noise cell: constant along the shared axes
        for axis, d in enumerate(noise_shape[1:], start=1):
            if d == 1:
                first = np.take(mask, [0], axis=axis)
                assert np.array_equal(mask, np.broadcast_to(first, mask.shape))
    st.need_dx = False
    assert layer.backward_op(dy, st, ctx) is None


def test_backward_needs_a_training_forward():
    layer = Dropout(0.5)
    layer.forward(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="preceding forward"):
        layer.backward(np.ones((2, 3), np.float32))


@pytest.mark.parametrize("noise_shape", [None, (None, 1, 1, None)])
def test_mask_does_not_depend_on_the_shard_split(backend, noise_shape):
    x = np.random.default_rng(2).standard_normal((13, 3, 4, 2)).astype(np.float32) + 5
    layer = Dropout(0.5, noise_shape=noise_shape, name="dropout_7")
    full, _ = run(layer, x, seed=77)
    for cuts in ([0, 6, 13], [0, 1, 5, 13], [0, 7, 8, 9, 13]):
        parts = [run(layer, x[a:b], seed=77, offset=a, batch_size=13)[0] for a, b in zip(cuts[:-1], cuts[1:])]
        np.testing.assert_array_equal(np.concatenate(parts), full)
    with npcnn.use_backend("numpy" if backend == "numba" else "numba"):  # the other backend: the same mask
        np.testing.assert_array_equal(run(layer, x, seed=77)[0], full)


def test_layers_steps_and_seeds_give_different_masks():
    x = np.ones((8, 100), np.float32)
    a, b = Dropout(0.5, name="dropout"), Dropout(0.5, name="dropout_1")
    ya, yb = run(a, x, seed=5)[0], run(b, x, seed=5)[0]
    assert not np.array_equal(ya, yb)  # two layers, one step: different masks
    assert not np.array_equal(ya, run(a, x, seed=6)[0])  # one layer, two steps
    np.testing.assert_array_equal(ya, run(a, x, seed=5)[0])  # reproducible
    np.testing.assert_array_equal(ya, run(Dropout(0.5, name="dropout"), x, seed=5)[0])  # a function of the name
    s1, s2 = Dropout(0.5, seed=42, name="p"), Dropout(0.5, seed=42, name="q")
    np.testing.assert_array_equal(run(s1, x, seed=5)[0], run(s2, x, seed=5)[0])  # the seed, not the name
    assert not np.array_equal(run(s1, x, seed=5)[0], run(Dropout(0.5, seed=43), x, seed=5)[0])
    assert a.layer_seed() != b.layer_seed()


def test_gradcheck(backend):
    npcnn.set_random_seed(0)
    for layer in (Dropout(0.5), Dropout(0.3, noise_shape=(None, 1, 5, None))):
        results = gradcheck.check_layer(layer, (3, 5, 2), batch_size=3)
        assert [r.tensor for r in results] == ["input"]
        assert all(r.passed for r in results), results


@pytest.mark.parametrize("args", [["--layer", "dropout"], ["--layer", "dropout", "--rate", "0.8", "--input-shape", "7"],
                                  ["--layer", "dropout", "--rate", "0"]])
def test_gradcheck_cli(backend, args, capsys):
    assert gradcheck.main(args + ["--backend", backend]) == 0
    assert "Dropout(rate=" in capsys.readouterr().out


def test_gradcheck_cli_rejects_a_bad_rate(capsys):
    with pytest.raises(SystemExit) as e:
        gradcheck.main(["--layer", "dropout", "--rate", "1"])
    assert e.value.code == 2
    assert "rate must be in [0, 1)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ in a model
def dropout_model(rate=0.5):
    npcnn.set_random_seed(0)
    model = Sequential([Flatten(input_shape=(4, 4, 2)), Dense(16, activation="relu"), Dropout(rate),
                        Dense(5, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


def test_model_draws_a_step_seed_and_predict_is_deterministic():
    model = dropout_model()
    assert model.plan.needs_rng
    x = np.random.default_rng(0).random((16, 4, 4, 2), dtype=np.float32)
    npcnn.set_random_seed(1)
    a = model(x, training=True)
    b = model(x, training=True)
    assert not np.array_equal(a, b)  # a new mask each training pass
    npcnn.set_random_seed(1)
    np.testing.assert_array_equal(model(x, training=True), a)  # the seeds come from npcnn's generator
    p = model.predict(x)
    np.testing.assert_array_equal(model.predict(x, batch_size=3), p)
    no_dropout = Sequential([Flatten(input_shape=(4, 4, 2)), Dense(16, activation="relu"),
                             Dense(5, activation="softmax")])
    no_dropout.set_weights(model.get_weights())
    np.testing.assert_allclose(no_dropout.predict(x), p, rtol=1e-6)  # inference is the identity


@pytest.mark.skipif(threads.max_threads() < 2, reason="needs 2 threads")
def test_one_and_two_threads_draw_the_same_masks():
    from npcnn import parallel

    x = np.random.default_rng(0).random((32, 4, 4, 2), dtype=np.float32)
    y = np.arange(32) % 5
    previous_threads, previous_dp = npcnn.get_num_threads(), npcnn.get_data_parallel()
    results = []
    try:
        with npcnn.use_backend("numba"):
            npcnn.set_data_parallel(True)
            for n in (1, 2):
                npcnn.set_num_threads(n)
                assert parallel.shard_count(32) == n
                model = dropout_model(0.5)
                npcnn.set_random_seed(5)
                loss, _, _ = model._loss_and_grad(x, y)
                results.append((loss, [g.copy() for g in model.grads]))
    finally:
        npcnn.set_num_threads(previous_threads)
        npcnn.set_data_parallel(previous_dp)
    (l1, g1), (l2, g2) = results
    assert l2 == pytest.approx(l1, rel=1e-6)
    for a, b in zip(g1, g2):  # another mask would change them by far more than rounding
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max())


# ------------------------------------------------------------------------------------------------ Keras API
@pytest.mark.parametrize("kwargs,error", [
    (dict(rate=1.0), ValueError), (dict(rate=-0.1), ValueError), (dict(rate=1.5), ValueError),
    (dict(rate=float("nan")), ValueError), (dict(rate="0.5"), TypeError), (dict(rate=True), TypeError),
    (dict(rate=None), TypeError), (dict(rate=0.5, seed=1.5), TypeError), (dict(rate=0.5, seed="1"), TypeError),
    (dict(rate=0.5, noise_shape=3), TypeError), (dict(rate=0.5, noise_shape=(None, 0)), ValueError),
    (dict(rate=0.5, noise_shape=(None, 2.0)), ValueError), (dict(rate=0.5, noise_shape=()), ValueError),
    (dict(rate=0.5, bad_argument=1), TypeError),
])
def test_argument_validation(kwargs, error):
    with pytest.raises(error):
        Dropout(**kwargs)


@pytest.mark.parametrize("noise_shape,match", [((None, 1), "one entry per axis"), ((None, 1, 3, 2), "None, 1 or"),
                                               ((1, 4, 4, 2), "batch entry of 1")])
def test_noise_shape_must_fit_the_input(noise_shape, match):
    with pytest.raises(ValueError, match=match):
        Sequential([Dropout(0.5, noise_shape=noise_shape, input_shape=(4, 4, 2))])


def test_valid_noise_shapes_and_defaults():
    layer = Dropout(0.25, noise_shape=[32, 1, None, 2])
    assert layer.noise_shape == (32, 1, None, 2)
    assert layer.compute_output_shape((4, 4, 2)) == (4, 4, 2)
    assert layer._sample_noise_shape((4, 4, 2)) == (1, 4, 2)
    assert Dropout(0.5).needs_rng and Dropout(0.5).count_params() == 0
    assert Dropout(np.float32(0.5)).rate == 0.5 and Dropout(0).rate == 0.0
    assert "rate=0.25" in repr(layer)
