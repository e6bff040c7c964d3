"""npcnn.introspect: model.trace records and the GradientNormLogger fit callback."""

import contextlib
import copy
import io

import numpy as np
import pytest
from conftest import seed_model

import npcnn
from npcnn import callbacks as cbks
from npcnn.introspect import GradientNormLogger, format_trace, gradient_norms, load_history, save_history, trace
from npcnn.layers import Activation, Conv2D, Dense, Flatten, MaxPooling2D
from npcnn.losses import SparseCategoricalCrossentropy
from npcnn.models import Sequential
from npcnn.utils import set_random_seed


def small_model():
    set_random_seed(1)
    return seed_model(input_shape=(18, 18, 3), filters=(3, 4, 4), units=6, classes=5)


@pytest.fixture
def data(rng):
    x = rng.standard_normal((6, 18, 18, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 1])
    return x, y


def test_records_shapes_and_chain(data):
    model = small_model()
    x, y = data
    recs = model.trace(x, y)
    assert [r.name for r in recs] == [layer.name for layer in model.layers]
    assert [r.type for r in recs][:2] == ["Conv2D", "MaxPooling2D"]
    assert recs[0].input_shape == x.shape
    for prev, rec, layer in zip(recs, recs[1:], model.layers[1:]):
        assert rec.input_shape == prev.output_shape
        assert rec.output_shape == (len(x),) + tuple(layer.output_shape)
        np.testing.assert_array_equal(rec.grad_input.shape, rec.input_shape)
        np.testing.assert_array_equal(prev.grad_output, rec.grad_input)  # the chain links up
    assert recs[0].grad_input is not None and recs[0].grad_input.shape == x.shape


def test_param_grads_equal_the_training_step(data):
    model = small_model()
    x, y = data
    recs = trace(model, x, y)
    ref = copy.deepcopy(model)
    ref._loss_and_grad(x, y)
    for rec, layer in zip(recs, ref.layers):
        assert set(rec.grads) == set(layer.params)
        for k, g in rec.grads.items():
            np.testing.assert_allclose(g, layer.grads[k], rtol=1e-6, atol=1e-7)
            assert rec.grad_norms[k] == pytest.approx(np.linalg.norm(g.astype(np.float64)))
            assert rec.weight_norms[k] == pytest.approx(np.linalg.norm(layer.params[k].astype(np.float64)))


def test_input_gradient_matches_a_directional_derivative(rng):
    """The first layer's grad_input (the model does not need it in training) is d loss / d x."""
    set_random_seed(2)
    model = Sequential([Conv2D(3, (3, 2), activation="tanh", input_shape=(5, 6, 2)), Flatten(),
                        Dense(4, activation="softmax")])  # smooth: no kinks for the difference to cross
    model.compile("adam", "sparse_categorical_crossentropy")
    x = rng.standard_normal((3, 5, 6, 2)).astype(np.float32)
    y = np.array([0, 3, 1])
    g = trace(model, x, y)[0].grad_input.astype(np.float64)
    v = rng.standard_normal(x.shape)
    h = 1e-2

    def loss(xx):
        return model.evaluate(xx.astype(np.float32), y, batch_size=len(x), verbose=0)

    numeric = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
    assert numeric == pytest.approx(float(np.sum(g * v)), rel=1e-2)


def test_relu_and_fused_softmax_records(data):
    model = small_model()
    x, y = data
    recs = trace(model, x, y)
    conv = recs[0]
    np.testing.assert_array_equal(conv.output, np.maximum(conv.pre_activation, 0))
    np.testing.assert_allclose(conv.grad_pre_activation, conv.grad_output * (conv.pre_activation > 0))
    assert 0 <= conv.zero_fraction <= 1
    last = recs[-1]
    np.testing.assert_allclose(last.output.sum(axis=1), 1, rtol=1e-5)
    assert last.grad_output is None  # softmax fused with the loss
    onehot = np.eye(5)[y]
    np.testing.assert_allclose(last.grad_pre_activation, (last.output - onehot) / len(x), atol=1e-7)
    assert last.grad_output_norm == pytest.approx(np.linalg.norm(last.grad_pre_activation))
    assert recs[2].pre_activation is not None and recs[1].pre_activation is None


def test_forward_only_without_labels(data):
    model = small_model()
    x, _ = data
    recs = trace(model, x)
    np.testing.assert_allclose(recs[-1].output, model.predict(x), rtol=1e-6)
    assert all(r.grad_input is None and r.grad_output is None and not r.grads for r in recs)
    assert recs[0].weight_norms["kernel"] > 0


