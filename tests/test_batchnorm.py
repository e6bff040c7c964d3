"""The BatchNormalization layer (npcnn/layers/normalization.py) and a model with BN and Dropout.

* forward and backward agree with PyTorch's BatchNorm2d / BatchNorm1d (momentum 0.01, eps 1e-3, training
  mode) on random shapes, float64 to 1e-10 and float32 to 1e-5, both backends;
* the moving mean after several training steps of a model equals torch's running_mean; the moving
  variance follows Keras's rule (the biased batch variance), not torch's running_var (unbiased);
* a training forward declares the new moving statistics in ``state.updates`` (never writes them);
  inference uses the moving statistics (predict equals the formula);
* gradient checks: the layer (after a Conv2D and after a Dense, with and without gamma/beta) and whole
  models containing BN and Dropout; the ``--layer batchnorm`` command line;
* 20 training steps with 1 thread and with 2 data-parallel shards give the same weights (moving
  statistics and Dropout masks included); float64 runs agree to 1e-12;
* Keras's argument validation, the summary's non-trainable count, save/load and checkpoint round trips,
  the summary's memory line buffer by buffer, model.trace's batch statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import held_after_one_step

import npcnn
from npcnn import gradcheck, threads
from npcnn.checkpoint import restore_checkpoint, save_checkpoint
from npcnn.kernels import batchnorm as bn_kernels
from npcnn.layers import (
    Activation,
    BatchNormalization,
    Context,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LayerState,
    MaxPooling2D,
)
from npcnn.models import Sequential

EPS = 1e-3
TOL = {np.float64: 1e-10, np.float32: 1e-5}


def assert_close(actual, expected, tol):
    """Agreement relative to the largest entry of ``expected`` (element-wise: |a - e| <= tol * max|e|)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(initial=0.0), 1e-30)
    err = np.abs(actual - expected).max(initial=0.0) / scale
    assert err <= tol, f"relative error {err:.3g} > {tol:.0e}"


def set_random_affine(layer, rng):
    """Random gamma, beta and moving statistics (the defaults 1, 0 would hide a missing factor)."""
    c = layer.built_input_shape[-1]
    dtype = layer.dtype
    if layer.scale:
        layer.params["gamma"][...] = (1.0 + 0.5 * rng.standard_normal(c)).astype(dtype)
    if layer.center:
        layer.params["beta"][...] = (0.3 * rng.standard_normal(c)).astype(dtype)
    layer.buffers["moving_mean"][...] = rng.standard_normal(c).astype(dtype)
    layer.buffers["moving_variance"][...] = rng.uniform(0.5, 2.0, c).astype(dtype)


def random_shape(rng, spatial):
    n = int(rng.integers(2, 6))
    c = int(rng.integers(1, 6))
    if spatial == 2:
        return (n, int(rng.integers(1, 7)), int(rng.integers(1, 7)), c)
    if spatial == 1:
        return (n, int(rng.integers(2, 8)), c)
    return (int(rng.integers(2, 12)), c)


