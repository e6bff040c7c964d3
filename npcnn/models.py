"""Sequential: a Keras-compatible stack of layers that owns the training loop.

Data flows one way: ``forward`` through the layers, the loss, ``backward``
through the layers in reverse (each fills its ``grads``), then the optimizer
updates every parameter in place.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
import zipfile

import numpy as np

from npcnn import callbacks as cbks
from npcnn import losses as losses_mod
from npcnn import optimizers as optimizers_mod
from npcnn.layers.base import Layer
from npcnn.layers.core import Softmax
from npcnn.utils import atomic_write, get_rng, positive_int

_NUMERIC_KINDS = "biuf"


def _snake(name):
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


class Sequential:
    """A linear stack of layers.

    Example::

        model = Sequential()
        model.add(Conv2D(32, (3, 3), activation='relu', input_shape=(32, 32, 3)))
        model.add(MaxPooling2D((2, 2)))
        model.add(Flatten())
        model.add(Dense(10, activation='softmax'))
        model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
        history = model.fit(x, y, epochs=10, validation_data=(x_val, y_val))
    """

    def __init__(self, layers=None, name="sequential"):
        self.name = name
        self.layers: list[Layer] = []
        self.input_shape = None  # per-sample shape, no batch axis
        self.output_shape = None
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self.compiled = False
        self.stop_training = False
        self.history = None
        self._name_counts = {}
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------ building
    def add(self, layer):
        """Append a layer; build it at once if the input shape is known."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects an npcnn layer, got {layer!r} ({type(layer).__name__})")
        if layer.name is None:
            base = _snake(type(layer).__name__)
            n = self._name_counts.get(base, 0)
            layer.name = base if n == 0 else f"{base}_{n}"
            self._name_counts[base] = n + 1
        if any(existing.name == layer.name for existing in self.layers):
            raise ValueError(f"Sequential.add: a layer named {layer.name!r} is already in the model")
        if not self.layers and layer.input_shape is not None:
            self.input_shape = layer.input_shape
        self.layers.append(layer)
        if self.input_shape is not None:
            self._build_from(len(self.layers) - 1)

    def build(self, input_shape):
        """Build every layer for inputs of shape ``input_shape`` (with or without a leading None)."""
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        self.input_shape = tuple(int(d) for d in shape)
        self._build_from(0)

    def _build_from(self, start):
        shape = self.input_shape if start == 0 else self.layers[start - 1].output_shape
        for layer in self.layers[start:]:
            try:
                shape = layer.build(shape) if not layer.built else layer.compute_output_shape(shape)
            except ValueError as e:
                raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}): {e}") from None
        for i, layer in enumerate(self.layers):
            layer.need_input_grad = i > 0
        self.output_shape = shape

    @property
    def built(self):
        return self.input_shape is not None and all(layer.built for layer in self.layers)

    # ------------------------------------------------------------------ weights
    @property
    def params(self):
        """Every trainable array, in Keras order (layer by layer, kernel then bias)."""
        return [p for layer in self.layers for p in layer.params.values()]

    @property
    def grads(self):
        return [layer.grads[k] for layer in self.layers for k in layer.params]

    trainable_weights = weights = params

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    def get_weights(self):
        """Copies of all weights, in Keras order and layouts (Conv2D kernel (KH, KW, C, F), Dense (D, U))."""
        return [p.copy() for p in self.params]

    def set_weights(self, weights):
        """Copy a list of arrays (Keras order and layouts) into the model; lists every mismatch."""
        self._require_built("set_weights")
        weights = list(weights)
        expected = [(layer.name, key, p.shape) for layer in self.layers for key, p in layer.params.items()]
        problems = []
        if len(weights) != len(expected):
            problems.append(f"expected {len(expected)} arrays, got {len(weights)}")
        for (lname, key, shape), w in zip(expected, weights):
            w_shape = np.shape(w)
            if w_shape != shape:
                problems.append(f"layer {lname!r} {key}: expected shape {shape}, got {w_shape}")
        if problems:
            raise ValueError("set_weights: weights do not match the model:\n  " + "\n  ".join(problems))
        for p, w in zip(self.params, weights):
            p[...] = w

    def _weight_dict(self):
        return {f"{layer.name}/{key}": p for layer in self.layers for key, p in layer.params.items()}

    def save_weights(self, filepath):
        """Write every weight to an .npz file (no pickle), atomically: temporary file, then rename."""
        self._require_built("save_weights")
        filepath = os.fspath(filepath)
        with atomic_write(filepath) as f:
            np.savez(f, **self._weight_dict())

    def load_weights(self, filepath):
        """Read weights written by :meth:`save_weights`; never unpickles; lists every mismatch by layer."""
        self._require_built("load_weights")
        filepath = os.fspath(filepath)
        try:
            with np.load(filepath, allow_pickle=False) as data:
                stored = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise FileNotFoundError(f"load_weights: no such file: {filepath!r}") from None
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
            raise ValueError(
                f"load_weights: {filepath!r} is not a readable npcnn weights file (.npz written by "
                f"save_weights): {e}"
            ) from None
        self._assign_weight_dict(stored, f"load_weights({filepath!r})")

    def _assign_weight_dict(self, stored, where):
        current = self._weight_dict()
        problems = []
        for key, p in current.items():
            if key not in stored:
                problems.append(f"missing {key} (shape {p.shape})")
            elif stored[key].shape != p.shape:
                problems.append(f"{key}: expected shape {p.shape}, got {stored[key].shape}")
        for key in stored:
            if key not in current:
                problems.append(f"unexpected {key} (shape {stored[key].shape})")
        if problems:
            raise ValueError(f"{where}: weights do not match the model:\n  " + "\n  ".join(problems))
        for key, p in current.items():
            p[...] = stored[key]

    # ------------------------------------------------------------------ summary
    def summary(self, print_fn=None, batch_size=32):
        """Print Keras's table: Layer (type) | Output Shape | Param #, then the totals.

        A last line gives the memory the im2col buffers of the Conv2D layers take
        at ``batch_size`` (float32).
        """
        self._require_built("summary")
        print_fn = print_fn or print
        width = (33, 26, 12)
        line = "_" * sum(width)
        rows = [f'Model: "{self.name}"', line,
                _row(("Layer (type)", "Output Shape", "Param #"), width), "=" * sum(width)]
        for i, layer in enumerate(self.layers):
            shape = str((None,) + tuple(layer.output_shape))
            rows.append(_row((f"{layer.name} ({type(layer).__name__})", shape, f"{layer.count_params():,}"), width))
            rows.append("=" * sum(width) if i == len(self.layers) - 1 else "")
        total = self.count_params()
        im2col = 0
        shape = self.input_shape
        for layer in self.layers:
            if hasattr(layer, "kernel_size") and hasattr(layer, "filters"):
                oh, ow = layer.output_shape[:2]
                im2col += batch_size * oh * ow * layer.kernel_size[0] * layer.kernel_size[1] * shape[-1] * 4
            shape = layer.output_shape
        rows += [f"Total params: {total:,} ({_bytes(total * 4)})",
                 f"Trainable params: {total:,} ({_bytes(total * 4)})",
                 "Non-trainable params: 0 (0.00 B)",
                 f"im2col buffers at batch {batch_size}: {_bytes(im2col)}", line]
        for r in rows:
            print_fn(r)

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose the optimizer ('adam', 'sgd' or an instance), the loss and the metrics (['accuracy'])."""
        if optimizer == "rmsprop":
            raise ValueError("compile: optimizer 'rmsprop' is not implemented in npcnn; use 'adam' or 'sgd'")
        self.optimizer = optimizers_mod.get(optimizer)
        if loss is None:
            raise ValueError("compile: loss is required, e.g. loss='sparse_categorical_crossentropy'")
        self.loss = losses_mod.get(loss)
        metrics = list(metrics or [])
        for m in metrics:
            if m not in ("accuracy", "acc", "sparse_categorical_accuracy"):
                from npcnn.utils import did_you_mean

                raise ValueError(f"compile: unknown metric {m!r}" + did_you_mean(m, ("accuracy",)))
        self.metrics = ["accuracy" if m in ("acc", "accuracy") else m for m in metrics]
        self.compiled = True

    def _softmax_tail(self):
        """How a final softmax is fused with the loss: 'activation', 'layer' or None."""
        last = self.layers[-1]
        if isinstance(last.activation, Softmax):
            return "activation"
        if isinstance(last, Softmax):
            return "layer"
        return None

    @property
    def _fused(self):
        """True when the loss sees logits (from_logits=True, or a final softmax fused with the CE)."""
        return getattr(self.loss, "from_logits", False) or self._softmax_tail() is not None

    # ------------------------------------------------------------------ passes
    def forward(self, x, training=False, logits=False):
        """Run every layer. With ``logits=True`` a final softmax is skipped (outputs are logits)."""
        tail = self._softmax_tail() if logits and not getattr(self.loss, "from_logits", False) else None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last and tail == "activation":
                x = layer.forward_pre(x, training)
            elif i == last and tail == "layer":
                pass
            else:
                x = layer.forward(x, training)
        return x

    def backward(self, dy, logits=False):
        """Backpropagate ``dy`` (w.r.t. the output, or the logits when ``logits``) through every layer."""
        tail = self._softmax_tail() if logits and not getattr(self.loss, "from_logits", False) else None
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            layer = self.layers[i]
            if i == last and tail == "activation":
                dy = layer.backward_pre(dy)
            elif i == last and tail == "layer":
                pass
            else:
                dy = layer.backward(dy)
        return dy

    def _loss_and_grad(self, x, labels):
        fused = self._fused
        out = self.forward(x, training=True, logits=fused)
        loss, dout = self.loss.compute(out, labels, logits=fused)
        self.backward(dout, logits=fused)
        return float(loss), out

    def _train_step(self, x, labels):
        loss, out = self._loss_and_grad(x, labels)
        self.optimizer.apply(self.params, self.grads)
        return loss, _correct(out, labels)

    def trace(self, x, y=None):
        """Per-layer activations and gradients for one batch (see :func:`npcnn.inspect.trace`)."""
        from npcnn.inspect import trace

        return trace(self, x, y)

    def __call__(self, x, training=False):
        return self.forward(np.asarray(x, dtype=np.float32), training=training)

    # ------------------------------------------------------------------ public loops
    def train_on_batch(self, x, y):
        """One update on one batch; returns [loss, accuracy] measured before the update."""
        self._require_compiled("train_on_batch")
        x, y = self._check_xy(x, y, "train_on_batch")
        loss, correct = self._train_step(self._batch(x, np.arange(len(x))), y)
        self._check_finite_loss(loss, "train_on_batch", None, 0)
        return self._result(loss, correct / len(x))

    def test_on_batch(self, x, y):
        """[loss, accuracy] on one batch, no update."""
        return self.evaluate(x, y, batch_size=len(x), verbose=0)

    def fit(self, x=None, y=None, batch_size=32, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        """Train for ``epochs`` epochs; returns a :class:`npcnn.callbacks.History`.

        Args:
            x: (N, H, W, C) uint8 or float images (cast to float32 batch by batch).
            y: (N,) or (N, 1) integer labels.
            batch_size: samples per update (the last batch may be smaller).
            verbose: 0 silent, 1 progress bar (one line per epoch when not a terminal), 2 one line per epoch.
            validation_split: fraction of the *last* samples held out before shuffling (as Keras).
            validation_data: (x_val, y_val) evaluated after each epoch.
            shuffle: a fresh permutation of the training samples every epoch.
            initial_epoch: epoch to start from (to resume a run).
        Raises:
            FloatingPointError: the loss became NaN or Inf (names the epoch and batch).
        """
        self._require_compiled("fit")
        batch_size = positive_int(batch_size, "batch_size", "fit")
        epochs = positive_int(epochs, "epochs", "fit")
        if verbose not in (0, 1, 2):
            raise ValueError(f"fit: verbose must be 0, 1 or 2, got {verbose!r}")
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) or initial_epoch < 0:
            raise ValueError(f"fit: initial_epoch must be a non-negative integer, got {initial_epoch!r}")
        x, y = self._check_xy(x, y, "fit")
        if not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
            raise ValueError(f"fit: validation_split must be a float in [0, 1), got {validation_split!r}")
        if validation_data is None and validation_split > 0:
            n_val = int(len(x) * validation_split)
            if n_val == 0 or n_val == len(x):
                raise ValueError(f"fit: validation_split={validation_split} of {len(x)} samples leaves an empty set")
            validation_data = (x[-n_val:], y[-n_val:])
            x, y = x[:-n_val], y[:-n_val]
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("fit: validation_data must be a tuple (x_val, y_val)")
            validation_data = self._check_xy(validation_data[0], validation_data[1], "fit(validation_data)")

        n = len(x)
        steps = -(-n // batch_size)
        history = cbks.History()
        cb_list = [history]
        if verbose:
            cb_list.append(cbks.ProgbarLogger(verbose, steps=steps, epochs=epochs))
        cb_list += list(callbacks or [])
        cb = cbks.CallbackList(cb_list, self)
        self.history = history
        self.stop_training = False
        cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            cb.on_epoch_begin(epoch)
            order = get_rng().permutation(n) if shuffle else np.arange(n)
            seen = loss_sum = correct_sum = 0.0
            logs = {}
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                if shuffle:
                    idx = np.sort(idx)  # same batch content; sorted reads are faster
                cb.on_train_batch_begin(step)
                loss, correct = self._train_step(self._batch(x, idx), y[idx])
                self._check_finite_loss(loss, "fit", epoch, step)
                seen += len(idx)
                loss_sum += loss * len(idx)
                correct_sum += correct
                logs = self._logs(loss_sum / seen, correct_sum / seen)
                cb.on_train_batch_end(step, logs)
                if self.stop_training:
                    break
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=batch_size, verbose=0, _checked=True)
                logs.update({"val_" + k: v for k, v in zip(self._metric_names(), val)})
            cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cb.on_train_end()
        return history

    def evaluate(self, x=None, y=None, batch_size=32, verbose=1, _checked=False):
        """Loss and accuracy over (x, y) in batches; returns [loss, accuracy] (or loss alone without metrics)."""
        self._require_compiled("evaluate")
        batch_size = positive_int(batch_size, "batch_size", "evaluate")
        if not _checked:
            x, y = self._check_xy(x, y, "evaluate")
        n = len(x)
        steps = -(-n // batch_size)
        fused = self._fused
        bar = cbks.Progbar(steps, live=None) if verbose == 1 else None
        loss_sum = correct = 0.0
        for step in range(steps):
            sl = slice(step * batch_size, (step + 1) * batch_size)
            out = self.forward(self._batch(x, sl), training=False, logits=fused)
            loss, _ = self.loss.compute(out, y[sl], logits=fused)
            loss_sum += float(loss) * len(out)
            correct += _correct(out, y[sl])
            if bar is not None:
                bar.update(step + 1, self._logs(loss_sum / min(n, (step + 1) * batch_size), correct / min(n, (step + 1) * batch_size)))
        result = self._result(loss_sum / n, correct / n)
        if bar is not None:
            bar.close(self._logs(loss_sum / n, correct / n))
        elif verbose == 2:
            print(f"{steps}/{steps}{cbks.format_logs(self._logs(loss_sum / n, correct / n))}")
        return result

    def predict(self, x, batch_size=32, verbose=0):
        """Model outputs for x, in batches: (N,) + output_shape float32 (probabilities after a softmax)."""
        batch_size = positive_int(batch_size, "batch_size", "predict")
        x = self._check_x(x, "predict")
        steps = -(-len(x) // batch_size)
        out = np.empty((len(x),) + tuple(self.output_shape), dtype=np.float32)
        bar = cbks.Progbar(steps) if verbose == 1 else None
        for step in range(steps):
            sl = slice(step * batch_size, (step + 1) * batch_size)
            out[sl] = self.forward(self._batch(x, sl), training=False)
            if bar is not None:
                bar.update(step + 1, {})
        if bar is not None:
            bar.close({})
        return out

    def predict_on_batch(self, x):
        return self.predict(x, batch_size=max(len(x), 1))

    # ------------------------------------------------------------------ helpers
    def _metric_names(self):
        return ["loss"] + list(self.metrics)

    def _logs(self, loss, acc):
        logs = {"loss": loss}
        if "accuracy" in self.metrics:
            logs["accuracy"] = acc
        return logs

    def _result(self, loss, acc):
        return [loss, acc] if self.metrics else loss

    @staticmethod
    def _batch(x, idx):
        return np.ascontiguousarray(x[idx], dtype=np.float32)

    def _check_finite_loss(self, loss, where, epoch, step):
        if not np.isfinite(loss):
            at = f"epoch {epoch + 1}, batch {step + 1}" if epoch is not None else "this batch"
            self.stop_training = True
            raise FloatingPointError(
                f"{where}: the loss became {loss} at {at}; training stopped (weights are no longer usable). "
                "Lower the learning rate, scale the inputs (e.g. x / 255) or check the data for extreme values."
            )

    def _require_compiled(self, where):
        if not self.compiled:
            raise RuntimeError(
                f"{where}: the model must be compiled first: call model.compile(optimizer='adam', "
                "loss='sparse_categorical_crossentropy', metrics=['accuracy'])"
            )

    def _require_built(self, where):
        if not self.layers:
            raise RuntimeError(f"{where}: the model has no layers; add some with model.add(...)")
        if not self.built:
            raise RuntimeError(
                f"{where}: the model is not built yet; give the first layer input_shape=(H, W, C) "
                "or call model.build((None, H, W, C))"
            )

    def _check_x(self, x, where):
        if x is None:
            raise ValueError(f"{where}: x is required")
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception as e:  # ragged lists and the like
                raise TypeError(f"{where}: x must be a numeric array, could not convert it: {e}") from None
        if x.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"{where}: x must hold numbers (uint8 or float), got dtype {x.dtype}")
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(f"{where}: x is empty (shape {x.shape}); pass at least one sample")
        if not self.layers:
            raise RuntimeError(f"{where}: the model has no layers; add some with model.add(...)")
        if self.input_shape is None:
            self.build(x.shape[1:])
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(
                f"{where}: x has shape {x.shape}, but the model expects (N,) + {tuple(self.input_shape)} "
                f"(batch first, channels last: N, H, W, C)"
            )
        if x.dtype.kind == "f" and not _all_finite(x):
            raise ValueError(f"{where}: x contains NaN or Inf values; clean or impute them before training")
        return x

    def _check_xy(self, x, y, where):
        x = self._check_x(x, where)
        if y is None:
            raise ValueError(f"{where}: y (the labels) is required")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(
                f"{where}: labels must have shape (N,) or (N, 1) of class indices, got shape {y.shape}"
                + (" (one-hot labels? use y.argmax(axis=1))" if y.ndim == 2 else "")
            )
        if len(y) != len(x):
            raise ValueError(f"{where}: x and y have different lengths: {len(x)} samples and {len(y)} labels")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                raise ValueError(f"{where}: labels must be integer class indices, got non-integer values")
        elif y.dtype.kind not in "iub":
            raise TypeError(f"{where}: labels must be integer class indices, got dtype {y.dtype}")
        y = y.astype(np.int64)
        classes = self.output_shape[-1]
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            raise ValueError(
                f"{where}: labels must be in [0, {classes}) for a model with {classes} outputs; "
                f"got values from {lo} to {hi}"
            )
        return x, y


def _all_finite(x, chunk=1 << 22):
    flat = x.reshape(-1)
    return all(np.isfinite(flat[i:i + chunk]).all() for i in range(0, flat.size, chunk))


def _correct(out, labels):
    return float(np.count_nonzero(out.argmax(axis=-1) == labels))


def _row(cols, width):
    return "".join(f" {str(c):<{w - 1}}" for c, w in zip(cols, width))


def _bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}"
        n /= 1024


__all__ = ["Sequential"]
