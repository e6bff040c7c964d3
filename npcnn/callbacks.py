"""Callbacks, as in Keras: History, a progress bar, TerminateOnNaN, EarlyStopping.

``GradientNormLogger`` (per-layer gradient and weight norms per epoch) lives in :mod:`npcnn.inspect`
and is importable from here too.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np


class Callback:
    """Base class; override any hook. ``self.model`` is set by ``fit``."""

    def set_model(self, model):
        self.model = model

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


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto", restore_best_weights=False):
        self.monitor, self.min_delta, self.patience = monitor, abs(min_delta), patience
        if mode == "auto":
            mode = "max" if "acc" in monitor else "min"
        self.sign = 1 if mode == "min" else -1
        self.restore_best_weights = restore_best_weights

    def on_train_begin(self, logs=None):
        self.wait, self.best, self.best_weights, self.stopped_epoch = 0, math.inf, None, 0

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
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


def __getattr__(name):
    # npcnn.inspect imports this module; re-export its callback lazily to avoid a circular import.
    if name == "GradientNormLogger":
        from npcnn.inspect import GradientNormLogger

        return GradientNormLogger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