# ------------------------------------------------------------------------------------------------ PyTorch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("spatial", [2, 1, 0])
@pytest.mark.parametrize("seed", range(4))
def test_forward_backward_agree_with_pytorch(backend, dtype, spatial, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(100 * seed + 10 * spatial + (dtype is np.float32))
    shape = random_shape(rng, spatial)
    c = shape[-1]
    x = (rng.standard_normal(shape) * 2.0 + 1.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    layer = BatchNormalization(momentum=0.99, epsilon=EPS, dtype=np.dtype(dtype).name)
    layer.build(shape[1:])
    set_random_affine(layer, rng)
    y = layer.forward(x, training=True)
    dx = layer.backward(dy)
    assert y.dtype == dtype and dx.dtype == dtype
    assert layer.grads["gamma"].dtype == dtype and layer.grads["beta"].dtype == dtype

    tdtype = torch.float64 if dtype is np.float64 else torch.float32
    bn = (torch.nn.BatchNorm2d if spatial == 2 else torch.nn.BatchNorm1d)(c, eps=EPS, momentum=0.01, dtype=tdtype)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(layer.params["gamma"]))
        bn.bias.copy_(torch.from_numpy(layer.params["beta"]))
    bn.train()
    perm = (0, spatial + 1) + tuple(range(1, spatial + 1))  # NHWC -> NCHW, (N, L, C) -> (N, C, L)
    back = np.argsort(perm)
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(perm))).requires_grad_(True)
    ty = bn(tx)
    ty.backward(torch.from_numpy(np.ascontiguousarray(dy.transpose(perm))))
    tol = TOL[dtype]
    assert_close(y, ty.detach().numpy().transpose(back), tol)
    assert_close(dx, tx.grad.numpy().transpose(back), tol)
    assert_close(layer.grads["gamma"], bn.weight.grad.numpy(), tol)
    assert_close(layer.grads["beta"], bn.bias.grad.numpy(), tol)

    # inference: the moving statistics, as torch's eval mode with the same running statistics
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(layer.buffers["moving_mean"]))
        bn.running_var.copy_(torch.from_numpy(layer.buffers["moving_variance"]))
    bn.eval()
    with torch.no_grad():
        expected = bn(torch.from_numpy(np.ascontiguousarray(x.transpose(perm)))).numpy().transpose(back)
    assert_close(layer.forward(x, training=False), expected, tol)


