"""Tools for studying backprop: per-layer activations and gradients of one batch, gradient norms per epoch.

* :func:`trace` (also ``model.trace(x, y)``) runs one forward and one backward pass and returns one
  :class:`LayerRecord` per layer: its input shape, output (activation), the pre-activation of layers with
  an ``activation``, the loss gradient w.r.t. each of them and w.r.t. the layer's input, the parameter
  gradients, and their norms. It never changes weights or the optimizer's state, and leaves every layer
  as it found it. :func:`format_trace` prints the records as a table.
* :class:`GradientNormLogger`, a ``fit`` callback, adds per-layer gradient and weight norms to each epoch's
  logs (``'grad_norm/conv2d/kernel'``, ``'weight_norm/conv2d/kernel'``), so they land in ``History`` and
  vanishing or exploding gradients show up epoch by epoch.
* :func:`save_history` / :func:`load_history` write and read a History as JSON (for the plotting examples);
  they live in :mod:`npcnn.saving` and :class:`GradientNormLogger` in :mod:`npcnn.callbacks`, re-exported here.

(This module was ``npcnn.inspect`` before; renamed so that it no longer shadows the standard library's
``inspect``.)

Example::

    records = model.trace(x[:32], y[:32])
    print(format_trace(records))
    history = model.fit(x, y, epochs=5, callbacks=[GradientNormLogger()])
    history.history['grad_norm/conv2d/kernel']        # one float per epoch
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from npcnn.callbacks import GradientNormLogger
from npcnn.layers.base import Context, Layer, LayerState
from npcnn.saving import load_history, save_history


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
        info: what the layer's forward left for inspection (e.g. BatchNormalization's batch
            'mean' and 'variance'), copies.
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
    info: dict = field(default_factory=dict)

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
        a :class:`Trace`: a list of :class:`LayerRecord`, one per layer, in order, whose ``loss`` is the
        batch's loss (None without labels).
    Raises:
        RuntimeError: ``y`` given but the model is not compiled (no loss).

    The pass runs in training mode with its own per-call states (random layers use the fixed step
    seed 0), so weights, the optimizer state, npcnn's random generator and the layers themselves are
    left as they were; the arrays in the records are copies. Each layer runs as its op then its
    activation, even where training fuses them (Conv2D with a ReLU, conv + ReLU + pool): the same
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
    return _trace(model, x, labels)


def _has_op(layer):
    return type(layer).forward_op is not Layer.forward_op


def _trace(model, x, labels):
    plan = model.plan
    on_logits = labels is not None and plan.logits_loss
    owns = labels is not None and plan.owns_softmax  # the loss applies the last layer's softmax
    ctx = Context(True, seed=0, batch_size=len(x))
    last = len(model.layers) - 1
    records, states = Trace(), []
    out = x
    logits = None
    for i, layer in enumerate(model.layers):
        in_shape = tuple(out.shape)
        op_st, act_st = LayerState(), LayerState()
        z = None
        if layer.activation is not None:
            z = layer.forward_op(out, op_st, ctx) if _has_op(layer) else out
            y_out = layer.activation.forward_op(z, act_st, ctx)
        else:
            y_out = layer.forward_op(out, op_st, ctx)
        if i == last:
            logits = (z if layer.activation is not None else out) if owns else y_out
        records.append(LayerRecord(layer.name, type(layer).__name__, in_shape, _copy(y_out), _copy(z),
                                   info={k: _copy(v) for k, v in op_st.info.items()}))
        states.append((op_st, act_st))
        out = y_out

    if labels is not None:
        loss, d = model.loss.compute(logits, labels, logits=on_logits)
        records.loss = float(loss)
        records.classes = int(model.output_shape[-1])
        for i in range(last, -1, -1):
            layer, rec, (op_st, act_st) = model.layers[i], records[i], states[i]
            if i == last and owns and layer.activation is None:
                pass  # a Softmax layer's input is the logits: d is already d loss / d logits
            else:
                if i == last and owns:
                    dz = d  # d loss / d logits, the softmax activation's input
                else:
                    rec.grad_output = _copy(d)
                    dz = layer.activation.backward_op(d, act_st, ctx) if layer.activation is not None else d
                if layer.activation is not None:
                    rec.grad_pre_activation = _copy(dz)
                d = layer.backward_op(dz, op_st, ctx) if _has_op(layer) else dz
            rec.grad_input = _copy(d)
            rec.grads = {k: _copy(op_st.grads[k]) for k in layer.params if k in op_st.grads}
            rec.grad_norms = {k: _norm(g) for k, g in rec.grads.items()}
    for layer, rec in zip(model.layers, records):
        rec.weight_norms = {k: _norm(p) for k, p in layer.params.items()}
    return records


class Trace(list):
    """The :class:`LayerRecord` of each layer, in order, plus the batch's ``loss`` (None without labels)
    and the number of ``classes`` (at initialisation the cross-entropy is about ln(classes))."""

    loss = None
    classes = None


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
    loss = getattr(records, "loss", None)
    if loss is not None:
        classes = getattr(records, "classes", None)
        chance = f" (ln {classes} = {math.log(classes):.4f}: the loss of a uniform guess)" if classes else ""
        lines.append(f"loss {loss:.4f}{chance}")
    return "\n".join(lines)


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


__all__ = ["LayerRecord", "Trace", "trace", "format_trace", "GradientNormLogger", "gradient_norms", "save_history",
           "load_history"]
