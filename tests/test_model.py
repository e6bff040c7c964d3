"""Sequential: the Keras tutorial program, summary, fit/evaluate/predict, weights, reproducibility."""

import numpy as np
import pytest
from conftest import held_after_one_step, seed_model

import npcnn
from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from npcnn.models import Sequential


def synthetic_images(n, rng, size=32, classes=10):
    """Images whose class is a bright square at a class-specific position: learnable, not trivial."""
    x = rng.integers(0, 60, size=(n, size, size, 3)).astype(np.uint8)
    y = rng.integers(0, classes, size=(n, 1)).astype(np.uint8)
    cell = size // 4
    for i in range(n):
        k = int(y[i, 0])
        r, c = divmod(k % 16, 4)
        x[i, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell, k % 3] = 255
    return x, y


def test_summary_reports_keras_parameter_count(capsys):
    model = seed_model()
    model.summary()
    out = capsys.readouterr().out
    assert "Total params: 122,570" in out
    assert "conv2d_1 (Conv2D)" in out and "(None, 13, 13, 64)" in out
    assert "flatten (Flatten)" in out and "(None, 1024)" in out
    assert model.count_params() == 122570
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 3, 3, 32), (32,), (3, 3, 32, 64), (64,), (3, 3, 64, 64), (64,), (1024, 64), (64,),
                      (64, 10), (10,)]


