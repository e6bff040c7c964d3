"""The callbacks of issue 13 item 6: LearningRateScheduler, ReduceLROnPlateau, ModelCheckpoint, CSVLogger.

Each against Keras's documented behaviour, and their state through npcnn.checkpoint: a run interrupted and
resumed ends bit-identical to the uninterrupted one.
"""

import csv
import math
import os

import numpy as np
import pytest

import npcnn
from npcnn.callbacks import Callback, CSVLogger, LearningRateScheduler, ModelCheckpoint, ReduceLROnPlateau
from npcnn.checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint, restore_checkpoint
from npcnn.layers import Dense, Flatten
from npcnn.losses import SparseCategoricalCrossentropy
from npcnn.models import Sequential
from npcnn.optimizers import SGD, Adam
from npcnn.schedules import ExponentialDecay


def tiny(optimizer=None):
    model = Sequential([Flatten(input_shape=(4, 4, 2)), Dense(8, activation="relu"), Dense(5)])
    model.compile(optimizer=optimizer or SGD(learning_rate=0.1, momentum=0.9),
                  loss=SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    return rng.random((30, 4, 4, 2), dtype=np.float32), rng.integers(0, 5, size=30)


class FeedLogs(Callback):
    """Replaces the monitored value with a scripted sequence (to drive the plateau logic exactly)."""

    def __init__(self, key, values):
        self.key, self.values = key, list(values)

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]


# ----------------------------------------------------------------------------- LearningRateScheduler
def test_scheduler_sets_the_rate_each_epoch_and_logs_it(data):
    model = tiny()
    seen = []

    def schedule(epoch, lr):
        seen.append((epoch, lr))
        return lr * 0.5 if epoch else 0.2

    hist = model.fit(*data, epochs=3, verbose=0, callbacks=[LearningRateScheduler(schedule)])
    assert seen == [(0, 0.1), (1, 0.2), (2, 0.1)]
    assert hist.history["learning_rate"] == [0.2, 0.1, 0.05]
    assert model.optimizer.learning_rate == 0.05


def test_scheduler_one_argument_form_and_verbose(data, capsys):
    model = tiny()
    model.fit(*data, epochs=2, verbose=0, callbacks=[LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1), 1)])
    assert model.optimizer.learning_rate == 0.02
    assert "Epoch 2: LearningRateScheduler setting learning rate to 0.02." in capsys.readouterr().out


def test_scheduler_refuses_bad_values(data):
    model = tiny()
    with pytest.raises(ValueError, match="schedule returned nan for epoch 0"):
        model.fit(*data, epochs=1, verbose=0, callbacks=[LearningRateScheduler(lambda e, lr: float("nan"))])
    with pytest.raises(TypeError, match="schedule must be a function"):
        LearningRateScheduler(0.1)
    scheduled = tiny(SGD(learning_rate=ExponentialDecay(0.1, 10, 0.5)))
    with pytest.raises(TypeError, match="not settable"):
        scheduled.fit(*data, epochs=1, verbose=0, callbacks=[LearningRateScheduler(lambda e, lr: 0.1)])


# ----------------------------------------------------------------------------- ReduceLROnPlateau
def keras_plateau(values, lr, factor, patience, min_delta, cooldown, min_lr, mode="min"):
    """Keras 3's ReduceLROnPlateau.on_epoch_end, transcribed: the rates each epoch ends with."""
    best = math.inf if mode == "min" else -math.inf
    wait = cooldown_counter = 0
    out = []
    better = (lambda a, b: a < b - min_delta) if mode == "min" else (lambda a, b: a > b + min_delta)
    for current in values:
        if cooldown_counter > 0:
            cooldown_counter -= 1
            wait = 0
        if better(current, best):
            best, wait = current, 0
        elif not cooldown_counter > 0:
            wait += 1
            if wait >= patience and lr > min_lr:
                lr = max(lr * factor, min_lr)
                cooldown_counter, wait = cooldown, 0
        out.append(lr)
    return out