def bn_first_model(input_shape, classes=4, **bn_kwargs):
    """BatchNormalization first (its input is the data itself), then a softmax classifier."""
    npcnn.set_random_seed(0)
    layers = [BatchNormalization(input_shape=input_shape, **bn_kwargs)]
    if len(input_shape) > 1:
        layers.append(Flatten())
    layers.append(Dense(classes, activation="softmax"))
    model = Sequential(layers)
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("input_shape", [(5, 4, 3), (6,)])
def test_moving_statistics_after_training_steps(backend, input_shape):
    """moving_mean = torch's running_mean (momentum 0.01); moving_variance follows Keras (biased variance)."""
    torch = pytest.importorskip("torch")
    model = bn_first_model(input_shape)
    bn_layer = model.layers[0]
    rng = np.random.default_rng(1)
    c = input_shape[-1]
    spatial = len(input_shape) - 1
    bn = (torch.nn.BatchNorm2d if spatial == 2 else torch.nn.BatchNorm1d)(c, eps=EPS, momentum=0.01,
                                                                         dtype=torch.float64)
    bn.train()
    mean, var = np.zeros(c), np.ones(c)  # the formula, in float64
    perm = (0, spatial + 1) + tuple(range(1, spatial + 1))
    for step in range(6):
        x = (rng.standard_normal((8,) + input_shape) * (1 + step) + step).astype(np.float32)
        model.train_on_batch(x, rng.integers(0, 4, 8))
        x64 = x.astype(np.float64).reshape(-1, c)
        mean = 0.99 * mean + 0.01 * x64.mean(axis=0)
        var = 0.99 * var + 0.01 * x64.var(axis=0)  # biased: divided by M, not M - 1
        with torch.no_grad():
            bn(torch.from_numpy(np.ascontiguousarray(x.astype(np.float64).transpose(perm))))
    np.testing.assert_allclose(bn_layer.buffers["moving_mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn_layer.buffers["moving_mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn_layer.buffers["moving_variance"], var, rtol=1e-5)
    # torch's running_var is updated with the unbiased variance: a different number
    assert np.abs(bn.running_var.numpy() - var).max() > 1e-3 * np.abs(var).max()
    assert bn_layer.buffers["moving_mean"].dtype == np.float32


def test_forward_declares_updates_and_never_writes_buffers():
    layer = BatchNormalization(momentum=0.9)
    layer.build((4, 3))
    before = {k: v.copy() for k, v in layer.buffers.items()}
    x = np.random.default_rng(0).standard_normal((5, 4, 3)).astype(np.float32) + 2
    st, ctx = LayerState(), Context(True, batch_size=5)
    y = layer.forward_op(x, st, ctx)
    for k, v in layer.buffers.items():
        np.testing.assert_array_equal(v, before[k])
    x64 = x.astype(np.float64).reshape(-1, 3)
    np.testing.assert_allclose(st.updates["moving_mean"], 0.1 * x64.mean(0), rtol=1e-6)
    np.testing.assert_allclose(st.updates["moving_variance"], 0.9 + 0.1 * x64.var(0), rtol=1e-6)
    assert st.updates["moving_mean"].dtype == np.float32
    np.testing.assert_allclose(st.info["mean"], x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.info["variance"], x64.var(0), rtol=1e-12)
    assert y.dtype == np.float32
    # inference: no cache, no updates
    st2 = LayerState()
    layer.forward_op(x, st2, Context(False))
    assert st2.cache is None and st2.updates == {}
    with pytest.raises(RuntimeError, match="preceding forward"):
        layer.backward_op(x, st2, Context(False))


def test_batch_size_in_the_context_gives_the_whole_batch_count():
    """A shard's statistics count the rows of the whole batch (ctx.batch_size), reduced over shards."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 3, 2, 4)) * 3 + 1
    dy = rng.standard_normal(x.shape)
    layer = BatchNormalization(dtype="float64")
    layer.build(x.shape[1:])
    set_random_affine(layer, rng)
    full = LayerState()
    y_full = layer.forward_op(x, full, Context(True, batch_size=6))
    dx_full = layer.backward_op(dy, full, Context(True, batch_size=6))
    # two shards run one after the other: a reduce that returns the sum of both shards' arrays
    import threading

    from npcnn.parallel import ShardReducer

    reducer = ShardReducer(2)
    bounds = [(0, 2), (2, 6)]
    out = [None, None]

    def shard(i):
        a, b = bounds[i]
        ctx = Context(True, sample_offset=a, batch_size=6, reduce=reducer.for_shard(i))
        st = LayerState()
        y = layer.forward_op(x[a:b], st, ctx)
        out[i] = (y, layer.backward_op(dy[a:b], st, ctx), st.grads)

    ts = [threading.Thread(target=shard, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert_close(np.concatenate([o[0] for o in out]), y_full, 1e-12)
    assert_close(np.concatenate([o[1] for o in out]), dx_full, 1e-12)
    for k in ("gamma", "beta"):  # local sums: the shards' gradients add up to the whole batch's
        assert_close(out[0][2][k] + out[1][2][k], full.grads[k], 1e-12)


# ------------------------------------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("input_shape", [(4, 3, 3), (5,), (3, 4)])
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False), (False, False)])
def test_gradcheck_layer(backend, input_shape, center, scale):
    npcnn.set_random_seed(0)
    layer = BatchNormalization(center=center, scale=scale, gamma_initializer=lambda s, d: np.linspace(0.5, 1.5, s[0]),
                               beta_initializer=lambda s, d: np.linspace(-0.2, 0.3, s[0]))
    results = gradcheck.check_layer(layer, input_shape, batch_size=3)
    assert [r.tensor for r in results] == ["input"] + (["gamma"] if scale else []) + (["beta"] if center else [])
    for r in results:
        assert r.passed, r


def test_gradcheck_cli(backend, capsys):
    assert gradcheck.main(["--layer", "batchnorm", "--backend", backend]) == 0
    out = capsys.readouterr().out
    assert "BatchNormalization" in out and "gamma" in out and "beta" in out
    assert gradcheck.main(["--layer", "batchnorm", "--input-shape", "6", "--batch-size", "4",
                           "--backend", backend]) == 0


def bn_models(kind, bias):
    """Small models with BN and Dropout; ``bias``: the layers before BN have a bias (whose gradient is 0)."""
    npcnn.set_random_seed(4)
    if kind == "conv":
        model = Sequential([Conv2D(3, 3, padding="same", use_bias=bias, input_shape=(6, 5, 2)), BatchNormalization(),
                            Activation("relu"), MaxPooling2D(), Flatten(), Dropout(0.3),
                            Dense(4, activation="softmax")])
        x = np.random.default_rng(0).standard_normal((4, 6, 5, 2))
    else:
        model = Sequential([Dense(6, use_bias=bias, input_shape=(5,)), BatchNormalization(), Activation("tanh"),
                            Dropout(0.4), Dense(5, use_bias=bias), BatchNormalization(center=False),
                            Dense(3, activation="softmax")])
        x = np.random.default_rng(0).standard_normal((5, 5))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model, x, np.arange(len(x)) % 3


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_gradcheck_whole_model_with_bn_and_dropout(backend, kind):
    model, x, y = bn_models(kind, bias=False)
    results = gradcheck.check_model(model, x, y, max_checks=None)
    assert {r.layer for r in results} >= {"batch_normalization", "dense"}
    for r in results:
        assert r.passed, r


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_a_bias_before_bn_gets_a_zero_gradient(backend, kind):
    """BN subtracts the batch mean, so a per-channel bias before it changes nothing: its gradient is 0
    (up to rounding; a relative gradient check of a zero gradient compares rounding noise, so it is
    checked here absolutely). Keras's docs advise use_bias=False before BatchNormalization."""
    model, x, y = bn_models(kind, bias=True)
    x = np.asarray(x, dtype=np.float32)
    model._loss_and_grad(x, y)
    bias_grads = [layer.grads["bias"] for layer in model.layers[:5] if "bias" in layer.params]
    assert bias_grads
    others = max(np.abs(g).max() for layer in model.layers for g in layer.grads.values())
    for g in bias_grads:
        assert np.abs(g).max() <= 1e-5 * others


# ------------------------------------------------------------------------------------------------ threads
def train_20_steps(threads_n, dtype="float32", use_bias=False, optimizer="adam"):
    """The small model of the issue, 20 steps on 32-sample batches; weights after each step."""
    previous = npcnn.get_num_threads()
    npcnn.set_num_threads(threads_n)
    try:
        npcnn.set_random_seed(1)
        model = Sequential([
            Conv2D(4, 3, padding="same", use_bias=use_bias, input_shape=(8, 8, 3), dtype=dtype),
            BatchNormalization(dtype=dtype), Activation("relu"), MaxPooling2D(), Flatten(), Dropout(0.3),
            Dense(10, activation="softmax", dtype=dtype)])
        model.compile(optimizer, "sparse_categorical_crossentropy")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 8, 8, 3)).astype(np.float32)
        y = rng.integers(0, 10, 64)
        npcnn.set_random_seed(7)  # the step seeds (Dropout masks)
        weights = []
        for step in range(20):
            b = slice(32 * (step % 2), 32 * (step % 2) + 32)
            model.train_on_batch(x[b], y[b])
            weights.append(model.get_weights())
        return weights
    finally:
        npcnn.set_num_threads(previous)


