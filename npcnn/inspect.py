"""Tools for studying backprop: per-layer activations and gradients of one batch, gradient norms per epoch.

* :func:`trace` (also ``model.trace(x, y)``) runs one forward and one backward pass and returns one
  :class:`LayerRecord` per layer: its input shape, output (activation), the pre-activation of layers with
  an ``activation``, the loss gradient w.r.t. each of them and w.r.t. the layer's input, the parameter
  gradients, and their norms. It never changes weights or the optimizer's state, and leaves every layer
  as it found it. :func:`format_trace` prints the records as a table.
* :class:`GradientNormLogger`, a ``fit`` callback, adds per-layer gradient and weight norms to each epoch's
  logs (``'grad_norm/conv2d/kernel'``, ``'weight_norm/conv2d/kernel'``), so they land in ``History`` and
  vanishing or exploding gradients show up epoch by epoch.
* :func:`save_history` / :func:`load_history` write and read a History as JSON (for the plotting examples).

Example::

    records = model.trace(x[:32], y[:32])
    print(format_trace(records))
    history = model.fit(x, y, epochs=5, callbacks=[GradientNormLogger()])
    history.history['grad_norm/conv2d/kernel']        # one float per epoch
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from npcnn.callbacks import Callback


def _norm(a):
    """L2 (Frobenius) norm in float64; None for None."""
    if a is None:
        return None
    a = np.asarray(a, dtype=np.float64)
    return float(np.sqrt(np.sum(a * a)))


def _copy(a):
    return None if a is None else np.array(a, copy=True)


@dataclass
class LayerRecord:
    """What one layer saw and computed for one batch.

    Attributes:
        name, type: the layer's name ('conv2d_1') and class name ('Conv2D').
        input_shape: shape of the layer's input, batch axis included.
        output: the layer's output (after its activation), (N,) + output_shape.
        pre_activation: the output of the layer's own op before its activation (z in y = act(z));
            None for layers without an activation.
        grad_output: d loss / d output; None without labels, and for a final softmax that is fused with
            the cross-entropy (the loss is differentiated w.r.t. the logits instead).
        grad_pre_activation: d loss / d pre_activation (for the fused final softmax: (p - onehot) / N).
        grad_input: d loss / d input (computed for the first layer too: the input's saliency).
        grads: d loss / d params, e.g. {'kernel': ..., 'bias': ...}; empty for layers without weights.
        weight_norms, grad_norms: L2 norm of each parameter and of its gradient.
    """

    name: str
    type: str
    input_shape: tuple
    output: np.ndarray
    pre_activation: np.ndarray | None = None
    grad_output: np.ndarray | None = None
    grad_pre_activation: np.ndarray | None = None
    grad_input: np.ndarray | None = None
    grads: dict = field(default_factory=dict)
    weight_norms: dict = field(default_factory=dict)
    grad_norms: dict = field(default_factory=dict)

    @property
    def output_shape(self):
        return tuple(self.output.shape)

    @property
    def zero_fraction(self) -> float:
        """Fraction of output entries that are exactly 0 (dead ReLU units show up here)."""
        return float(np.mean(self.output == 0)) if self.output.size else 0.0

    @property
    def grad_input_norm(self):
        return _norm(self.grad_input)

    @property
    def grad_output_norm(self):
        return _norm(self.grad_output if self.grad_output is not None else self.grad_pre_activation)

    def __repr__(self):
        norms = ", ".join(f"|d{k}|={v:.3g}" for k, v in self.grad_norms.items())
        return (f"LayerRecord({self.name!r} {self.type}, {self.input_shape} -> {self.output_shape}"
                + (f", {norms}" if norms else "") + ")")


def trace(model, x, y=None):
    """Activations and gradients of every layer of ``model`` for one batch.

    Args:
        model: a built :class:`npcnn.models.Sequential` (compiled, when ``y`` is given).
        x: one batch, (N,) + input_shape (cast to float32, as ``fit`` does).
        y: (N,) integer labels, or None. With labels the model's loss is differentiated (through the
            fused softmax cross-entropy when the model ends in a softmax, exactly as ``fit`` does);
            without, only the forward pass is recorded and every gradient is None.
    Returns:
        a list of :class:`LayerRecord`, one per layer, in order.
    Raises:
        RuntimeError: ``y`` given but the model is not compiled (no loss).

    Weights, the optimizer state and each layer's own attributes (caches, ``grads``, reusable buffers) are
    left as they were; the arrays in the records are copies. A layer with an activation runs as its op
    (``forward_pre``) then the activation, even when training fuses them (Conv2D with a ReLU): the same
    values, split so that the pre-activation and its gradient can be recorded.
    """
    model._require_built("trace")
    labels = None
    if y is None:
        x = model._check_x(x, "trace")
    else:
        model._require_compiled("trace")
        x, labels = model._check_xy(x, y, "trace")
    x = np.ascontiguousarray(x, dtype=np.float32)

    saved = []
    for layer in model.layers:
        for obj in (layer, layer.activation):
            if obj is not None:
                saved.append((obj, dict(vars(obj))))
                for k, v in vars(obj).items():  # scratch buffers of its own: the layer's stay as they are
                    if "workspace" in k and isinstance(v, dict):
                        setattr(obj, k, {})
    try:
        return _trace(model, x, labels)
    finally:
        for obj, state in saved:
            vars(obj).clear()
            vars(obj).update(state)


def _trace(model, x, labels):
    fused = labels is not None and model._fused
    from_logits = getattr(model.loss, "from_logits", False)
    tail = model._softmax_tail() if fused and not from_logits else None
    last = len(model.layers) - 1
    records = []
    for layer in model.layers:
        layer.need_input_grad = True
    out = x
    logits = None
    for i, layer in enumerate(model.layers):
        in_shape = tuple(out.shape)
        z = None
        if layer.activation is not None:
            # The layer's op, then its activation, as two steps (a layer that fuses them, such as Conv2D
            # with a ReLU, computes the same y in one pass) so that z and d loss / d z can be recorded.
            z = layer.forward_pre(out, training=True)
            y_out = layer.activation.forward(z, training=True)
        else:
            y_out = layer.forward(out, training=True)
        if i == last:
            logits = z if tail == "activation" else out if tail == "layer" else y_out
        records.append(LayerRecord(layer.name, type(layer).__name__, in_shape, _copy(y_out), _copy(z)))
        out = y_out

    if labels is not None:
        _, d = model.loss.compute(logits, labels, logits=fused)
        for i in range(last, -1, -1):
            layer, rec = model.layers[i], records[i]
            if i == last and tail == "activation":
                rec.grad_pre_activation = _copy(d)
                d = layer.backward_pre(d)
            elif i == last and tail == "layer":
                pass  # the softmax layer's input is the logits: d is already d loss / d logits
            else:
                rec.grad_output = _copy(d)
                if layer.activation is not None:
                    dz = layer.activation.backward(d)
                    rec.grad_pre_activation = _copy(dz)
                    d = layer.backward_pre(dz)
                else:
                    d = layer.backward(d)
            rec.grad_input = _copy(d)
            rec.grads = {k: _copy(layer.grads[k]) for k in layer.params if k in layer.grads}
            rec.grad_norms = {k: _norm(g) for k, g in rec.grads.items()}
    for layer, rec in zip(model.layers, records):
        rec.weight_norms = {k: _norm(p) for k, p in layer.params.items()}
    return records


def format_trace(records):
    """A table of a :func:`trace`: per layer its output shape and statistics, gradient and weight norms.

    Columns: layer (type) | output shape | mean and std of the output | fraction of zeros |
    |d out| (the loss gradient w.r.t. the output, or the pre-activation for a fused softmax) | |d in| |
    per parameter |W| and |dW|.
    """
    names = [f"{r.name} ({r.type})" for r in records]
    w = max([len("layer (type)")] + [len(n) for n in names]) + 1
    s = max([len("output shape")] + [len(str(r.output_shape)) for r in records]) + 1
    head = (f"{'layer (type)':<{w}} {'output shape':<{s}} {'out mean':>9} {'out std':>9} {'zeros':>6} "
            f"{'|d out|':>9} {'|d in|':>9}  parameters |W| / |dW|")
    lines = [head, "-" * len(head)]

    def num(v):
        return f"{v:>9.3g}" if v is not None else f"{'-':>9}"

    for name, r in zip(names, records):
        params = "  ".join(
            f"{k} {r.weight_norms[k]:.3g} / " + (f"{r.grad_norms[k]:.3g}" if k in r.grad_norms else "-")
            for k in r.weight_norms)
        out = r.output.astype(np.float64)
        lines.append(f"{name:<{w}} {str(r.output_shape):<{s}} {out.mean():>9.3g} "
                     f"{out.std():>9.3g} {r.zero_fraction:>6.1%} {num(r.grad_output_norm)} "
                     f"{num(r.grad_input_norm)}  {params}".rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- the fit callback


class GradientNormLogger(Callback):
    """Logs per-layer gradient and weight norms into each epoch's logs (and so into ``History``).

    For every parameter it adds two keys per epoch:

    * ``'grad_norm/<layer>/<param>'``: the L2 norm of d loss / d param, averaged over the epoch's batches
      (read from ``layer.grads`` after each training step), or, with ``probe=(x, y)``, measured on that
      fixed batch at the end of the epoch (comparable from epoch to epoch);
    * ``'weight_norm/<layer>/<param>'``: the L2 norm of the parameter at the end of the epoch.

    Gradient norms that shrink by orders of magnitude from the last layer to the first suggest vanishing
    gradients; ones that grow epoch after epoch, exploding ones. Keys containing '/' are kept out of the
    progress bar; read them from ``history.history`` or plot them with ``examples/plot_history.py``.
    Place it before a :class:`npcnn.checkpoint.TrainingCheckpoint` in ``callbacks`` so that the checkpoint's
    history holds the norms too.

    Args:
        probe: optional (x, y) batch to measure the gradients on, with :func:`trace`.
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
            for rec in trace(self.model, *self.probe):
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
        # fit() runs History before the other callbacks, so it has already recorded this epoch's logs
        # without these keys: add them to it directly (only if it has not recorded them itself).
        history = getattr(self.model, "history", None)
        if history is not None and hasattr(history, "history") and history.epoch:
            done = len(history.epoch)
            for k, v in norms.items():
                values = history.history.setdefault(k, [])
                if len(values) < done:
                    values.extend([math.nan] * (done - 1 - len(values)))
                    values.append(float(v))