@pytest.mark.parametrize("patience,cooldown,min_lr,mode", [(1, 0, 0.0, "min"), (2, 1, 0.0, "min"),
                                                           (1, 2, 0.004, "min"), (2, 0, 0.0, "max")])
def test_plateau_follows_keras_rule(data, patience, cooldown, min_lr, mode):
    values = [1.0, 0.9, 0.95, 0.9, 0.92, 0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8]
    if mode == "max":
        values = [-v for v in values]
    model = tiny()
    plateau = ReduceLROnPlateau("val_x", factor=0.2, patience=patience, mode=mode, min_delta=0.01,
                                cooldown=cooldown, min_lr=min_lr)
    rates = []

    class Rate(Callback):
        def on_epoch_end(self, epoch, logs=None):
            rates.append(self.model.optimizer.learning_rate)

    hist = model.fit(*data, epochs=len(values), verbose=0, callbacks=[FeedLogs("val_x", values), plateau, Rate()])
    expected = keras_plateau(values, 0.1, 0.2, patience, 0.01, cooldown, min_lr, mode)
    np.testing.assert_allclose(rates, expected, rtol=1e-12)
    # the logs hold the rate the epoch trained with (before a reduction at its end), as Keras's
    np.testing.assert_allclose(hist.history["learning_rate"], [0.1] + expected[:-1], rtol=1e-12)


def test_plateau_arguments_and_missing_monitor(data):
    with pytest.raises(ValueError, match="factor must be in"):
        ReduceLROnPlateau(factor=1.0)
    with pytest.raises(ValueError, match="unknown mode 'mni'"):
        ReduceLROnPlateau(mode="mni")
    assert ReduceLROnPlateau("val_accuracy").mode == "max" and ReduceLROnPlateau().mode == "min"
    model = tiny()
    with pytest.warns(UserWarning, match="conditioned on metric `val_loss` which is not available"):
        model.fit(*data, epochs=1, verbose=0, callbacks=[ReduceLROnPlateau()])


def _plateau_run(x, y, tmp_path, split=None, epochs=7):
    """fit with ReduceLROnPlateau(monitor='loss', min_delta=10): it reduces every 2 epochs; with ``split``,
    stop after ``split`` epochs and resume in a fresh model, fresh callbacks and a disturbed RNG."""

    def make():
        return ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, min_delta=10, cooldown=1)

    npcnn.set_random_seed(4)
    model = tiny(Adam(learning_rate=0.01))
    plateau, ckpt = make(), TrainingCheckpoint(tmp_path)
    hist = model.fit(x, y, epochs=split or epochs, batch_size=8, verbose=0, callbacks=[plateau, ckpt])
    if split is None:
        return model, hist.history, plateau
    npcnn.set_random_seed(99)
    model = tiny(Adam(learning_rate=0.01))
    plateau = make()
    state = restore_checkpoint(ckpt.path, model, callbacks=[plateau])
    ckpt = TrainingCheckpoint(tmp_path, history=state.history)
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[plateau, ckpt], initial_epoch=state.epoch)
    return model, ckpt.history, plateau