def max_diff(a, b):
    return max(float(np.abs(p.astype(np.float64) - q).max()) for p, q in zip(a, b))


needs_two = pytest.mark.skipif(threads.max_threads() < 2, reason="needs 2 threads")


@pytest.fixture
def numba_data_parallel():
    previous, threads_before = npcnn.set_data_parallel(True), npcnn.get_num_threads()
    with npcnn.use_backend("numba"):
        yield
    npcnn.set_data_parallel(previous)
    npcnn.set_num_threads(threads_before)


@needs_two
@pytest.mark.parametrize("use_bias,optimizer", [(False, "adam"), (True, "sgd")])
def test_one_and_two_threads_train_the_same_weights(numba_data_parallel, use_bias, optimizer):
    from npcnn import parallel

    npcnn.set_num_threads(2)
    assert parallel.shard_count(32) == 2  # the 2-thread run really is split in two shards
    one = train_20_steps(1, use_bias=use_bias, optimizer=optimizer)
    two = train_20_steps(2, use_bias=use_bias, optimizer=optimizer)
    assert len(one[-1]) == 8 - (not use_bias)  # moving statistics included
    for step in (0, 9, 19):
        assert max_diff(one[step], two[step]) <= 1e-5, step
    # float summation order, not chaos: the difference stays at float32 rounding, it does not grow
    assert max_diff(one[19], two[19]) <= 1e-6