def test_learns_synthetic_task_well_above_chance(rng):
    npcnn.set_random_seed(1)
    x, y = synthetic_images(600, rng, size=16)
    xt, yt = synthetic_images(200, rng, size=16)
    model = Sequential([Conv2D(8, (3, 3), activation="relu", input_shape=(16, 16, 3)), MaxPooling2D(),
                        Conv2D(16, (3, 3), activation="relu"), MaxPooling2D(), Flatten(),
                        Dense(32, activation="relu"), Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x / 255.0, y, epochs=4, batch_size=32, verbose=0)
    _, acc = model.evaluate(xt / 255.0, yt, verbose=0)
    assert acc > 0.6, f"accuracy {acc} on a 10-class task (chance 0.1)"


def test_train_on_batch_returns_loss_before_update(rng):
    model = seed_model(input_shape=(18, 18, 3), filters=(4, 4, 4), units=8, classes=3)
    x = rng.standard_normal((6, 18, 18, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    before = model.evaluate(x, y, batch_size=6, verbose=0)
    w0 = model.get_weights()
    loss, acc = model.train_on_batch(x, y)
    assert loss == pytest.approx(before[0], rel=1e-5) and acc == pytest.approx(before[1])
    assert any(not np.array_equal(a, b) for a, b in zip(w0, model.get_weights()))
    assert model.evaluate(x, y, batch_size=6, verbose=0)[0] < loss


def test_same_seed_same_run(rng):
    x, y = synthetic_images(64, rng, size=18)

    def run():
        npcnn.set_random_seed(123)
        model = seed_model(input_shape=(18, 18, 3), filters=(4, 4, 4), units=8)
        h = model.fit(x / 255.0, y, epochs=2, batch_size=16, verbose=0)
        return model.get_weights(), h.history

    (w1, h1), (w2, h2) = run(), run()
    assert h1 == h2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)


def test_uint8_and_float_inputs_and_label_shapes_agree(rng):
    npcnn.set_random_seed(0)
    model = seed_model(input_shape=(18, 18, 3), filters=(2, 2, 2), units=4, classes=5)
    x = rng.integers(0, 255, (8, 18, 18, 3)).astype(np.uint8)
    y = rng.integers(0, 5, 8)
    a = model.evaluate(x, y, verbose=0)
    b = model.evaluate(x.astype(np.float64), y.reshape(-1, 1), verbose=0)
    assert a == pytest.approx(b)


def test_validation_split_takes_last_samples(rng):
    model = seed_model(input_shape=(18, 18, 3), filters=(2, 2, 2), units=4, classes=5)
    x = rng.standard_normal((10, 18, 18, 3)).astype(np.float32)
    y = rng.integers(0, 5, 10)
    h = model.fit(x, y, epochs=1, batch_size=4, validation_split=0.2, verbose=0)
    expected = model.evaluate(x[-2:], y[-2:], verbose=0)
    assert h.history["val_loss"][0] == pytest.approx(expected[0], rel=1e-5)


def test_weights_roundtrip_and_independent_optimizer_state(tmp_path, rng):
    model = seed_model(input_shape=(18, 18, 3), filters=(2, 3, 4), units=4, classes=5)
    path = tmp_path / "w.npz"
    model.save_weights(path)
    other = seed_model(input_shape=(18, 18, 3), filters=(2, 3, 4), units=4, classes=5)
    other.load_weights(path)
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    other.set_weights([w * 0 for w in model.get_weights()])
    assert all(not w.any() for w in other.get_weights())
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


def test_optimizer_state_is_per_parameter(rng):
    # Two Dense layers whose kernels share the name 'kernel' and the same shape.
    model = Sequential([Flatten(input_shape=(2, 2, 1)), Dense(4), Dense(4, activation="softmax")])
    model.layers[2].params["kernel"][...] = model.layers[1].params["kernel"][:4, :4]
    model.compile("adam", "sparse_categorical_crossentropy")
    model.train_on_batch(rng.standard_normal((3, 2, 2, 1)), [0, 1, 2])
    opt = model.optimizer
    k1, k2 = model.layers[1].params["kernel"], model.layers[2].params["kernel"]
    assert opt._slots_for(k1) is not opt._slots_for(k2)
    assert len(opt._slots) == 4


def test_predict_before_compile_and_layer_naming():
    model = Sequential([Dense(3, input_shape=(4,)), Dense(2, activation="softmax")])
    out = model.predict(np.ones((5, 4)))
    assert out.shape == (5, 2)
    assert [layer.name for layer in model.layers] == ["dense", "dense_1"]
    assert "Dense" in repr(model.layers[1])


def test_build_later_without_input_shape(rng):
    model = Sequential()
    model.add(Conv2D(2, 3, padding="same"))
    model.add(Flatten())
    model.add(Dense(3))
    model.build((None, 5, 5, 1))
    assert model.output_shape == (3,)
    assert model.count_params() == 2 * 9 + 2 + 50 * 3 + 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_value_range_scan_finds_nan_and_inf_in_any_chunk(dtype):
    """The input check scans min/max chunk by chunk (no temporary the size of x): a NaN or an inf in
    any chunk, first or last, is found; finite data gives its true range."""
    from npcnn.models import _value_range

    x = np.linspace(-3, 5, 1000).astype(dtype)
    assert _value_range(x, chunk=64) == (-3, 5)
    for pos in (0, 500, 999):
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[pos] = bad
            lo, hi = _value_range(y, chunk=64)
            assert not (np.isfinite(lo) and np.isfinite(hi)), (pos, bad)


@pytest.mark.parametrize("fuse", [True, False])
def test_summary_memory_line_matches_the_buffers_a_step_keeps(fuse, monkeypatch):
    """summary()'s last line counts the buffers the layers really hold after a training step."""
    from npcnn import plan as plan_mod

    monkeypatch.setattr(plan_mod, "FUSE", fuse)
    model = seed_model(input_shape=(18, 18, 3), filters=(4, 6, 5), units=8)
    held, _ = held_after_one_step(model, np.random.default_rng(0).random((6, 18, 18, 3), dtype=np.float32))
    assert model.plan.workspace_bytes(model.input_shape, 6) == held  # buffer by buffer
    cols = sum(n for (_, name), n in held.items() if name == "im2col.cols")
    assert model._workspace_bytes(6) == (cols, sum(held.values()) - cols)
    lines = []
    model.summary(print_fn=lines.append, batch_size=6)
    assert "im2col columns at batch 6" in lines[-2] and "a training step keeps" in lines[-2]