@pytest.mark.parametrize("split", [2, 3, 4])
def test_plateau_resumes_bit_identical(tmp_path, data, split):
    ref, ref_hist, ref_cb = _plateau_run(*data, tmp_path / "a")
    assert len(set(ref_hist["learning_rate"])) >= 3  # the rate really changed during the run
    res, res_hist, res_cb = _plateau_run(*data, tmp_path / "b", split=split)
    for a, b in zip(ref.get_weights(), res.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert res_hist == ref_hist
    assert res.optimizer.learning_rate == ref.optimizer.learning_rate
    assert (res_cb.best, res_cb.wait, res_cb.cooldown_counter) == (ref_cb.best, ref_cb.wait, ref_cb.cooldown_counter)


def test_plateau_state_is_checked(tmp_path, data):
    _plateau_run(*data, tmp_path, split=None, epochs=2)
    saved = load_checkpoint(os.path.join(tmp_path, "checkpoint.npz")).callbacks["ReduceLROnPlateau"]
    assert set(saved) == {"best", "wait", "cooldown_counter", "learning_rate"}
    cb = ReduceLROnPlateau()
    with pytest.raises(ValueError, match="wait must be a non-negative integer"):
        cb.set_state({**saved, "wait": -1})
    with pytest.raises(ValueError, match="learning_rate must be None or a positive"):
        cb.set_state({**saved, "learning_rate": 0.0})
    assert cb.wait == 0 and cb.best == math.inf  # unchanged


def test_scheduler_resumes_with_the_current_rate(tmp_path, data):
    """A schedule that depends on lr (lr * 0.5 each epoch) continues from the saved rate."""
    x, y = data

    def run(split, path):
        npcnn.set_random_seed(8)
        model = tiny()
        sched, ckpt = LearningRateScheduler(lambda e, lr: lr * 0.5), TrainingCheckpoint(path)
        model.fit(x, y, epochs=split or 4, verbose=0, callbacks=[sched, ckpt])
        if split is None:
            return model
        model, sched = tiny(), LearningRateScheduler(lambda e, lr: lr * 0.5)
        state = restore_checkpoint(ckpt.path, model, callbacks=[sched])
        model.fit(x, y, epochs=4, verbose=0, callbacks=[sched, TrainingCheckpoint(path, history=state.history)],
                  initial_epoch=state.epoch)
        return model

    ref, res = run(None, tmp_path / "a"), run(2, tmp_path / "b")
    assert ref.optimizer.learning_rate == res.optimizer.learning_rate == 0.1 * 0.5**4
    for a, b in zip(ref.get_weights(), res.get_weights()):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- ModelCheckpoint
def test_model_checkpoint_formats_names_and_writes_each_epoch(tmp_path, data):
    model = tiny()
    pattern = str(tmp_path / "w.{epoch:02d}-{val_loss:.2f}.npz")
    hist = model.fit(*data, epochs=3, verbose=0, validation_data=data, callbacks=[ModelCheckpoint(pattern)])
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(f"w.{e + 1:02d}-{v:.2f}.npz" for e, v in enumerate(hist.history["val_loss"]))
    other = tiny()
    other.load_weights(tmp_path / names[-1])
    for a, b in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode,values,saved_at", [("min", [3.0, 2.0, 2.5, 1.0, 1.0], [0, 1, 3]),
                                                  ("max", [3.0, 2.0, 4.0, 4.0, 1.0], [0, 2]),
                                                  ("auto", [0.1, 0.3, 0.2, 0.5, 0.5], [0, 1, 3])])
def test_model_checkpoint_save_best_only(tmp_path, data, mode, values, saved_at):
    model = tiny()
    monitor = "val_acc" if mode == "auto" else "val_x"  # auto: 'acc' in the name means max
    path = tmp_path / "best.npz"

    class Spy(Callback):  # the weights at the end of every epoch, and whether the file was written then
        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch] = [w.copy() for w in self.model.get_weights()]
            stamp = path.stat().st_mtime_ns if path.exists() else None
            if stamp is not None and stamp != stamps.get("last"):
                written.append(epoch)
            stamps["last"] = stamp

    snapshots, stamps, written = {}, {}, []
    cb = ModelCheckpoint(path, monitor=monitor, save_best_only=True, mode=mode)
    model.fit(*data, epochs=len(values), verbose=0, callbacks=[FeedLogs(monitor, values), cb, Spy()])
    assert cb.best == (max(values) if cb.mode == "max" else min(values))
    assert len(written) <= len(saved_at)  # (mtime resolution may merge two writes; never more writes)
    other = tiny()
    other.load_weights(path)
    for a, b in zip(snapshots[saved_at[-1]], other.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_model_checkpoint_batch_frequency_and_errors(tmp_path, data):
    model = tiny()
    cb = ModelCheckpoint(str(tmp_path / "e{epoch}-b{batch}.npz"), save_freq=3)
    model.fit(*data, epochs=2, batch_size=8, verbose=0, callbacks=[cb])  # 4 batches per epoch: saves at 3, 6(2), ...
    assert sorted(os.listdir(tmp_path)) == ["e1-b3.npz", "e2-b2.npz"]
    with pytest.raises(KeyError, match="failed to format the filepath"):
        tiny().fit(*data, epochs=1, verbose=0, callbacks=[ModelCheckpoint(str(tmp_path / "{val_loss}.npz"))])
    with pytest.raises(ValueError, match="not Keras's .h5/.keras"):
        ModelCheckpoint("x.weights.h5")
    with pytest.raises(ValueError, match="save_freq must be 'epoch' or a positive integer"):
        ModelCheckpoint("x.npz", save_freq=0)
    with pytest.warns(UserWarning, match="Can save best model only with val_loss available"):
        tiny().fit(*data, epochs=1, verbose=0, callbacks=[ModelCheckpoint(tmp_path / "b.npz", save_best_only=True)])


def test_model_checkpoint_write_is_atomic(tmp_path, data, monkeypatch):
    """A failure while writing leaves the previous file whole (the write goes through a renamed temporary)."""
    model = tiny()
    path = tmp_path / "w.npz"
    model.fit(*data, epochs=1, verbose=0, callbacks=[ModelCheckpoint(path)])
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        model.fit(*data, epochs=1, verbose=0, callbacks=[ModelCheckpoint(path)])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]


