"""Callbacks, as in Keras: History, a progress bar, TerminateOnNaN, EarlyStopping,
GradientNormLogger (per-layer gradient and weight norms per epoch), and LearningRateScheduler,
ReduceLROnPlateau, ModelCheckpoint and CSVLogger (docs/callbacks.md).

A callback with state that must survive a checkpoint (EarlyStopping's best value and wait count)
implements ``get_state()``/``set_state(state)``; :class:`npcnn.checkpoint.TrainingCheckpoint` saves
it after every epoch and ``restore_checkpoint(..., callbacks=[...])`` puts it back, so a resumed run
stops at the same epoch with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
import warnings

import numpy as np

from npcnn.utils import did_you_mean


class Callback:
    """Base class; override any hook. ``self.model`` is set by ``fit``.

    State for checkpoints: :meth:`get_state` returns a dict of JSON-able values and NumPy arrays
    (nested dicts allowed); :meth:`set_state` takes such a dict back, checks it whole and raises
    ``ValueError`` without changing anything when it does not fit. A callback whose class overrides
    ``get_state`` is *stateful*: :class:`npcnn.checkpoint.TrainingCheckpoint` saves its state.
    """

    def set_model(self, model):
        self.model = model

    def set_callbacks(self, callbacks):
        """Called by ``fit`` (through :class:`CallbackList`) with every callback of the fit, in order."""

    def get_state(self):
        """What a checkpoint must keep to resume this callback exactly (default: nothing)."""
        return {}

    def set_state(self, state):
        """Restore what :meth:`get_state` returned (before the resumed ``fit``)."""

    @classmethod
    def is_stateful(cls):
        return cls.get_state is not Callback.get_state

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_batch_begin(self, batch, logs=None): ...
    def on_train_batch_end(self, batch, logs=None): ...


class CallbackList(Callback):
    """Calls each hook on every callback in order."""

    def __init__(self, callbacks, model):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.set_model(model)
        for cb in self.callbacks:
            cb.set_callbacks(tuple(self.callbacks))

    def __getattribute__(self, name):
        if name.startswith("on_"):
            def call(*args, **kwargs):
                for cb in object.__getattribute__(self, "callbacks"):
                    getattr(cb, name)(*args, **kwargs)
            return call
        return object.__getattribute__(self, name)


class History(Callback):
    """Records each epoch's logs: ``history.history['loss']`` etc.; ``history.epoch`` lists epochs."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []
        self.history = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v) if np.ndim(v) == 0 else v)


def format_logs(logs):
    """' - loss: 1.2345 - accuracy: 0.5000' for the scalar entries of logs.

    Keys containing '/' (per-layer diagnostics such as 'grad_norm/conv2d/kernel') are left out.
    """
    parts = []
    for k, v in logs.items():
        if "/" in str(k):
            continue
        if np.ndim(v) == 0 and isinstance(v, (int, float, np.floating, np.integer)):
            parts.append(f"{k}: {float(v):.4f}")
    return "".join(f" - {p}" for p in parts)


def format_time(seconds):
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{seconds:.0f}s"


