"""npcnn.checkpoint and the RNG state helpers: round trips, exact resumption, atomicity, mismatches."""

import json
import os
import zipfile

import numpy as np
import pytest

import npcnn
from npcnn.callbacks import Callback
from npcnn.checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint, restore_checkpoint, save_checkpoint
from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from npcnn.models import Sequential
from npcnn.utils import get_rng, get_rng_state, set_rng_state


def small_model(optimizer="adam", units=16):
    model = Sequential()
    model.add(Conv2D(4, (3, 3), activation="relu", input_shape=(8, 8, 3)))
    model.add(MaxPooling2D((2, 2)))
    model.add(Flatten())
    model.add(Dense(units, activation="relu"))
    model.add(Dense(10))
    from npcnn.losses import SparseCategoricalCrossentropy

    model.compile(optimizer=optimizer, loss=SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(5)
    return rng.random((40, 8, 8, 3), dtype=np.float32), rng.integers(0, 10, size=40)


def test_rng_state_roundtrip_is_json():
    npcnn.set_random_seed(7)
    get_rng().random(3)
    state = get_rng_state()
    restored = json.loads(json.dumps(state))
    a = get_rng().permutation(100)
    get_rng().random(10)
    set_rng_state(restored)
    np.testing.assert_array_equal(get_rng().permutation(100), a)


def test_rng_state_other_bit_generator():
    state = np.random.Generator(np.random.Philox(3)).bit_generator.state
    expected = np.random.Generator(np.random.Philox(3)).random(4)
    set_rng_state(state)
    np.testing.assert_array_equal(get_rng().random(4), expected)
    npcnn.set_random_seed(0)  # back to PCG64 for the other tests
    with pytest.raises(ValueError, match="unknown bit generator"):
        set_rng_state({"bit_generator": "os"})
    with pytest.raises(ValueError):
        set_rng_state([1, 2])


def test_save_load_roundtrip(tmp_path, data):
    npcnn.set_random_seed(1)
    model = small_model()
    model.fit(*data, epochs=1, batch_size=8, verbose=0)
    path = save_checkpoint(tmp_path / "c.npz", model, 1, {"loss": [np.float32(2.5)]}, {"note": "x"})
    with np.load(path, allow_pickle=False) as z:  # plain arrays and a JSON string: no pickle needed
        assert "meta" in z.files and any(k.startswith("optimizer/slot") for k in z.files)
    state = load_checkpoint(path)
    assert state.epoch == 1 and state.history == {"loss": [2.5]} and state.extra == {"note": "x"}
    assert state.optimizer == "Adam" and int(state.optimizer_state["iterations"]) == 5
    assert state.rng_state == get_rng_state()

    other = small_model()
    restore_checkpoint(path, other)
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    sa, sb = model.optimizer.get_state(model.params), other.optimizer.get_state(other.params)
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_is_bit_identical(tmp_path, data, optimizer):
    """3 epochs straight == 1 epoch, checkpoint, fresh model and process state, 2 more epochs."""
    x, y = data
    npcnn.set_random_seed(11)
    ref = small_model(optimizer)
    ref.fit(x, y, epochs=3, batch_size=8, verbose=0, validation_data=(x[:10], y[:10]))

    npcnn.set_random_seed(11)
    first = small_model(optimizer)
    ckpt = TrainingCheckpoint(tmp_path)
    first.fit(x, y, epochs=1, batch_size=8, verbose=0, validation_data=(x[:10], y[:10]), callbacks=[ckpt])
    get_rng().random(1000)  # disturb everything the checkpoint must restore
    npcnn.set_random_seed(999)
    second = small_model(optimizer)
    state = restore_checkpoint(ckpt.path, second)
    assert state.epoch == 1
    resumed = TrainingCheckpoint(tmp_path, history=state.history)
    second.fit(x, y, epochs=3, batch_size=8, verbose=0, validation_data=(x[:10], y[:10]),
               callbacks=[resumed], initial_epoch=state.epoch)
    for a, b in zip(ref.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert resumed.history == ref.history.history
    assert load_checkpoint(ckpt.path).epoch == 3


def test_checkpoint_each_epoch_and_history(tmp_path, data):
    npcnn.set_random_seed(2)
    model = small_model()
    seen = []

    class Spy(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(load_checkpoint(os.path.join(tmp_path, "checkpoint.npz")).epoch)

    ckpt = TrainingCheckpoint(tmp_path, extra={"config": {"a": 1}})
    model.fit(*data, epochs=3, batch_size=16, verbose=0, callbacks=[ckpt, Spy()])
    assert seen == [1, 2, 3]
    state = load_checkpoint(ckpt.path)
    assert len(state.history["loss"]) == 3 and state.extra == {"config": {"a": 1}}
    assert [p for p in os.listdir(tmp_path) if p != "checkpoint.npz"] == []  # no temporary files left


def test_failed_write_keeps_previous_checkpoint(tmp_path, data, monkeypatch):
    npcnn.set_random_seed(3)
    model = small_model()
    path = save_checkpoint(tmp_path / "c.npz", model, 1)
    before = (tmp_path / "c.npz").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, 2)
    assert (tmp_path / "c.npz").read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def test_mismatch_lists_problems_and_changes_nothing(tmp_path):
    npcnn.set_random_seed(4)
    path = save_checkpoint(tmp_path / "c.npz", small_model(units=16), 1)
    other = small_model(units=8)
    before = other.get_weights()
    with pytest.raises(CheckpointError, match=r"(?s)dense/kernel: model has shape \(36, 8\), checkpoint \(36, 16\)"):
        restore_checkpoint(path, other)
    for a, b in zip(before, other.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="optimizer: model uses SGD"):
        restore_checkpoint(path, small_model("sgd"))


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.npz"):
        load_checkpoint(tmp_path / "junk.npz")
    np.savez(tmp_path / "weights.npz", a=np.zeros(2))
    with pytest.raises(CheckpointError, match="no valid 'meta'"):
        load_checkpoint(tmp_path / "weights.npz")
    npcnn.set_random_seed(0)
    good = save_checkpoint(tmp_path / "good.npz", small_model(), 1)
    raw = open(good, "rb").read()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="cut.npz"):
        load_checkpoint(tmp_path / "cut.npz")
    with zipfile.ZipFile(tmp_path / "obj.npz", "w") as z:  # an object array would need pickle: refused
        import io

        buf = io.BytesIO()
        np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        z.writestr("meta.npy", buf.getvalue())
    with pytest.raises(CheckpointError, match="obj.npz"):
        load_checkpoint(tmp_path / "obj.npz")