@needs_two
def test_one_and_two_threads_float64_agree_to_rounding(numba_data_parallel):
    one = train_20_steps(1, dtype="float64")
    two = train_20_steps(2, dtype="float64")
    assert max_diff(one[19], two[19]) <= 1e-12


# ------------------------------------------------------------------------------------------------ Keras API
@pytest.mark.parametrize("kwargs,error", [
    (dict(axis=-2), ValueError), (dict(axis=-4), ValueError), (dict(axis=0), ValueError),
    (dict(axis="channels"), TypeError), (dict(axis=[1, 2]), TypeError), (dict(axis=1.0), TypeError),
    (dict(momentum=-0.1), ValueError), (dict(momentum=1.5), ValueError), (dict(momentum="0.9"), TypeError),
    (dict(momentum=None), TypeError), (dict(epsilon=0), ValueError), (dict(epsilon=-1e-3), ValueError),
    (dict(epsilon=float("nan")), ValueError), (dict(epsilon=True), TypeError),
    (dict(center="yes"), TypeError), (dict(scale=1), TypeError),
    (dict(gamma_initializer="onez"), ValueError), (dict(beta_initializer=3), TypeError),
    (dict(moving_mean_initializer="nope"), ValueError), (dict(moving_variance_initializer="nope"), ValueError),
    (dict(name=5), TypeError), (dict(bad_argument=1), TypeError),
])
def test_argument_validation(kwargs, error):
    with pytest.raises(error):
        BatchNormalization(**kwargs)


def test_axis_must_be_the_channel_axis():
    with pytest.raises(ValueError, match="only the channel axis"):
        BatchNormalization(axis=-2)
    with pytest.raises(ValueError, match="only the last axis"):
        Sequential([Conv2D(4, 3, input_shape=(8, 8, 3)), BatchNormalization(axis=1)])  # Keras's channels-first axis
    assert Sequential([Dense(4, input_shape=(3,)), BatchNormalization(axis=1)]).output_shape == (4,)  # the last
    model = Sequential([Conv2D(4, 3, input_shape=(8, 8, 3)), BatchNormalization(axis=3)])  # the last axis: fine
    assert model.output_shape == (6, 6, 4)
    with pytest.raises(ValueError, match="only the last axis"):
        Sequential([Conv2D(4, 3, input_shape=(8, 8, 3)), BatchNormalization(axis=2)])
    assert Sequential([Dense(4, input_shape=(3,)), BatchNormalization(axis=[1])]).output_shape == (4,)
    assert BatchNormalization(momentum=0, epsilon=1e-5).momentum == 0.0


def test_weights_in_keras_order_and_summary_counts():
    npcnn.set_random_seed(0)
    model = Sequential([Conv2D(32, 3, input_shape=(8, 8, 3)), BatchNormalization()])
    bn = model.layers[1]
    assert [(k, t) for k, _, t in bn.weight_items()] == [("gamma", True), ("beta", True), ("moving_mean", False),
                                                         ("moving_variance", False)]
    np.testing.assert_array_equal(bn.get_weights()[0], 1)
    np.testing.assert_array_equal(bn.get_weights()[1], 0)
    np.testing.assert_array_equal(bn.get_weights()[2], 0)
    np.testing.assert_array_equal(bn.get_weights()[3], 1)
    assert bn.count_params() == 128 and bn.count_trainable() == 64
    assert [a.shape for a in model.non_trainable_weights] == [(32,), (32,)]
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "batch_normalization (BatchNormalization)" in text
    assert "Total params: 1,024" in text  # 896 + 128
    assert "Trainable params: 960" in text
    assert "Non-trainable params: 64 (256.00 B)" in text
    small = BatchNormalization(center=False, scale=False)
    small.build((5,))
    assert small.params == {} and list(small.buffers) == ["moving_mean", "moving_variance"]
    assert small.count_trainable() == 0 and small.count_params() == 10