class Progbar:
    """Keras-style progress for ``steps`` steps.

    On a terminal (``stream.isatty()``) a bar redrawn in place through tqdm:
    ``120/1563 [==>.....] - ETA: 21s - loss: 1.8 - accuracy: 0.34``. Elsewhere
    (a log file, a pipe) nothing is drawn until :meth:`close`, which writes one
    line with no control characters.
    """

    def __init__(self, steps, stream=None, live=None, interval=0.1):
        self.steps = steps
        self.stream = stream or sys.stdout
        self.live = _isatty(self.stream) if live is None else live
        self.start = time.perf_counter()
        self.interval = interval
        self._last_draw = -math.inf
        self.bar = None
        if self.live:
            import shutil

            from tqdm import tqdm

            # {desc} is used raw (tqdm would prefix {postfix} with ', '); fixed width: a terminal
            # that reports 0 columns still gets a bar.
            self.bar = tqdm(total=steps, file=self.stream, ascii=".>=", leave=False,
                            ncols=min(shutil.get_terminal_size((100, 20)).columns, 160), mininterval=interval,
                            bar_format="{n_fmt}/{total_fmt} [{bar:30}] - ETA: {remaining}{desc}")

    def update(self, step, logs):
        if self.bar is None:
            return
        now = time.perf_counter()
        if now - self._last_draw >= self.interval or step == self.steps:
            self._last_draw = now
            self.bar.n = step
            self.bar.set_description_str(format_logs(logs), refresh=True)

    def close(self, logs):
        """Write the final line: steps, time, time per step and the metrics (never cut to the terminal width)."""
        elapsed = time.perf_counter() - self.start
        per_step = elapsed / max(self.steps, 1)
        summary = f"{format_time(elapsed)} {per_step * 1e3:.0f}ms/step{format_logs(logs)}"
        if self.bar is not None:
            self.bar.close()  # leave=False: the live bar is erased and replaced by the final line
            self.stream.write(f"{self.steps}/{self.steps} [{'=' * 30}] - {summary}\n")
        else:
            self.stream.write(f"{self.steps}/{self.steps} - {summary}\n")
        self.stream.flush()


def _isatty(stream):
    """A real terminal with a usable width (one reporting a 0 size gets the plain one-line output)."""
    try:
        import os

        size = os.get_terminal_size(stream.fileno()) if stream.isatty() else None
        return size is not None and size.columns > 0 and size.lines > 0
    except (AttributeError, ValueError, OSError):
        return False