def test_model_checkpoint_best_resumes(tmp_path, data):
    cb = ModelCheckpoint(tmp_path / "b.npz", monitor="loss", save_best_only=True)
    model = tiny()
    model.fit(*data, epochs=2, verbose=0, callbacks=[cb, TrainingCheckpoint(tmp_path / "c")])
    fresh = ModelCheckpoint(tmp_path / "b.npz", monitor="loss", save_best_only=True)
    restore_checkpoint(tmp_path / "c" / "checkpoint.npz", tiny(), callbacks=[fresh])
    assert fresh.best == cb.best < math.inf
    with pytest.raises(CheckpointError, match="best must be a number"):
        bad = ModelCheckpoint(tmp_path / "b.npz")
        restore_checkpoint(_with_state(tmp_path, {"best": "x", "batches_since_save": 0, "last_batch_seen": 0}),
                           tiny(), callbacks=[bad])


def _with_state(tmp_path, state):
    model = tiny()
    path = tmp_path / "forged" / "checkpoint.npz"
    from npcnn.checkpoint import save_checkpoint

    save_checkpoint(path, model, 1, callbacks={"ModelCheckpoint": state})
    return path


# ----------------------------------------------------------------------------- CSVLogger
def test_csv_logger_layout_as_keras(tmp_path, data):
    path = tmp_path / "log.csv"
    model = tiny()
    hist = model.fit(*data, epochs=2, verbose=0, validation_data=data, callbacks=[CSVLogger(path)])
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1"]
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], hist.history["loss"], rtol=1e-12)


def test_csv_logger_without_validation_adds_na_columns_and_appends(tmp_path, data):
    path = tmp_path / "log.csv"
    tiny().fit(*data, epochs=1, verbose=0, callbacks=[CSVLogger(path, separator=";")])
    tiny().fit(*data, epochs=2, verbose=0, callbacks=[CSVLogger(path, separator=";", append=True)])
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch;accuracy;loss;val_accuracy;val_loss"
    assert len(lines) == 4 and all(line.endswith(";NA;NA") for line in lines[1:])
    assert [line.split(";")[0] for line in lines[1:]] == ["0", "0", "1"]
    tiny().fit(*data, epochs=1, verbose=0, callbacks=[CSVLogger(path)])  # append=False overwrites
    assert len(path.read_text().splitlines()) == 2


def test_model_checkpoint_whole_model(tmp_path, data):
    """save_weights_only=False writes model.save's file: load_model gives the same model, optimizer included."""
    from npcnn.models import load_model

    model = tiny()
    model.fit(*data, epochs=2, verbose=0, callbacks=[ModelCheckpoint(tmp_path / "m{epoch}.npcnn",
                                                                     save_weights_only=False)])
    again = load_model(tmp_path / "m2.npcnn")
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert again.optimizer.iterations == model.optimizer.iterations
    np.testing.assert_array_equal(model.evaluate(*data, verbose=0), again.evaluate(*data, verbose=0))
