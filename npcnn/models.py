"""Sequential: a Keras-compatible stack of layers that owns the training loop.

Data flows one way: ``forward`` through the layers, the loss, ``backward``
through the layers in reverse (each fills its ``grads``), then the optimizer
updates every parameter in place.
"""

from __future__ import annotations

import os
import re
import zipfile
from zlib import error as zlib_error

import numpy as np

from npcnn import callbacks as cbks
from npcnn import kernels as K
from npcnn import losses as losses_mod
from npcnn import optimizers as optimizers_mod
from npcnn import parallel
from npcnn.layers.base import Layer, _check_input_shape, check_weight_list
from npcnn.layers.convolutional import Conv2D
from npcnn.layers.core import Softmax
from npcnn.layers.pooling import MaxPooling2D
from npcnn.utils import (
    NotBuiltError,
    NotCompiledError,
    atomic_write,
    check_verbose,
    did_you_mean,
    get_rng,
    positive_int,
)

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
        try:
            shape = tuple(input_shape)
        except TypeError:
            raise TypeError(f"build: input_shape must be a tuple such as (None, 32, 32, 3), got {input_shape!r}") \
                from None
        if shape and shape[0] is None:
            shape = shape[1:]
        if not self.layers:
            raise NotBuiltError("build: the model has no layers; add some with model.add(...)")
        self.input_shape = _check_input_shape(shape, "build")
        try:
            self._build_from(0)
        except Exception:
            self.input_shape = None
            raise

    def _build_from(self, start):
        shape = self.input_shape if start == 0 else self.layers[start - 1].output_shape
        for layer in self.layers[start:]:
            if layer.built and tuple(layer.built_input_shape) != tuple(shape):
                raise ValueError(
                    f"layer {layer.name!r} ({type(layer).__name__}) was built for inputs of shape "
                    f"{layer.built_input_shape}, but here it receives {tuple(shape)}"
                )
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
        """Copy a list of arrays (Keras order and layouts) into the model.

        Raises:
            ValueError: wrong count, shapes or NaN/Inf values; every mismatch is listed by layer,
                and nothing is changed.
            TypeError: not a list of numeric arrays.
        """
        self._require_built("set_weights")
        expected = [(f"layer {layer.name!r} {key}", p.shape)
                    for layer in self.layers for key, p in layer.params.items()]
        arrays = check_weight_list(weights, expected, "set_weights")
        for p, w in zip(self.params, arrays):
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
        """Read weights written by :meth:`save_weights`; never unpickles; lists every mismatch by layer.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is truncated, not an .npz archive, holds pickled objects, or its
                arrays do not match the model (every mismatch listed by layer). The file is named;
                nothing is changed.
        """
        self._require_built("load_weights")
        filepath = os.fspath(filepath)
        stored = read_npz(filepath, "load_weights", "an npcnn weights file (.npz written by save_weights)")
        self._assign_weight_dict(stored, f"load_weights({filepath!r})")

    def _assign_weight_dict(self, stored, where):
        current = self._weight_dict()
        problems = []
        for key, p in current.items():
            if key not in stored:
                problems.append(f"missing {key} (shape {p.shape})")
            elif stored[key].shape != p.shape:
                problems.append(f"{key}: expected shape {p.shape}, got {stored[key].shape}")
            elif stored[key].dtype.kind not in "biuf":
                problems.append(f"{key}: expected numbers, got dtype {stored[key].dtype}")
            elif not np.isfinite(stored[key]).all():
                problems.append(f"{key}: contains NaN or Inf")
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

        A last line gives the memory of the Conv2D layers' im2col columns at ``batch_size``
        (float32), and the scratch buffers a training step keeps besides (on the Numba backend:
        the columns' gradients, the ReLU-masked and pooling gradients, the conv + pool op's
        outputs, the argmax indices; see :meth:`_workspace_bytes`).
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
        im2col, train = self._workspace_bytes(batch_size)
        rows += [f"Total params: {total:,} ({_bytes(total * 4)})",
                 f"Trainable params: {total:,} ({_bytes(total * 4)})",
                 "Non-trainable params: 0 (0.00 B)",
                 f"im2col columns at batch {batch_size}: {_bytes(im2col)} "
                 f"(a training step keeps {_bytes(train)} more in scratch buffers)", line]
        for r in rows:
            print_fn(r)

    def _workspace_bytes(self, batch_size):
        """(im2col columns, other scratch buffers) in bytes that the layers keep between training
        steps of ``batch_size`` float32 images on the Numba backend (one thread: with several, the
        shards share these sizes out). The buffers, by the kernels that fill them:

        * Conv2D: the columns (KH*KW*C per output pixel); their gradient, except in the first
          layer (no input gradient); with a ReLU and no pooling after it, the masked gradient.
        * Conv2D + ReLU + MaxPooling2D run as one op (npcnn.kernels.fused): the conv output, the
          pooled output, the masked pooled gradient, the gradient routed back by the pooling, and
          (except in the first layer) the input gradient; the pooling's argmax indices.
        * MaxPooling2D on its own: the argmax indices.
        """
        im2col = other = 0
        shape = tuple(self.input_shape)
        layers = self.layers
        i = 0
        while i < len(layers):
            layer = layers[i]
            out = tuple(layer.output_shape)
            if isinstance(layer, Conv2D):
                pix = batch_size * out[0] * out[1]
                cols = pix * layer.kernel_size[0] * layer.kernel_size[1] * shape[-1] * 4
                im2col += cols
                other += cols * (i > 0)  # dcols
                if self._fuses_with_next(i):
                    nxt = layers[i + 1]
                    pooled = batch_size * int(np.prod(nxt.output_shape)) * 4
                    other += 2 * pix * layer.filters * 4 + 3 * pooled  # z, pool dx; p, dp masked, argmax
                    other += batch_size * int(np.prod(shape)) * 4 * (i > 0)  # dx
                    shape = tuple(nxt.output_shape)
                    i += 2
                    continue
                other += pix * layer.filters * 4 * layer._fuses_relu()  # dz
            elif isinstance(layer, MaxPooling2D):
                other += batch_size * int(np.prod(out)) * 4  # argmax (int32)
            shape = out
            i += 1
        return im2col, other

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose the optimizer ('adam', 'sgd' or an instance), the loss and the metrics (['accuracy']).

        Raises:
            ValueError: an unknown or unimplemented name (the closest valid one is suggested),
                a missing loss, or a built model whose output does not fit the loss.
            TypeError: an argument of the wrong type (e.g. metrics='accuracy' instead of a list).
        """
        optimizer = optimizers_mod.get(optimizer)
        if loss is None:
            raise ValueError("compile: loss is required, e.g. loss='sparse_categorical_crossentropy'")
        loss = losses_mod.get(loss)
        if metrics is None:
            metrics = []
        if isinstance(metrics, str) or not isinstance(metrics, (list, tuple)):
            raise TypeError(f"compile: metrics must be a list such as ['accuracy'], got {metrics!r}")
        valid = ("accuracy", "acc", "sparse_categorical_accuracy")
        for m in metrics:
            if not isinstance(m, str):
                raise TypeError(f"compile: metrics must be names such as 'accuracy', got {m!r} ({type(m).__name__})")
            if m not in valid:
                raise ValueError(f"compile: unknown metric {m!r}" + did_you_mean(m, valid))
        if self.output_shape is not None:
            self._check_output_for_loss("compile", loss)
        self.optimizer, self.loss = optimizer, loss
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
        """Run every layer. With ``logits=True`` a final softmax is skipped (outputs are logits).

        Inference (``training=False``) on the Numba backend with several threads runs in shards,
        one per thread (see :mod:`npcnn.parallel`); the model's own layers are then untouched.
        """
        if not training and isinstance(x, np.ndarray) and x.ndim >= 1:
            shards = self._shards(len(x))
            if shards > 1:
                return parallel.forward(self, x, logits, shards)
        return self._local_forward(x, training, logits)

    def _shards(self, n_images):
        """How many data-parallel shards a batch of ``n_images`` runs in (1: this thread, these layers)."""
        return parallel.shard_count(n_images) if self.built else 1

    def _fuses_with_next(self, i):
        """Whether layer i and layer i + 1 run as one conv + ReLU + max-pool op (never the last layer,
        which the softmax + cross-entropy fusion may bypass)."""
        layer = self.layers[i]
        return (i + 1 < len(self.layers) - 1 and hasattr(layer, "fuses_pool")
                and layer.fuses_pool(self.layers[i + 1]))

    def _local_forward(self, x, training=False, logits=False):
        """:meth:`forward` through this model's own layers, in this thread."""
        tail = self._softmax_tail() if logits and not getattr(self.loss, "from_logits", False) else None
        last = len(self.layers) - 1
        scratch = False  # does x live in a layer's workspace (overwritten by the next forward)?
        i = 0
        while i <= last:
            layer = self.layers[i]
            if self._fuses_with_next(i):
                x = layer.forward_pool(x, self.layers[i + 1], training)  # conv + ReLU + pool as one op
                scratch = True
                i += 2
                continue
            prev = x
            if i == last and tail == "activation":
                x = layer.forward_pre(x, training)
            elif i == last and tail == "layer":
                pass
            else:
                x = layer.forward(x, training)
            scratch = scratch and np.may_share_memory(x, prev)  # a view (Flatten) stays scratch
            i += 1
        return x.copy() if scratch else x  # what the caller gets is its own

    def backward(self, dy, logits=False):
        """Backpropagate ``dy`` (w.r.t. the output, or the logits when ``logits``) through every layer."""
        tail = self._softmax_tail() if logits and not getattr(self.loss, "from_logits", False) else None
        last = len(self.layers) - 1
        scratch = False  # does dy live in a layer's workspace (overwritten by the next backward)?
        i = last
        while i >= 0:
            layer = self.layers[i]
            prev = self.layers[i - 1] if i > 0 else None
            if getattr(prev, "_cache_pool", None) is not None:  # the forward ran prev + this pool fused
                dy = prev.backward_pool(dy, layer)
                scratch = True
                i -= 2
                continue
            before = dy
            if i == last and tail == "activation":
                dy = layer.backward_pre(dy)
            elif i == last and tail == "layer":
                pass
            else:
                dy = layer.backward(dy)
            scratch = scratch and dy is not None and np.may_share_memory(dy, before)
            i -= 1
        return dy.copy() if scratch and dy is not None else dy

    def _loss_and_grad(self, x, labels):
        """Loss and gradients (in every layer's ``grads``) for a batch already checked at the boundary.

        On the Numba backend with several threads the batch runs in data-parallel shards whose
        gradients are summed into the layers' ``grads`` (see :mod:`npcnn.parallel`).
        """
        shards = self._shards(len(x))
        if shards > 1:
            return parallel.loss_and_grad(self, x, labels, shards)
        return self._local_loss_and_grad(x, labels)

    def _local_loss_and_grad(self, x, labels, scale=1.0):
        """Loss and gradients through this model's own layers; the loss gradient is multiplied by
        ``scale`` (a shard's share n_shard / N of the batch, so shard gradients sum to the batch's)."""
        fused = self._fused
        out = self._local_forward(x, training=True, logits=fused)
        loss, dout = losses_mod.unchecked_compute(self.loss)(out, labels, logits=fused)
        if scale != 1.0:
            dout = dout * dout.dtype.type(scale)
        self.backward(dout, logits=fused)
        return float(loss), out

    def _train_step(self, x, labels, where="train_on_batch", epoch=None, step=0):
        """One update. The loss and gradients are checked for NaN/Inf *before* the optimizer runs,
        so a bad batch raises FloatingPointError and leaves the weights of the last good step."""
        loss, out = self._loss_and_grad(x, labels)
        grads = self.grads
        self._check_finite_step(loss, grads, where, epoch, step)
        self.optimizer.apply(self.params, grads)
        return loss, _correct(out, labels)

    def trace(self, x, y=None):
        """Per-layer activations and gradients for one batch (see :func:`npcnn.inspect.trace`)."""
        from npcnn.inspect import trace

        return trace(self, x, y)

    def __call__(self, x, training=False):
        """Outputs for one batch (checked like :meth:`predict`)."""
        x = self._check_x(x, "__call__")
        return self.forward(np.ascontiguousarray(x, dtype=np.float32), training=training)

    # ------------------------------------------------------------------ public loops
    def train_on_batch(self, x, y):
        """One update on one batch; returns [loss, accuracy] measured before the update."""
        self._require_compiled("train_on_batch")
        x, y = self._check_xy(x, y, "train_on_batch")
        loss, correct = self._train_step(self._batch(x, np.arange(len(x))), y, "train_on_batch")
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
            FloatingPointError: the loss or a gradient became NaN or Inf (names the epoch and batch);
                the weights are those of the last good batch, and no callback sees the bad epoch's end.
            NotCompiledError: called before ``compile`` (a RuntimeError and a ValueError).
            ValueError, TypeError: bad data or arguments (see docs/errors.md), found before any
                kernel runs: the whole of x and y is checked once per call.
        """
        self._require_compiled("fit")
        batch_size = positive_int(batch_size, "batch_size", "fit")
        epochs = positive_int(epochs, "epochs", "fit")
        verbose = check_verbose(verbose, "fit")
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)):
            raise TypeError(f"fit: initial_epoch must be a non-negative integer, got {initial_epoch!r}")
        if initial_epoch < 0:
            raise ValueError(f"fit: initial_epoch must be a non-negative integer, got {initial_epoch!r}")
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float, np.floating)):
            raise TypeError(f"fit: validation_split must be a float in [0, 1), got {validation_split!r}")
        if not 0 <= validation_split < 1:
            raise ValueError(f"fit: validation_split must be a float in [0, 1), got {validation_split!r}")
        callbacks = _check_callbacks(callbacks)
        x, y = self._check_xy(x, y, "fit")
        if validation_data is None and validation_split > 0:
            n_val = int(len(x) * validation_split)
            if n_val == 0 or n_val == len(x):
                raise ValueError(f"fit: validation_split={validation_split} of {len(x)} samples leaves an empty set")
            validation_data = (x[-n_val:], y[-n_val:])
            x, y = x[:-n_val], y[:-n_val]
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError(
                    f"fit: validation_data must be a tuple (x_val, y_val), got {type(validation_data).__name__}"
                    + (f" of length {len(validation_data)}" if isinstance(validation_data, (tuple, list)) else "")
                )
            validation_data = self._check_xy(validation_data[0], validation_data[1], "fit(validation_data)")

        n = len(x)
        steps = -(-n // batch_size)
        history = cbks.History()
        cb_list = [history]
        if verbose:
            cb_list.append(cbks.ProgbarLogger(verbose, steps=steps, epochs=epochs))
        cb_list += callbacks
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
                loss, correct = self._train_step(self._batch(x, idx), y[idx], "fit", epoch, step)
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
        verbose = check_verbose(verbose, "evaluate")
        if not _checked:
            x, y = self._check_xy(x, y, "evaluate")
        n = len(x)
        steps = -(-n // batch_size)
        fused = self._fused
        # verbose=1: a live bar on a terminal; verbose=2 (or not a terminal): one final line
        bar = cbks.Progbar(steps, live=None if verbose == 1 else False) if verbose else None
        loss_sum = correct = 0.0
        for step in range(steps):
            sl = slice(step * batch_size, (step + 1) * batch_size)
            out = self.forward(self._batch(x, sl), training=False, logits=fused)
            loss, _ = losses_mod.unchecked_compute(self.loss)(out, y[sl], logits=fused)
            loss_sum += float(loss) * len(out)
            correct += _correct(out, y[sl])
            if bar is not None:
                done = min(n, (step + 1) * batch_size)
                bar.update(step + 1, self._logs(loss_sum / done, correct / done))
        result = self._result(loss_sum / n, correct / n)
        if bar is not None:
            bar.close(self._logs(loss_sum / n, correct / n))
        return result

    def predict(self, x, batch_size=32, verbose=0):
        """Model outputs for x, in batches: (N,) + output_shape float32 (probabilities after a softmax)."""
        batch_size = positive_int(batch_size, "batch_size", "predict")
        verbose = check_verbose(verbose, "predict")
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
        x = self._check_x(x, "predict_on_batch")
        return self.predict(x, batch_size=len(x))

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

    def _check_finite_step(self, loss, grads, where, epoch, step):
        """Raise FloatingPointError if the loss or any gradient is NaN/Inf (before the update).

        One pass per tensor (``kernels.all_finite``: on the Numba backend an integer test of the
        exponent bits).
        """
        bad = None
        if not np.isfinite(loss):
            bad = f"the loss became {loss}"
        else:
            for i, g in enumerate(grads):
                if not K.all_finite(g):
                    name = [f"{layer.name}/{k}" for layer in self.layers for k in layer.params][i]
                    bad = f"the gradient of {name} became NaN or Inf (loss {loss:.6g})"
                    break
        if bad is None:
            return
        at = f"epoch {epoch + 1}, batch {step + 1}" if epoch is not None else "this batch"
        self.stop_training = True
        raise FloatingPointError(
            f"{where}: {bad} at {at}; training stopped before this update, so the weights are those of "
            "the last good batch. Lower the learning rate, scale the inputs (e.g. x / 255) or check the "
            "data for extreme values."
        )

    def _require_compiled(self, where):
        if not self.compiled:
            raise NotCompiledError(
                f"{where}: the model must be compiled first: call model.compile(optimizer='adam', "
                "loss='sparse_categorical_crossentropy', metrics=['accuracy'])"
            )

    def _require_built(self, where):
        if not self.layers:
            raise NotBuiltError(f"{where}: the model has no layers; add some with model.add(...)")
        if not self.built:
            raise NotBuiltError(
                f"{where}: the model is not built yet; give the first layer input_shape=(H, W, C) "
                "or call model.build((None, H, W, C))"
            )

    def _check_x(self, x, where):
        """x as an array of shape (N,) + input_shape with numeric dtype and finite values, or raise.

        The NaN/Inf scan runs once per call over the whole array (in chunks), never per step.
        """
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
            raise NotBuiltError(f"{where}: the model has no layers; add some with model.add(...)")
        if self.input_shape is None:
            self.build(x.shape[1:])
        expected = tuple(self.input_shape)
        if tuple(x.shape[1:]) != expected:
            if x.ndim - 1 != len(expected):
                what = f"rank {x.ndim} (batch + {x.ndim - 1} axes); expected rank {len(expected) + 1}"
                if x.ndim == len(expected):
                    what += " (a single sample? add the batch axis: x[None])"
            else:
                what = "per-sample shape " + str(tuple(x.shape[1:])) + ", expected " + str(expected)
            raise ValueError(
                f"{where}: x has shape {x.shape}, but the model expects (N,) + {expected} "
                f"(batch first, channels last): {what}"
            )
        if x.dtype.kind == "f":
            lo, hi = _value_range(x)
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError(f"{where}: x contains NaN or Inf values; clean or impute them first")
            if x.dtype.itemsize > 4 and max(-lo, hi) > np.finfo(np.float32).max:
                raise ValueError(f"{where}: x holds values beyond float32's range (|x| > 3.4e38)")
        return x

    def _check_output_for_loss(self, where, loss=None):
        loss = loss if loss is not None else self.loss
        if len(self.output_shape) != 1:
            raise ValueError(
                f"{where}: the model's output has shape {(None,) + tuple(self.output_shape)}, but "
                f"{getattr(loss, 'name', 'the loss')} needs (None, classes): add a Flatten() before the "
                "last Dense layer"
            )

    def _check_xy(self, x, y, where):
        """x as in :meth:`_check_x`; y as int64 (N,) labels in [0, classes). Checked once per call."""
        x = self._check_x(x, where)
        if y is None:
            raise ValueError(f"{where}: y (the labels) is required")
        self._check_output_for_loss(where)
        y = losses_mod.check_labels(y, len(x), self.output_shape[-1], where, "labels")
        return x, y


def _check_callbacks(callbacks):
    if callbacks is None:
        return []
    if isinstance(callbacks, cbks.Callback):
        raise TypeError("fit: callbacks must be a list of Callback instances, got a single Callback; "
                        "use callbacks=[...]")
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"fit: callbacks must be a list of Callback instances, got {type(callbacks).__name__}")
    for cb in callbacks:
        if not isinstance(cb, cbks.Callback):
            raise TypeError(f"fit: callbacks must be Callback instances, got {cb!r} ({type(cb).__name__})")
    return list(callbacks)


def read_npz(filepath, where, what):
    """Every array of the .npz ``filepath``, read with ``allow_pickle=False``.

    Raises:
        FileNotFoundError: no such file (named).
        ValueError: truncated, not an .npz archive (e.g. a lone .npy, a pickle, a text file),
            or holding object arrays; the message names the file and says what was expected.
    """
    filepath = os.fspath(filepath)
    bad = f"{where}: {filepath!r} is not {what}"
    if os.path.isdir(filepath):
        raise ValueError(f"{bad}: it is a directory")
    try:
        f = open(filepath, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: no such file: {filepath!r}") from None
    with f:  # our own handle: NumPy leaks its file when a truncated archive fails to open
        magic = f.read(4)
        if magic != b"PK\x03\x04":
            kind = "a .npy array" if magic.startswith(b"\x93NUM") else "an empty file" if not magic \
                else "not a zip archive"
            raise ValueError(f"{bad}: {kind}")
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as data:
                stored = {k: data[k] for k in data.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zlib_error) as e:
            reason = "it holds pickled objects, which npcnn never loads" if "pickle" in str(e) \
                else f"truncated or corrupt ({type(e).__name__}: {e})"
            raise ValueError(f"{bad}: {reason}") from None
    foreign = [k for k, v in stored.items() if not isinstance(v, np.ndarray)]
    if foreign:
        raise ValueError(f"{bad}: the zip archive holds non-array members {foreign}")
    return stored


def cifar10_cnn(input_shape=(32, 32, 3), filters=(32, 64, 64), units=64, classes=10, compile=True):
    """The Keras CIFAR-10 tutorial's CNN (122,570 parameters at the defaults), optionally shrunk.

    Conv2D(f1, 3x3, relu) -> MaxPooling2D(2) -> Conv2D(f2, 3x3, relu) -> MaxPooling2D(2) ->
    Conv2D(f3, 3x3, relu) -> Flatten -> Dense(units, relu) -> Dense(classes, softmax); compiled
    (when ``compile``) with 'adam', 'sparse_categorical_crossentropy' and accuracy. Inputs need
    H, W >= 18 for the third convolution to fit.
    """
    from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D

    f1, f2, f3 = filters
    model = Sequential([
        Conv2D(f1, (3, 3), activation="relu", input_shape=tuple(input_shape)),
        MaxPooling2D((2, 2)),
        Conv2D(f2, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Conv2D(f3, (3, 3), activation="relu"),
        Flatten(),
        Dense(units, activation="relu"),
        Dense(classes, activation="softmax"),
    ])
    if compile:
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _value_range(x, chunk=1 << 22):
    """(min, max) of a float array, chunk by chunk (no temporary the size of x; the whole CIFAR-10
    training set in float64 is 1.2 GB). A NaN anywhere makes both NaN, an inf makes one infinite."""
    flat = x.reshape(-1)
    lo, hi = np.inf, -np.inf
    for i in range(0, flat.size, chunk):
        part = flat[i:i + chunk]
        part_lo, part_hi = part.min(), part.max()
        if np.isnan(part_lo) or np.isnan(part_hi):  # (Python's min/max would drop a NaN)
            return np.nan, np.nan
        lo, hi = min(lo, part_lo), max(hi, part_hi)
    return lo, hi


def _correct(out, labels):
    return float(np.count_nonzero(out.argmax(axis=-1) == labels))


def _row(cols, width):
    return "".join(f" {str(c):<{w - 1}}" for c, w in zip(cols, width))


def _bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}"
        n /= 1024


__all__ = ["Sequential", "cifar10_cnn"]