class ProgbarLogger(Callback):
    """Prints 'Epoch i/n' and a progress bar per epoch (verbose=1) or one line per epoch (verbose=2)."""

    def __init__(self, verbose=1, steps=None, epochs=None, stream=None):
        self.verbose, self.steps, self.epochs = verbose, steps, epochs
        self.stream = stream or sys.stdout
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        self.stream.write(f"Epoch {epoch + 1}/{self.epochs}\n")
        self.stream.flush()
        self.bar = Progbar(self.steps, self.stream, live=None if self.verbose == 1 else False)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(batch + 1, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close(logs or {})


class TerminateOnNaN(Callback):
    """Stops training when the loss becomes NaN or Inf (``fit`` also raises on it by default)."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss, terminating training")
            self.model.stop_training = True


_MODES = ("auto", "min", "max")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs (at least one), as Keras 3.

    Args:
        monitor: the key of the epoch's logs to watch (``'val_loss'``, ``'val_accuracy'``, ...).
        min_delta: the smallest change that counts as an improvement.
        patience: stop after this many epochs in a row without improvement (0 acts as 1), as Keras does.
        verbose: 1 prints the epoch where training stopped and when the best weights are restored.
        mode: 'min', 'max', or 'auto' ('max' when the name contains 'acc', else 'min').
        baseline: a value the monitor must beat: epochs that improve on the best but not on it still count
            as waiting.
        restore_best_weights: at the end of training (stopped early or not) put back the weights of the
            best epoch, as Keras 3 does.
        start_from_epoch: epochs to train before the monitor is watched at all (a warm-up).
    Raises:
        ValueError: an unknown ``mode`` (the closest valid one is suggested), a negative ``patience`` or
            ``start_from_epoch``, or a ``min_delta``/``baseline`` that is not a finite number.
    Warns:
        UserWarning, once per ``fit``, when ``monitor`` is not in the epoch's logs (as Keras:
        "Early stopping conditioned on metric `val_acc` which is not available. Available metrics
        are: loss,accuracy,val_loss,val_accuracy").

    ``best`` is the best value seen, as logged. The state (best value, wait count, stopped epoch, best
    weights) goes into training checkpoints (:meth:`get_state`); after :meth:`set_state` the next ``fit``
    continues from it, so a resumed run stops where the uninterrupted one does; one resumed from the epoch
    where it had stopped trains no further.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        if not isinstance(monitor, str):
            raise TypeError(f"EarlyStopping: monitor must be the name of a metric, got {monitor!r}")
        if not isinstance(mode, str) or mode not in _MODES:
            raise ValueError(f"EarlyStopping: unknown mode {mode!r}" + did_you_mean(mode, _MODES))
        for name, v in (("patience", patience), ("start_from_epoch", start_from_epoch)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"EarlyStopping: {name} must be a non-negative integer, got {v!r}")
        for name, v in (("min_delta", min_delta), ("baseline", 0.0 if baseline is None else baseline)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                raise ValueError(f"EarlyStopping: {name} must be a finite number, got {v!r}")
        if verbose not in (0, 1, 2) or isinstance(verbose, bool):
            raise ValueError(f"EarlyStopping: verbose must be 0, 1 or 2, got {verbose!r}")
        self.monitor, self.min_delta, self.patience = monitor, abs(float(min_delta)), int(patience)
        self.verbose, self.start_from_epoch = int(verbose), int(start_from_epoch)
        self.baseline = None if baseline is None else float(baseline)
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.mode = mode
        self.sign = 1 if mode == "min" else -1
        self.restore_best_weights = bool(restore_best_weights)
        self.wait, self._best, self.best_weights, self.stopped_epoch = 0, math.inf, None, 0
        self._resumed = self._warned = False

    @property
    def best(self):
        """The best value of the monitor so far, as logged (inf / -inf before the first epoch)."""
        return self.sign * self._best

    def _improves(self, value, reference):  # both signed (smaller is better)
        return value < reference - self.min_delta

    def on_train_begin(self, logs=None):
        if self._resumed:  # set_state() before this fit: continue from it
            self._resumed = False
            if self.stopped_epoch > 0:  # the checkpointed run had already stopped here
                self.model.stop_training = True
        else:
            self.wait, self._best, self.best_weights, self.stopped_epoch = 0, math.inf, None, 0
        self._warned = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            if not self._warned:
                self._warned = True
                warnings.warn(f"Early stopping conditioned on metric `{self.monitor}` which is not available. "
                              f"Available metrics are: {','.join(map(str, logs))}", UserWarning, stacklevel=2)
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()  # Keras: something to restore if nothing ever improves
        self.wait += 1
        signed = self.sign * value
        if self._improves(signed, self._best):
            self._best = signed
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improves(signed, self.sign * self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:  # Keras: stop after `patience` epochs without improvement
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print("Restoring model weights from the end of the best epoch.")
            self.model.set_weights(self.best_weights)

    def get_state(self):
        """{'wait', 'best' (signed: smaller is better), 'stopped_epoch', 'best_weights' ({'0': array, ...} or None)}."""
        weights = None if self.best_weights is None else {str(i): w for i, w in enumerate(self.best_weights)}
        return {"wait": int(self.wait), "best": float(self._best), "stopped_epoch": int(self.stopped_epoch),
                "best_weights": weights}

    def set_state(self, state):
        """Continue from ``state`` (as :meth:`get_state` gives) in the next ``fit``; all or nothing.

        Raises:
            ValueError: a field is missing or invalid (named), or the best weights do not fit the model.
        """
        where = "EarlyStopping.set_state"
        if not isinstance(state, dict):
            raise ValueError(f"{where}: expected a dict, got {type(state).__name__}")
        for key in ("wait", "stopped_epoch"):
            v = state.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{where}: {key} must be a non-negative integer, got {v!r}")
        best = state.get("best")
        if isinstance(best, bool) or not isinstance(best, (int, float, np.integer, np.floating)) \
                or math.isnan(best) or best == -math.inf:
            raise ValueError(f"{where}: best must be a number (or inf before the first epoch), got {best!r}")
        weights = state.get("best_weights")
        if weights is not None:
            if not isinstance(weights, dict) or sorted(weights) != sorted(str(i) for i in range(len(weights))):
                raise ValueError(f"{where}: best_weights must be None or {{'0': array, '1': array, ...}}")
            weights = [np.asarray(weights[str(i)]) for i in range(len(weights))]
            model = getattr(self, "model", None)
            if model is not None:
                from npcnn import saving

                expected = [(f"best weight {name}", a.shape, a.dtype) for name, a, _ in saving.weight_entries(model)]
                weights = [a.copy() for a in saving.check_weight_list(weights, expected, where)]
        self.wait, self._best, self.stopped_epoch = int(state["wait"]), float(best), int(state["stopped_epoch"])
        self.best_weights = weights
        self._resumed = True


# --------------------------------------------------------------------------- per-layer norms


def _norm(a):
    """L2 (Frobenius) norm in float64; None for None."""
    if a is None:
        return None
    a = np.asarray(a, dtype=np.float64)
    return float(np.sqrt(np.sum(a * a)))


class GradientNormLogger(Callback):
    """Logs per-layer gradient and weight norms into each epoch's logs (and so into ``History``).

    For every parameter it adds two keys per epoch:

    * ``'grad_norm/<layer>/<param>'``: the L2 norm of d loss / d param, averaged over the epoch's batches
      (read from ``layer.grads`` after each training step), or, with ``probe=(x, y)``, measured on that
      fixed batch at the end of the epoch with ``model.trace`` (comparable from epoch to epoch);
    * ``'weight_norm/<layer>/<param>'``: the L2 norm of the parameter at the end of the epoch.

    Gradient norms that shrink by orders of magnitude from the last layer to the first suggest vanishing
    gradients; ones that grow epoch after epoch, exploding ones. Keys containing '/' are kept out of the
    progress bar; read them from ``history.history`` or plot them with ``examples/plot_history.py``.
    Place it before a :class:`npcnn.checkpoint.TrainingCheckpoint` in ``callbacks`` so that the checkpoint's
    history holds the norms too.

    Args:
        probe: optional (x, y) batch to measure the gradients on, with ``model.trace``.
        weights: also log the weight norms (default True).

    Example::

        history = model.fit(x, y, epochs=5, callbacks=[GradientNormLogger()])
        history.history['grad_norm/dense_1/kernel']
    """

    def __init__(self, probe=None, weights=True):
        if probe is not None and (not isinstance(probe, (tuple, list)) or len(probe) != 2):
            raise ValueError("GradientNormLogger: probe must be a tuple (x, y) of one batch")
        self.probe = probe
        self.weights = bool(weights)
        self._sums, self._batches = {}, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._sums, self._batches = {}, 0

    def on_train_batch_end(self, batch, logs=None):
        if self.probe is not None:
            return
        for layer in self.model.layers:
            for key in layer.params:
                g = layer.grads.get(key)
                if g is not None:
                    name = f"grad_norm/{layer.name}/{key}"
                    self._sums[name] = self._sums.get(name, 0.0) + _norm(g)
        self._batches += 1

    def epoch_norms(self):
        """The norms of the epoch so far: {'grad_norm/<layer>/<param>': float, 'weight_norm/...': float}."""
        norms = {}
        if self.probe is not None:
            for rec in self.model.trace(*self.probe):
                norms.update({f"grad_norm/{rec.name}/{k}": v for k, v in rec.grad_norms.items()})
        elif self._batches:
            norms.update({k: v / self._batches for k, v in self._sums.items()})
        if self.weights:
            for layer in self.model.layers:
                norms.update({f"weight_norm/{layer.name}/{k}": _norm(p) for k, p in layer.params.items()})
        return norms

    def on_epoch_end(self, epoch, logs=None):
        norms = self.epoch_norms()
        if logs is not None:
            logs.update(norms)
        # When History runs before this callback it has already recorded this epoch's logs without
        # these keys: add them to it directly (only if it has not recorded them itself).
        history = getattr(self.model, "history", None)
        if history is not None and hasattr(history, "history") and history.epoch:
            done = len(history.epoch)
            for k, v in norms.items():
                values = history.history.setdefault(k, [])
                if len(values) < done:
                    values.extend([math.nan] * (done - 1 - len(values)))
                    values.append(float(v))


# --------------------------------------------------------------------------- learning rates, files (issue 13)


def _finite_real(value):
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
        and math.isfinite(value)


def _current_lr(model):
    """The model's optimizer's learning rate now (a float), or None without a model or optimizer."""
    opt = getattr(model, "optimizer", None) if model is not None else None
    return None if opt is None else float(opt.learning_rate)


def _check_lr_state(state, where, keys):
    """Raise ValueError unless ``state`` is a dict with the non-negative int ``keys`` and a learning_rate
    that is None or a positive finite number."""
    if not isinstance(state, dict):
        raise ValueError(f"{where}: expected a dict, got {type(state).__name__}")
    for key in keys:
        v = state.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{where}: {key} must be a non-negative integer, got {v!r}")
    lr = state.get("learning_rate")
    if lr is not None and not (_finite_real(lr) and lr > 0):
        raise ValueError(f"{where}: learning_rate must be None or a positive finite number, got {lr!r}")


def _restore_lr(model, lr):
    """Put a saved learning rate back into the model's optimizer (not when it follows a schedule)."""
    opt = getattr(model, "optimizer", None)
    if lr is not None and opt is not None and getattr(opt, "schedule", None) is None:
        opt.learning_rate = lr


class LearningRateScheduler(Callback):
    """Sets the learning rate at the start of every epoch to ``schedule(epoch, lr)`` (Keras's callback).

    Args:
        schedule: a function ``(epoch, lr) -> new lr`` (epoch counts from 0, lr is the current rate), or
            ``(epoch) -> new lr``.
        verbose: 1 prints the new rate each epoch.
    Raises (during fit):
        ValueError: the schedule returned something other than a positive finite number (names the epoch).
        TypeError: the optimizer follows a LearningRateSchedule (its rate cannot be set).

    Each epoch's logs get ``'learning_rate'`` (so ``history.history['learning_rate']`` has it). State for
    checkpoints: the current rate, so a resumed run gives ``schedule`` the same ``lr``.
    """

    def __init__(self, schedule, verbose=0):
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be a function (epoch, lr) -> lr, got {schedule!r}")
        self.schedule = schedule
        self.verbose = verbose
        self._two_args = _takes_two_args(schedule)
        self._resumed_lr = None

    def on_train_begin(self, logs=None):
        if self._resumed_lr is not None:
            _restore_lr(self.model, self._resumed_lr)
            self._resumed_lr = None

    def on_epoch_begin(self, epoch, logs=None):
        lr = _current_lr(self.model)
        new = self.schedule(epoch, lr) if self._two_args else self.schedule(epoch)
        if not (_finite_real(new) and new > 0):
            raise ValueError(f"LearningRateScheduler: the schedule returned {new!r} for epoch {epoch}; it must "
                             "return a positive finite float")
        self.model.optimizer.learning_rate = float(new)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(new)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _current_lr(self.model)

    def get_state(self):
        """{'learning_rate': the optimizer's current rate (None before a model is set)}."""
        lr = _current_lr(getattr(self, "model", None))
        return {"learning_rate": lr if lr is not None else self._resumed_lr}

    def set_state(self, state):
        """The next ``fit`` starts from the saved rate. Raises ValueError for an invalid state (nothing changes)."""
        _check_lr_state(state, "LearningRateScheduler.set_state", ())
        lr = state.get("learning_rate")
        self._resumed_lr = None if lr is None else float(lr)


def _takes_two_args(fn):
    """Whether ``fn`` can be called with two positional arguments (Keras's (epoch, lr) schedule)."""
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(0, 0.1)
        return True
    except TypeError:
        return False


def _monitor_mode(mode, monitor, owner):
    if not isinstance(monitor, str):
        raise TypeError(f"{owner}: monitor must be the name of a metric, got {monitor!r}")
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"{owner}: unknown mode {mode!r}" + did_you_mean(mode, _MODES))
    if mode == "auto":
        mode = "max" if "acc" in monitor or monitor.startswith("fmeasure") else "min"
    return mode


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has stopped improving (Keras's callback).

    After each epoch: in cooldown, the cooldown counter drops by one and ``wait`` is reset; a value better
    than ``best`` by more than ``min_delta`` becomes ``best`` and resets ``wait``; otherwise (not in
    cooldown) ``wait`` grows, and when it reaches ``patience`` the rate becomes
    ``max(lr * factor, min_lr)`` (if lr > min_lr), ``wait`` returns to 0 and ``cooldown`` epochs of
    cooldown begin. Each epoch's logs get ``'learning_rate'`` (the rate the epoch trained with).

    Args (Keras's defaults): monitor='val_loss', factor=0.1, patience=10, verbose=0, mode='auto'
        ('max' when the name contains 'acc', else 'min'), min_delta=1e-4, cooldown=0, min_lr=0.0.
    Raises:
        ValueError: factor not in (0, 1), an unknown mode, negative patience/cooldown/min_lr, or a
            min_delta that is not a finite number.
    Warns:
        UserWarning, each epoch, when ``monitor`` is not in the logs (as Keras).

    State for checkpoints (:meth:`get_state`): best, wait, cooldown counter and the current rate; after
    :meth:`set_state` the next fit continues from them instead of starting afresh.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        owner = "ReduceLROnPlateau"
        if not _finite_real(factor) or not 0 < factor < 1:
            raise ValueError(f"{owner}: factor must be in (0, 1) (ReduceLROnPlateau does not support a factor >= 1.0)"
                             f", got {factor!r}")
        for name, v in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{owner}: {name} must be a non-negative integer, got {v!r}")
        if not _finite_real(min_delta):
            raise ValueError(f"{owner}: min_delta must be a finite number, got {min_delta!r}")
        if not _finite_real(min_lr) or min_lr < 0:
            raise ValueError(f"{owner}: min_lr must be a non-negative finite number, got {min_lr!r}")
        self.monitor = monitor
        self.mode = _monitor_mode(mode, monitor, owner)
        self.factor, self.patience, self.verbose = float(factor), int(patience), verbose
        self.min_delta, self.cooldown, self.min_lr = float(min_delta), int(cooldown), float(min_lr)
        self._resumed = False
        self._resumed_lr = None
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def _improved(self, current):
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        if self._resumed:
            self._resumed = False
            _restore_lr(self.model, self._resumed_lr)
            self._resumed_lr = None
        else:
            self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["learning_rate"] = _current_lr(self.model)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Learning rate reduction is conditioned on metric `{self.monitor}` which is not "
                          f"available. Available metrics are: {','.join(map(str, logs))}.", UserWarning,
                          stacklevel=2)
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best = float(current)
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = _current_lr(self.model)
                if old_lr > self.min_lr:
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    self.model.optimizer.learning_rate = new_lr
                    if self.verbose > 0:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0

    def get_state(self):
        """{'best' (inf/-inf before the first value), 'wait', 'cooldown_counter', 'learning_rate'}."""
        lr = _current_lr(getattr(self, "model", None))
        return {"best": float(self.best), "wait": int(self.wait), "cooldown_counter": int(self.cooldown_counter),
                "learning_rate": lr if lr is not None else self._resumed_lr}

    def set_state(self, state):
        """Continue from ``state`` in the next fit; all or nothing.

        Raises:
            ValueError: a field is missing or invalid (named).
        """
        where = "ReduceLROnPlateau.set_state"
        _check_lr_state(state, where, ("wait", "cooldown_counter"))
        best = state.get("best")
        if isinstance(best, bool) or not isinstance(best, (int, float, np.integer, np.floating)) or math.isnan(best):
            raise ValueError(f"{where}: best must be a number (or +-inf before the first epoch), got {best!r}")
        self.best, self.wait = float(best), int(state["wait"])
        self.cooldown_counter = int(state["cooldown_counter"])
        lr = state.get("learning_rate")
        self._resumed_lr = None if lr is None else float(lr)
        self._resumed = True


class ModelCheckpoint(Callback):
    """Save the model's weights (or the whole model) during training, atomically (Keras's callback).

    Args:
        filepath: the file to write; may hold ``str.format`` fields filled from the epoch (counted from 1)
            and the logs: ``'w.{epoch:02d}-{val_loss:.2f}.npz'``; with an integer save_freq also ``{batch}``.
        monitor: the log key compared when ``save_best_only`` (default 'val_loss').
        verbose: 1 prints a line per save (and per epoch without improvement).
        save_best_only: write only when ``monitor`` improves on the best value so far (strictly).
        save_weights_only: True (npcnn's default): ``model.save_weights`` (an ``.npz``); False:
            ``model.save`` (architecture, weights, compile settings and optimizer state).
        mode: 'min', 'max' or 'auto' ('max' when monitor contains 'acc', else 'min').
        save_freq: 'epoch' (after every epoch) or an integer: every that many batches.
        initial_value_threshold: the best value to beat at first (None: any value is an improvement).
    Raises:
        ValueError: a Keras-only suffix (.h5, .keras: npcnn writes .npz archives), an unknown mode or a
            bad save_freq.
        KeyError (during fit): the filepath names a field that is not in the logs (as Keras).

    Every write goes through a temporary file renamed over the target (npcnn.saving.write_npz), so a run
    killed while saving leaves the previous file whole. State for checkpoints: the best value and the batch
    counters of an integer save_freq, so a resumed run does not overwrite a better file with a worse one.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=True,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        import os

        owner = "ModelCheckpoint"
        self.filepath = os.fspath(filepath)
        if self.filepath.lower().endswith((".h5", ".hdf5", ".keras")):
            raise ValueError(f"{owner}: {self.filepath!r}: npcnn writes its own .npz archives, not Keras's "
                             ".h5/.keras files; use a name such as 'ckpt/w.{{epoch:02d}}.npz'")
        self.monitor = monitor
        self.mode = _monitor_mode(mode, monitor, owner)
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, (int, np.integer))
                                     or save_freq < 1):
            raise ValueError(f"{owner}: save_freq must be 'epoch' or a positive integer (batches), got {save_freq!r}")
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        if initial_value_threshold is not None and not _finite_real(initial_value_threshold):
            raise ValueError(f"{owner}: initial_value_threshold must be None or a finite number, got "
                             f"{initial_value_threshold!r}")
        worst = math.inf if self.mode == "min" else -math.inf
        self.best = worst if initial_value_threshold is None else float(initial_value_threshold)
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = 0
        self._current_epoch = 0

    def on_train_begin(self, logs=None):
        if not self.save_weights_only and not hasattr(self.model, "save"):
            raise ValueError("ModelCheckpoint: save_weights_only=False needs model.save, which this model lacks")

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        if batch <= self._last_batch_seen:  # a new epoch (Keras's counting)
            add = batch + 1
        else:
            add = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += add
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            self._save(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _path(self, epoch, batch, logs):
        fields = dict(logs)
        try:
            if batch is None or "batch" in fields:
                return self.filepath.format(epoch=epoch + 1, **fields)
            return self.filepath.format(epoch=epoch + 1, batch=batch + 1, **fields)
        except KeyError as e:
            raise KeyError(f'ModelCheckpoint: failed to format the filepath "{self.filepath}": no {e} in the logs '
                           f"(available: {', '.join(['epoch'] + list(map(str, fields)))})") from None

    def _write(self, path):
        from npcnn import distributed

        # under MPI rank 0 writes, and the others wait until the file is complete
        distributed.root_writes(lambda: self._write_here(path))

    def _write_here(self, path):
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)

    def _improved(self, current):
        return current < self.best if self.mode == "min" else current > self.best

    def _save(self, epoch, batch, logs):
        logs = logs or {}
        path = self._path(epoch, batch, logs)
        if not self.save_best_only:
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: saving model to {path}")
            self._write(path)
            return
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available, skipping.", UserWarning,
                          stacklevel=2)
            return
        if self._improved(current):
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {current:.5f}, "
                      f"saving model to {path}")
            self._write(path)
            self.best = float(current)
        elif self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")

    def get_state(self):
        """{'best', 'batches_since_save', 'last_batch_seen'}."""
        return {"best": float(self.best), "batches_since_save": int(self._batches_seen_since_last_saving),
                "last_batch_seen": int(self._last_batch_seen)}

    def set_state(self, state):
        """Continue from ``state``; all or nothing (ValueError naming the bad field)."""
        where = "ModelCheckpoint.set_state"
        _check_lr_state(state, where, ("batches_since_save", "last_batch_seen"))
        best = state.get("best")
        if isinstance(best, bool) or not isinstance(best, (int, float, np.integer, np.floating)) or math.isnan(best):
            raise ValueError(f"{where}: best must be a number (or +-inf before the first save), got {best!r}")
        self.best = float(best)
        self._batches_seen_since_last_saving = int(state["batches_since_save"])
        self._last_batch_seen = int(state["last_batch_seen"])


class CSVLogger(Callback):
    """Write each epoch's logs as one CSV row (Keras's callback and file layout).

    Columns: ``epoch`` (counted from 0, as Keras writes it), then the log keys sorted by name; when the
    first epoch has no ``val_`` keys, ``val_<key>`` columns are added anyway and hold ``NA`` (Keras's
    layout). Each row is flushed as it is written.

    Args:
        filename: the CSV file.
        separator: the field separator (default ',').
        append: continue an existing file (its header is kept; one is written only into an empty or new
            file); False overwrites it. Resuming a run from a checkpoint: pass append=True.
    """

    def __init__(self, filename, separator=",", append=False):
        import os

        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = bool(append)
        self.keys = None
        self.writer = None
        self.csv_file = None
        self.append_header = True

    def on_train_begin(self, logs=None):
        import os

        from npcnn import distributed

        self.keys = None
        self.writer = None
        if not distributed.writes_here():  # under MPI rank 0 writes the file
            self.csv_file = None
            return
        if self.append:
            if os.path.exists(self.filename):
                with open(self.filename, encoding="utf-8") as f:
                    self.append_header = not bool(len(f.readline()))
            mode = "a"
        else:
            mode = "w"
        self.csv_file = open(self.filename, mode, newline="", encoding="utf-8")  # noqa: SIM115 (closed at train end)

    def on_epoch_end(self, epoch, logs=None):
        import csv

        logs = logs or {}
        if self.csv_file is None:  # another rank's (under MPI)
            return

        def value(v):
            if isinstance(v, str):
                return v
            if isinstance(v, np.ndarray) and v.ndim > 0 or isinstance(v, (list, tuple)):
                return f"\"[{', '.join(map(str, np.ravel(v)))}]\""
            return float(v) if isinstance(v, (np.floating, np.integer)) else v

        if self.keys is None:
            self.keys = sorted(logs)
            if not any(k.startswith("val_") for k in self.keys):
                self.keys.extend(["val_" + k for k in self.keys])
        if self.writer is None:
            sep = self.sep

            class Dialect(csv.excel):
                delimiter = sep

            self.writer = csv.DictWriter(self.csv_file, fieldnames=["epoch"] + self.keys, dialect=Dialect)
            if self.append_header:
                self.writer.writeheader()
        row = {"epoch": epoch}
        row.update((k, value(logs.get(k, "NA"))) for k in self.keys)
        self.writer.writerow(row)
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        if self.csv_file is not None:
            self.csv_file.close()
        self.csv_file = None
        self.writer = None