def trained_model(steps=3):
    npcnn.set_random_seed(3)
    model = Sequential([Conv2D(4, 3, padding="same", input_shape=(6, 6, 2)), BatchNormalization(momentum=0.5),
                        Activation("relu"), Flatten(), Dropout(0.2), Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 6, 6, 2)).astype(np.float32) * 2 + 1
    y = rng.integers(0, 3, 16)
    for _ in range(steps):
        model.train_on_batch(x, y)
    return model, x, y


def test_save_and_load_weights_round_trip_the_moving_statistics(tmp_path):
    model, x, _ = trained_model()
    bn = model.layers[1]
    assert not np.allclose(bn.buffers["moving_mean"], 0)  # training moved them
    model.save_weights(tmp_path / "w.npz")
    other, _, _ = trained_model(steps=0)
    other.load_weights(tmp_path / "w.npz")
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(other.layers[1].buffers["moving_variance"], bn.buffers["moving_variance"])
    np.testing.assert_array_equal(other.predict(x), model.predict(x))


def test_checkpoint_round_trips_the_moving_statistics(tmp_path):
    model, x, _ = trained_model()
    save_checkpoint(tmp_path / "ckpt.npz", model, epoch=1)
    other, _, _ = trained_model(steps=0)
    restore_checkpoint(tmp_path / "ckpt.npz", other)
    for key in ("moving_mean", "moving_variance", "gamma", "beta"):
        arr = other.layers[1].buffers.get(key, other.layers[1].params.get(key))
        ref = model.layers[1].buffers.get(key, model.layers[1].params.get(key))
        np.testing.assert_array_equal(arr, ref)
    np.testing.assert_array_equal(other.predict(x), model.predict(x))


def test_inference_after_training_uses_the_moving_statistics():
    model, x, _ = trained_model(steps=5)
    conv, bn, _, _, _, dense = model.layers
    x64 = x.astype(np.float64)
    z = conv.forward(x, training=False).astype(np.float64)  # the conv's output
    g, b, mm, mv = (a.astype(np.float64) for a in bn.get_weights())
    h = np.maximum(g * (z - mm) / np.sqrt(mv + bn.epsilon) + b, 0).reshape(len(x64), -1)  # BN, ReLU, Flatten
    logits = h @ dense.params["kernel"].astype(np.float64) + dense.params["bias"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(x, batch_size=16), p, atol=2e-6)
    np.testing.assert_allclose(model.predict(x, batch_size=5), p, atol=2e-6)  # batch-independent
    # batch statistics would give another answer: the moving ones really are used
    zr = z.reshape(-1, z.shape[-1])
    hb = np.maximum(g * (z - zr.mean(0)) / np.sqrt(zr.var(0) + bn.epsilon) + b, 0)
    assert np.abs(hb - np.maximum(g * (z - mm) / np.sqrt(mv + bn.epsilon) + b, 0)).max() > 1e-3


def test_trace_shows_the_batch_statistics():
    model, x, y = trained_model(steps=1)
    records = model.trace(x, y)
    rec = records[1]
    assert rec.type == "BatchNormalization"
    z = records[0].output.astype(np.float64).reshape(-1, 4)
    np.testing.assert_allclose(rec.info["mean"], z.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rec.info["variance"], z.var(0), rtol=1e-5)
    assert set(rec.grads) == {"gamma", "beta"}
    assert records[0].info == {}