def gradient_norms(history, kind="grad_norm"):
    """{(layer, param): [one value per epoch]} from a History (or its ``.history`` dict) for ``kind``
    'grad_norm' or 'weight_norm'."""
    h = getattr(history, "history", history)
    out = {}
    for k, v in h.items():
        parts = k.split("/")
        if len(parts) == 3 and parts[0] == kind:
            out[(parts[1], parts[2])] = list(v)
    return out


# --------------------------------------------------------------------------- history files


def save_history(history, path):
    """Write a History (or a dict of per-epoch lists) to ``path`` as JSON: {'epoch': [...], 'history': {...}}."""
    h = getattr(history, "history", history)
    epochs = list(getattr(history, "epoch", range(len(next(iter(h.values()), [])))))
    data = {"epoch": [int(e) for e in epochs],
            "history": {k: [float(v) for v in vals] for k, vals in h.items()}}
    path = os.fspath(path)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, allow_nan=True)
    return path


def load_history(path):
    """Read a history: JSON written by :func:`save_history` (or a plain {'loss': [...], ...} dict), or the
    history inside a training checkpoint ``.npz`` (:mod:`npcnn.checkpoint`).

    Returns:
        the dict of per-epoch lists, like ``History.history``.
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        from npcnn.checkpoint import load_checkpoint

        return {k: list(v) for k, v in load_checkpoint(path).history.items()}
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get("history"), dict):
        data = data["history"]
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"load_history: {path!r} does not hold a history (a dict of per-epoch lists)")
    return data


__all__ = ["LayerRecord", "trace", "format_trace", "GradientNormLogger", "gradient_norms", "save_history",
           "load_history"]
