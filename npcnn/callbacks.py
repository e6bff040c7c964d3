"""Callbacks, as in Keras: History, a progress bar, TerminateOnNaN, EarlyStopping, and
GradientNormLogger (per-layer gradient and weight norms per epoch).

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
    """Stop when ``monitor`` has not improved by ``min_delta`` for more than ``patience`` epochs.

    Args:
        monitor: the key of the epoch's logs to watch (``'val_loss'``, ``'val_accuracy'``, ...).
        min_delta: the smallest change that counts as an improvement.
        patience: epochs without improvement tolerated before stopping.
        mode: 'min', 'max', or 'auto' ('max' when the name contains 'acc', else 'min').
        restore_best_weights: put back the weights of the best epoch when stopping.
    Raises:
        ValueError: an unknown ``mode`` (the closest valid one is suggested), a negative ``patience``
            or a ``min_delta`` that is not a finite number.
    Warns:
        UserWarning, once per ``fit``, when ``monitor`` is not in the epoch's logs (as Keras:
        "Early stopping conditioned on metric `val_acc` which is not available. Available metrics
        are: loss,accuracy,val_loss,val_accuracy").

    Its state (best value, wait count, stopped epoch, best weights) goes into training checkpoints
    (:meth:`get_state`); after :meth:`set_state` the next ``fit`` continues from it instead of starting
    afresh, so a resumed run stops where the uninterrupted one does.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto", restore_best_weights=False):
        if not isinstance(monitor, str):
            raise TypeError(f"EarlyStopping: monitor must be the name of a metric, got {monitor!r}")
        if not isinstance(mode, str) or mode not in _MODES:
            raise ValueError(f"EarlyStopping: unknown mode {mode!r}" + did_you_mean(mode, _MODES))
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be a non-negative integer, got {patience!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float, np.integer, np.floating)) \
                or not math.isfinite(min_delta):
            raise ValueError(f"EarlyStopping: min_delta must be a finite number, got {min_delta!r}")
        self.monitor, self.min_delta, self.patience = monitor, abs(float(min_delta)), int(patience)
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.mode = mode
        self.sign = 1 if mode == "min" else -1
        self.restore_best_weights = bool(restore_best_weights)
        self.wait, self.best, self.best_weights, self.stopped_epoch = 0, math.inf, None, 0
        self._resumed = self._warned = False

    def on_train_begin(self, logs=None):
        if self._resumed:  # set_state() before this fit: continue from it
            self._resumed = False
        else:
            self.wait, self.best, self.best_weights, self.stopped_epoch = 0, math.inf, None, 0
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
        if self.sign * value < self.best - self.min_delta:
            self.best, self.wait = self.sign * value, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait > self.patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True
                if self.restore_best_weights and self.best_weights is not None:
                    self.model.set_weights(self.best_weights)

    def get_state(self):
        """{'wait', 'best' (signed: smaller is better), 'stopped_epoch', 'best_weights' ({'0': array, ...} or None)}."""
        weights = None if self.best_weights is None else {str(i): w for i, w in enumerate(self.best_weights)}
        return {"wait": int(self.wait), "best": float(self.best), "stopped_epoch": int(self.stopped_epoch),
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
        self.wait, self.best, self.stopped_epoch = int(state["wait"]), float(best), int(state["stopped_epoch"])
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