def test_trace_changes_nothing(data):
    model = small_model()
    x, y = data
    model.fit(x, y, epochs=1, batch_size=3, verbose=0)  # optimizer state and caches exist
    weights = model.get_weights()
    opt_state = model.optimizer.get_state(model.params)
    state = [(layer, dict(vars(layer))) for layer in model.layers]
    grads = [{k: g.copy() for k, g in layer.grads.items()} for layer in model.layers]
    pool = [list(states) for states in model._free_states]  # the model's per-call states and their buffers
    buffers = {(i, j, key): np.array(buf, copy=True) for i, states in enumerate(pool)
               for j, st in enumerate(states) for key, buf in (st.ws or {}).items()}
    rng_state = npcnn.utils.get_rng_state()
    model.trace(x[::-1].copy(), y[::-1].copy())
    assert [list(states) for states in model._free_states] == pool
    for (i, j, key), before in buffers.items():
        np.testing.assert_array_equal(pool[i][j].ws[key], before)
    assert npcnn.utils.get_rng_state() == rng_state
    for w0, w1 in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(w0, w1)
    new_state = model.optimizer.get_state(model.params)
    assert opt_state.keys() == new_state.keys()
    for k in opt_state:
        np.testing.assert_array_equal(opt_state[k], new_state[k])
    for (layer, before), g0 in zip(state, grads):
        assert vars(layer).keys() == before.keys()
        assert all(vars(layer)[k] is v for k, v in before.items())
        for k, g in g0.items():
            np.testing.assert_array_equal(layer.grads[k], g)
    assert all(states[0].need_dx is False for states in model._free_states)


