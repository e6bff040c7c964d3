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


# ------------------------------------------------------------------ issue 11 item 9: the whole file is checked first
def _rewrite(path, out, meta=None, **arrays):
    """Copy the checkpoint ``path`` to ``out`` with meta fields and arrays replaced (None removes)."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    m = json.loads(str(data["meta"]))
    for k, v in (meta or {}).items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    data["meta"] = np.array(json.dumps(m))
    for k, v in arrays.items():
        data[k] = v
    np.savez(out, **data)
    return out


@pytest.fixture
def trained(tmp_path, data):
    npcnn.set_random_seed(6)
    model = small_model()
    model.fit(*data, epochs=1, batch_size=8, verbose=0)
    return save_checkpoint(tmp_path / "good.npz", model, 1)


def _untouched(model, fn):
    """Run fn (which must raise CheckpointError); the model, its optimizer and the RNG are unchanged."""
    w = model.get_weights()
    opt = {k: v.copy() for k, v in model.optimizer.get_state(model.params).items()}
    rng = get_rng_state()
    with pytest.raises(CheckpointError) as info:
        fn()
    for a, b in zip(w, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    after = model.optimizer.get_state(model.params)
    for k in opt:
        np.testing.assert_array_equal(opt[k], after[k])
    assert get_rng_state() == rng
    return str(info.value)


@pytest.mark.parametrize("change,field", [
    ({"weights/dense/bias": np.full(16, np.nan, np.float32)}, r"weights/dense/bias: contains NaN or Inf"),
    ({"optimizer/slot1_v": -np.ones(4, np.float32)}, r"optimizer/slot1_v: a second moment .* must be >= 0"),
    ({"optimizer/iterations": np.array(-5)}, r"optimizer/iterations: must be a non-negative integer, got -5"),
    ({"optimizer/slot0_m": np.full((3, 3, 3, 4), np.inf, np.float32)}, r"optimizer/slot0_m: contains NaN or Inf"),
    ({"meta:epoch": -1}, r"epoch: must be a non-negative integer, got -1"),
    ({"meta:epoch": 1.5}, r"epoch: must be a non-negative integer, got 1.5"),
    ({"meta:epoch": None}, r"epoch: missing"),
    ({"meta:rng_state": {"bit_generator": "PCG64", "state": "x"}}, r"rng_state: not a valid PCG64 state"),
    ({"meta:rng_state": [1, 2]}, r"rng_state: expected a NumPy bit-generator state"),
    ({"meta:rng_state": {"bit_generator": "os"}}, r"rng_state: unknown bit generator 'os'"),
    ({"meta:rng_state": None}, r"rng_state: missing"),
    ({"meta:history": [1, 2]}, r"history: must be an object"),
])
def test_invalid_fields_are_refused_before_anything_changes(tmp_path, trained, change, field):
    meta = {k[5:]: v for k, v in change.items() if k.startswith("meta:")}
    arrays = {k: v for k, v in change.items() if not k.startswith("meta:")}
    bad = _rewrite(trained, tmp_path / "bad.npz", meta, **arrays)
    with pytest.raises(CheckpointError, match=field):
        load_checkpoint(bad)
    model = small_model()
    message = _untouched(model, lambda: restore_checkpoint(bad, model))
    assert "bad.npz: invalid checkpoint" in message


def test_every_bad_field_in_one_error(tmp_path, trained):
    bad = _rewrite(trained, tmp_path / "bad.npz", {"epoch": -2, "rng_state": {"bit_generator": "os"}},
                   **{"weights/conv2d/bias": np.full(4, np.nan, np.float32)})
    with pytest.raises(CheckpointError, match=r"(?s)epoch: .*rng_state: .*weights/conv2d/bias: contains NaN"):
        load_checkpoint(bad)


def test_meta_that_is_not_an_object(tmp_path, trained):
    with np.load(trained, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    for meta, why in ((np.array("[1, 2]"), "meta: expected a JSON object, got list"),
                      (np.array("{"), "no valid 'meta' entry"),
                      (np.zeros(3), "no valid 'meta' entry")):
        data["meta"] = meta
        np.savez(tmp_path / "m.npz", **data)
        with pytest.raises(CheckpointError, match=why):
            load_checkpoint(tmp_path / "m.npz")


def test_values_beyond_float32_in_a_checkpoint(tmp_path, trained):
    big = np.zeros((36, 16))
    big[0, 0] = 1e300
    bad = _rewrite(trained, tmp_path / "bad.npz", **{"weights/dense/kernel": big})
    model = small_model()
    message = _untouched(model, lambda: restore_checkpoint(bad, model))
    assert "weights dense/kernel: holds values beyond float32's range" in message


def test_restore_from_a_state_object_checks_it_too(trained):
    state = load_checkpoint(trained)
    state.epoch = -3
    state.rng_state = {"bit_generator": "nope"}
    model = small_model()
    message = _untouched(model, lambda: restore_checkpoint(state, model))
    assert "epoch: must be a non-negative integer" in message and "rng_state: unknown bit generator" in message


def test_forged_array_size_is_a_checkpoint_error(tmp_path):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**11,)})
    with zipfile.ZipFile(tmp_path / "ck.npz", "w") as z:
        z.writestr("weights/conv2d/kernel.npy", buf.getvalue() + b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"ck.npz: not a readable npcnn checkpoint \(member "
                                              r"'weights/conv2d/kernel.npy' declares shape"):
        load_checkpoint(tmp_path / "ck.npz")


def test_a_directory_is_not_a_checkpoint(tmp_path):
    (tmp_path / "checkpoint.npz").mkdir()
    with pytest.raises(CheckpointError, match="not a readable npcnn checkpoint \\(it is a directory\\)"):
        load_checkpoint(tmp_path / "checkpoint.npz")


# ------------------------------------------------------------------ buffers (non-trainable weights)
def test_buffers_are_checkpointed_and_restored(tmp_path, data):
    npcnn.set_random_seed(8)
    model = small_model()
    model.layers[3].buffers = {"moving_mean": np.arange(16, dtype=np.float32)}
    path = save_checkpoint(tmp_path / "c.npz", model, 1)
    state = load_checkpoint(path)
    assert "dense/moving_mean" in state.weights
    other = small_model()
    other.layers[3].buffers = {"moving_mean": np.zeros(16, np.float32)}
    restore_checkpoint(path, other)
    np.testing.assert_array_equal(other.layers[3].buffers["moving_mean"], np.arange(16))
    plain = small_model()  # no such buffer: the checkpoint does not fit
    with pytest.raises(CheckpointError, match=r"unexpected weights dense/moving_mean \(shape \(16,\)\)"):
        restore_checkpoint(path, plain)


# ------------------------------------------------------------------ issue 11 item 10: callbacks' state
def _early_run(x, y, tmp_path, split=None, restore_best=False, epochs=8):
    """fit with EarlyStopping(monitor='loss', min_delta=10, patience=2): never 'improves' after epoch 1, so
    an uninterrupted run stops after epoch 3 (Keras stops after `patience` epochs without improvement).
    With ``split``, stop after ``split`` epochs, then resume in a fresh model and fresh callbacks from the
    checkpoint."""
    from npcnn.callbacks import EarlyStopping

    npcnn.set_random_seed(21)
    model = small_model()
    early = EarlyStopping(monitor="loss", min_delta=10, patience=2, restore_best_weights=restore_best)
    ckpt = TrainingCheckpoint(tmp_path)
    hist = model.fit(x, y, epochs=split or epochs, batch_size=8, verbose=0, callbacks=[early, ckpt])
    if split is None:
        return model, hist.epoch, early
    npcnn.set_random_seed(5)
    model = small_model()
    early = EarlyStopping(monitor="loss", min_delta=10, patience=2, restore_best_weights=restore_best)
    state = restore_checkpoint(ckpt.path, model, callbacks=[early])
    ckpt = TrainingCheckpoint(tmp_path, history=state.history)
    hist = model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[early, ckpt],
                     initial_epoch=state.epoch)
    return model, list(range(state.epoch)) + hist.epoch, early


@pytest.mark.parametrize("restore_best", [False, True])
def test_early_stopping_resumes_exactly(tmp_path, data, restore_best):
    ref, ref_epochs, ref_early = _early_run(*data, tmp_path / "a", restore_best=restore_best)
    assert ref_epochs == [0, 1, 2] and ref_early.stopped_epoch == 2
    res, res_epochs, res_early = _early_run(*data, tmp_path / "b", split=2, restore_best=restore_best)
    assert res_epochs == ref_epochs and res_early.stopped_epoch == 2
    assert res_early.best == ref_early.best and res_early.wait == ref_early.wait
    for a, b in zip(ref.get_weights(), res.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_state_in_the_checkpoint(tmp_path, data):
    _, _, early = _early_run(*data, tmp_path, split=None, restore_best=True)
    state = load_checkpoint(os.path.join(tmp_path, "checkpoint.npz"))
    saved = state.callbacks["EarlyStopping"]
    assert saved["wait"] == 2 and saved["stopped_epoch"] == 2 and saved["best"] == early.best
    assert len(saved["best_weights"]) == 6 and saved["best_weights"]["0"].shape == (3, 3, 3, 4)


def test_checkpoint_must_come_after_stateful_callbacks(tmp_path, data):
    from npcnn.callbacks import EarlyStopping

    model = small_model()
    before = model.get_weights()
    with pytest.raises(ValueError, match="TrainingCheckpoint: put it after EarlyStopping"):
        model.fit(*data, epochs=1, verbose=0, callbacks=[TrainingCheckpoint(tmp_path), EarlyStopping("loss")])
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # refused before the first step
    assert not os.path.exists(os.path.join(tmp_path, "checkpoint.npz"))
    # naming them explicitly lifts the order rule (the caller takes responsibility)
    ckpt = TrainingCheckpoint(tmp_path, callbacks=[])
    model.fit(*data, epochs=1, verbose=0, callbacks=[ckpt, EarlyStopping("loss")])


def test_restore_checks_the_callbacks(tmp_path, data):
    from npcnn.callbacks import EarlyStopping

    _early_run(*data, tmp_path, split=None)
    path = os.path.join(tmp_path, "checkpoint.npz")
    model = small_model()
    with pytest.warns(UserWarning, match="holds the state of EarlyStopping; pass callbacks"):
        restore_checkpoint(path, model)
    model = small_model()
    message = _untouched(model, lambda: restore_checkpoint(path, model, callbacks=[]))
    assert "the checkpoint holds the state of EarlyStopping, but no such callback was given" in message
    message = _untouched(model, lambda: restore_checkpoint(path, model, callbacks=[EarlyStopping(),
                                                                                   EarlyStopping()]))
    assert "holds no state for EarlyStopping_1" in message
    # a state that does not fit the callback: refused, and nothing (callbacks included) changes
    bad = _rewrite(path, tmp_path / "bad.npz", {"callbacks": {"EarlyStopping": {"wait": -1, "best": 1.0,
                                                                                "stopped_epoch": 0}}})
    early = EarlyStopping()
    message = _untouched(model, lambda: restore_checkpoint(bad, model, callbacks=[early]))
    assert "callbacks/EarlyStopping: EarlyStopping.set_state: wait must be a non-negative integer" in message
    assert early.wait == 0 and early.best == float("inf")