@pytest.mark.parametrize("fuse", [True, False])
def test_summary_memory_line_matches_the_buffers_a_step_keeps(fuse, monkeypatch):
    """With BN and Dropout (BN first too: no input gradient), summary() counts the buffers held after a step."""
    from npcnn import plan as plan_mod

    monkeypatch.setattr(plan_mod, "FUSE", fuse)
    npcnn.set_random_seed(0)
    model = Sequential([
        BatchNormalization(input_shape=(10, 10, 3)),
        Conv2D(4, 3, activation="relu"), MaxPooling2D(), Conv2D(5, 3, padding="same"), BatchNormalization(),
        Activation("relu"), Flatten(), Dropout(0.5), Dense(8), BatchNormalization(center=False, scale=False),
        Dropout(0.2, noise_shape=(None, 1)), Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    held, states = held_after_one_step(model, np.random.default_rng(0).random((6, 10, 10, 3), dtype=np.float32))
    assert any(st.inner for st in states) == fuse  # Conv2D + BN + ReLU ran as one block
    assert model.plan.workspace_bytes(model.input_shape, 6) == held  # buffer by buffer
    assert any(name.startswith("batchnorm_") for _, name in held)
    assert any(name == "dropout_forward.index" for _, name in held)
    cols = sum(n for (_, name), n in held.items() if name == "im2col.cols")
    assert model._workspace_bytes(6) == (cols, sum(held.values()) - cols)


def test_bn_breaks_no_fusion_and_runs_after_a_fused_block():
    npcnn.set_random_seed(0)
    model = Sequential([Conv2D(4, 3, activation="relu", input_shape=(9, 9, 2)), MaxPooling2D(),
                        BatchNormalization(), Flatten(), Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    assert "ConvReLUMaxPool" in repr(model.plan)
    x = np.random.default_rng(0).random((8, 9, 9, 2), dtype=np.float32)
    loss0 = model.evaluate(x, np.arange(8) % 3, verbose=0)
    for _ in range(30):
        model.train_on_batch(x, np.arange(8) % 3)
    assert model.evaluate(x, np.arange(8) % 3, verbose=0) < loss0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("impl", ["numpy", "numba"])
def test_fused_relu_is_batchnorm_then_relu_bit_for_bit(dtype, impl):
    """batchnorm_forward(relu=True) and the backward kernels on its cache give the bits of the BN kernels
    followed by the ReLU kernels (forward), and of the BN backward on the ReLU's masked gradient."""
    from npcnn.kernels import activations
    from npcnn.kernels.workspace import Workspace

    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 5, 4, 3)).astype(dtype)
    x[0, 0, 0] = 0.0  # values that normalise to (about) zero are covered by the random ones
    gamma, beta = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    mean, var = x.reshape(-1, 3).mean(0).astype(np.float64), x.reshape(-1, 3).var(0).astype(np.float64)
    dy = rng.standard_normal(x.shape).astype(dtype)
    fwd = getattr(bn_kernels, f"batchnorm_forward_{impl}")
    sums = getattr(bn_kernels, f"batchnorm_backward_sums_{impl}")
    bwd = getattr(bn_kernels, f"batchnorm_backward_{impl}")
    relu_f = getattr(activations, f"relu_forward_{impl}")
    relu_b = getattr(activations, f"relu_backward_{impl}")
    y_sep, c_sep = fwd(x, mean, var, gamma, beta, 1e-3, ws=Workspace())
    r, r_cache = relu_f(y_sep, ws=Workspace())
    dz = relu_b(dy, r_cache, ws=Workspace())
    s_sep = sums(dz, c_sep, ws=Workspace())
    dx_sep = bwd(dz, c_sep, *s_sep, x.size // 3, ws=Workspace())
    y, c = fwd(x, mean, var, gamma, beta, 1e-3, ws=Workspace(), relu=True)
    assert c.y is not None and (c_sep.y is None)
    np.testing.assert_array_equal(y, r)
    s_fused = sums(dy, c, ws=Workspace())
    for a, b in zip(s_fused, s_sep):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(bwd(dy, c, *s_fused, x.size // 3, ws=Workspace()), dx_sep)
    assert (y == 0).any() and (y > 0).any()  # the mask had work to do