def test_softmax_layer_tail_and_from_logits(rng):
    x = rng.standard_normal((3, 3, 3, 1)).astype(np.float32)
    y = np.array([0, 3, 2])
    model = Sequential([Flatten(input_shape=(3, 3, 1)), Dense(4), Activation("softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    recs = trace(model, x, y)
    p = recs[-1].output
    np.testing.assert_allclose(recs[-1].grad_input, (p - np.eye(4)[y]) / 3, atol=1e-7)
    assert recs[-1].grad_output is None
    np.testing.assert_array_equal(recs[1].grad_output, recs[-1].grad_input)

    model = Sequential([Conv2D(2, (2, 2), input_shape=(3, 3, 1)), Flatten(), Dense(4)])
    model.compile("sgd", SparseCategoricalCrossentropy(from_logits=True))
    recs = trace(model, x, y)
    from npcnn.kernels import softmax

    np.testing.assert_allclose(recs[-1].grad_output, (softmax(recs[-1].output) - np.eye(4)[y]) / 3, atol=1e-7)


def test_trace_errors(data):
    x, y = data
    model = seed_model(input_shape=(18, 18, 3), filters=(3, 4, 4), units=6, classes=5, compile=False)
    with pytest.raises(RuntimeError, match="compiled"):
        trace(model, x, y)
    with pytest.raises(ValueError, match="labels"):
        small_model().trace(x, y + 10)
    assert len(trace(model, x)) == len(model.layers)  # forward only works uncompiled


def test_format_trace(data):
    model = small_model()
    text = format_trace(model.trace(*data))
    for layer in model.layers:
        assert layer.name in text
    assert "|d in|" in text and "kernel" in text
    assert "conv2d" in repr(model.trace(*data)[0])


def fit_with_logger(model, x, y, logger, epochs=2, verbose=0, **kw):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history = model.fit(x, y, epochs=epochs, batch_size=len(x), shuffle=False, verbose=verbose,
                            callbacks=[logger], **kw)
    return history, out.getvalue()


def test_gradient_norm_logger_lands_in_history(data):
    model = small_model()
    x, y = data
    expected = {f"grad_norm/{r.name}/{k}": v for r in trace(model, x, y) for k, v in r.grad_norms.items()}
    history, printed = fit_with_logger(model, x, y, GradientNormLogger(), verbose=2)
    h = history.history
    names = [f"{layer.name}/{k}" for layer in model.layers for k in layer.params]
    for name in names:
        assert len(h[f"grad_norm/{name}"]) == 2 and len(h[f"weight_norm/{name}"]) == 2
        assert all(np.isfinite(h[f"grad_norm/{name}"]))
    # one batch per epoch: epoch 0's gradient is the one at the initial weights
    for k, v in expected.items():
        assert h[k][0] == pytest.approx(v, rel=1e-5)
    for layer in model.layers:
        for k, p in layer.params.items():
            assert h[f"weight_norm/{layer.name}/{k}"][-1] == pytest.approx(np.linalg.norm(p.astype(np.float64)))
    assert "loss:" in printed and "grad_norm" not in printed  # the progress line stays readable
    norms = gradient_norms(history)
    assert set(norms) == {tuple(n.split("/")) for n in names}


def test_gradient_norm_logger_averages_over_batches(data):
    model = small_model()
    x, y = data
    logger = GradientNormLogger(weights=False)
    seen = []

    class Spy(cbks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(np.linalg.norm(self.model.layers[-1].grads["kernel"].astype(np.float64)))

    history = model.fit(x, y, epochs=1, batch_size=2, shuffle=False, verbose=0, callbacks=[Spy(), logger])
    assert len(seen) == 3
    assert history.history["grad_norm/dense_1/kernel"][0] == pytest.approx(np.mean(seen))
    assert not any(k.startswith("weight_norm/") for k in history.history)


def test_gradient_norm_logger_probe(data):
    model = small_model()
    x, y = data
    history, _ = fit_with_logger(model, x, y, GradientNormLogger(probe=(x[:2], y[:2])), epochs=1)
    expected = {f"grad_norm/{r.name}/{k}": v for r in trace(model, x[:2], y[:2]) for k, v in r.grad_norms.items()}
    for k, v in expected.items():
        assert history.history[k] == [pytest.approx(v)]
    with pytest.raises(ValueError, match="probe"):
        GradientNormLogger(probe=x)


def test_logger_works_with_history_in_either_order(data):
    model = small_model()
    x, y = data
    for order in ("history-first", "history-last"):
        history, logger = cbks.History(), GradientNormLogger()
        model.history = history
        cb = cbks.CallbackList([history, logger] if order == "history-first" else [logger, history], model)
        cb.on_train_begin()
        for epoch in range(2):
            cb.on_epoch_begin(epoch)
            model._train_step(x, y)
            logs = {"loss": 1.0}
            cb.on_train_batch_end(0, logs)
            cb.on_epoch_end(epoch, logs)
            assert "grad_norm/conv2d/kernel" in logs
        assert len(history.history["grad_norm/conv2d/kernel"]) == 2, order
        assert len(history.history["loss"]) == 2


def test_reexported_from_callbacks():
    assert cbks.GradientNormLogger is GradientNormLogger
    from npcnn.callbacks import GradientNormLogger as G

    assert G is GradientNormLogger
    with pytest.raises(AttributeError):
        cbks.NoSuchCallback  # noqa: B018


def test_format_logs_skips_per_layer_keys():
    assert cbks.format_logs({"loss": 0.5, "grad_norm/conv2d/kernel": 1.0}) == " - loss: 0.5000"


def test_history_json_roundtrip(tmp_path, data):
    model = small_model()
    x, y = data
    history, _ = fit_with_logger(model, x, y, GradientNormLogger())
    path = save_history(history, tmp_path / "h.json")
    loaded = load_history(path)
    assert loaded.keys() == history.history.keys()
    for k in loaded:
        np.testing.assert_allclose(loaded[k], history.history[k])
    (tmp_path / "plain.json").write_text('{"loss": [1.0, 0.5]}')
    assert load_history(tmp_path / "plain.json") == {"loss": [1.0, 0.5]}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="history"):
        load_history(tmp_path / "bad.json")


def test_maxpool_record_routes_gradient(rng):
    model = Sequential([MaxPooling2D((2, 2), input_shape=(4, 4, 1)), Flatten(), Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = rng.standard_normal((2, 4, 4, 1)).astype(np.float32)
    rec = trace(model, x, [0, 2])[0]
    # each window's gradient lands on exactly one input position
    nonzero = (rec.grad_input != 0).reshape(2, 2, 2, 2, 2, 1).sum(axis=(2, 4))
    assert np.all(nonzero == 1)


def test_load_history_from_a_checkpoint(tmp_path, data):
    from npcnn.checkpoint import TrainingCheckpoint

    model = small_model()
    x, y = data
    ckpt = TrainingCheckpoint(tmp_path)
    history = model.fit(x, y, epochs=2, batch_size=3, verbose=0, callbacks=[GradientNormLogger(), ckpt])
    loaded = load_history(ckpt.path)
    assert loaded["loss"] == pytest.approx(history.history["loss"])
    assert loaded["grad_norm/dense_1/kernel"] == pytest.approx(history.history["grad_norm/dense_1/kernel"])


def test_trace_reports_the_loss(data):
    """A learner's first check: at initialisation the cross-entropy is about ln(classes)."""
    model = small_model()
    x, y = data
    recs = trace(model, x, y)
    logits_loss = model.evaluate(x, y, batch_size=len(x), verbose=0)
    expected = logits_loss[0] if isinstance(logits_loss, list) else logits_loss
    assert recs.loss == pytest.approx(expected, rel=1e-5)
    assert recs.classes == model.output_shape[-1]
    text = format_trace(recs)
    assert text.splitlines()[-1].startswith(f"loss {recs.loss:.4f} (ln {recs.classes} = ")
    assert trace(model, x).loss is None and "loss" not in format_trace(trace(model, x)).splitlines()[-1]
