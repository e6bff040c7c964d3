"""Losses. Keras name: 'sparse_categorical_crossentropy'.

A loss returns ``(value, gradient)`` from ``compute(y_pred, labels, logits)``:
when ``logits`` is true, ``y_pred`` holds logits and the fused, stable
softmax-cross-entropy is used (gradient (p - onehot)/N); otherwise ``y_pred``
holds probabilities, clipped to [1e-7, 1 - 1e-7] as Keras does.
"""

from __future__ import annotations

import numpy as np

from npcnn import kernels as K
from npcnn.utils import lookup


class Loss:
    """Base class: ``compute(y_pred, labels, logits) -> (loss, dy_pred)``; ``__call__(y_true, y_pred)`` like Keras.

    ``compute`` and ``__call__`` validate their arguments (shapes, dtypes, label range) before any
    kernel runs. Subclasses implement ``_compute``, which trusts its arguments: the model calls
    it once per step after checking the whole data set once per ``fit``/``evaluate`` call.
    """

    name = "loss"

    def compute(self, y_pred, labels, logits=False):
        """Validate, then ``(loss, d loss / d y_pred)``. y_pred (N, K) float; labels (N,) ints in [0, K)."""
        y_pred, labels = check_sparse_targets(y_pred, labels, f"{type(self).__name__}.compute")
        return self._compute(y_pred, labels, logits)

    def _compute(self, y_pred, labels, logits=False):
        raise NotImplementedError

    def __call__(self, y_true, y_pred):
        """Keras's order (labels first); returns the mean loss."""
        y_pred, labels = check_sparse_targets(y_pred, y_true, type(self).__name__, label_name="y_true")
        return self._compute(y_pred, labels, logits=getattr(self, "from_logits", False))[0]


def unchecked_compute(loss):
    """The per-step entry point of ``loss``: ``_compute`` when it has one, else its own ``compute``."""
    if type(loss)._compute is not Loss._compute:
        return loss._compute
    return loss.compute


def check_sparse_targets(y_pred, labels, where, label_name="labels"):
    """Return ``(y_pred, labels)`` as a float (N, K) array and int64 (N,) labels in [0, K), or raise.

    Labels may be (N,) or (N, 1), integers or integer-valued floats.
    """
    y_pred = np.asarray(y_pred)
    if y_pred.dtype.kind not in "f":
        if y_pred.dtype.kind not in "biu":
            raise TypeError(f"{where}: y_pred must hold floats, got dtype {y_pred.dtype}")
        y_pred = y_pred.astype(np.float32)
    if y_pred.ndim != 2 or y_pred.shape[0] == 0 or y_pred.shape[1] == 0:
        raise ValueError(
            f"{where}: y_pred must have shape (N, classes) with N, classes >= 1, got shape {y_pred.shape}"
        )
    n, k = y_pred.shape
    labels = check_labels(labels, n, k, where, label_name)
    return y_pred, labels


def check_labels(labels, n, classes, where, name="labels"):
    """``labels`` as int64 (N,) in [0, classes), or a ValueError/TypeError naming what is wrong."""
    try:
        y = np.asarray(labels)
    except Exception as e:  # ragged lists
        raise TypeError(f"{where}: {name} must be an array of class indices, could not convert it: {e}") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot labels? use y.argmax(axis=1))" if y.ndim == 2 else ""
        raise ValueError(f"{where}: {name} must have shape (N,) or (N, 1) of class indices, got shape {y.shape}{hint}")
    if len(y) != n:
        raise ValueError(f"{where}: {n} samples but {len(y)} {name}; they must have the same length")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError(f"{where}: {name} contain NaN or Inf; they must be integer class indices")
        if np.any(y != np.round(y)):
            bad = y[y != np.round(y)][0].item()
            raise ValueError(f"{where}: {name} must be integer class indices, got non-integer values such as {bad!r}")
    elif y.dtype.kind not in "iub":
        raise TypeError(f"{where}: {name} must be integer class indices, got dtype {y.dtype}")
    lo, hi = y.min(), y.max()  # compared before any cast, so huge floats cannot wrap around
    if lo < 0 or hi >= classes:
        raise ValueError(
            f"{where}: {name} must be in [0, {classes}) for {classes} classes; "
            f"got values from {_num(lo)} to {_num(hi)}"
        )
    return y.astype(np.int64)


def _num(v):
    v = v.item()
    return int(v) if isinstance(v, float) and abs(v) < 2**63 else v


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy for integer labels, averaged over the batch.

    Args:
        from_logits: if True, the model's outputs are logits (no final softmax).
    Shapes: y_pred (N, K); labels (N,) ints in [0, K).
    loss = -(1/N) sum_n log p[n, y_n];  d loss / d logits = (p - onehot(y)) / N.
    Both are finite for logits of any finite size (log-sum-exp) and for probabilities
    that underflow to 0 (clipped to [1e-7, 1 - 1e-7], as Keras does).
    """

    name = "sparse_categorical_crossentropy"

    def __init__(self, from_logits=False):
        if not isinstance(from_logits, (bool, np.bool_)):
            raise TypeError(f"SparseCategoricalCrossentropy: from_logits must be True or False, got {from_logits!r}")
        self.from_logits = bool(from_logits)

    def _compute(self, y_pred, labels, logits=False):
        if logits:
            return K.sparse_softmax_ce(y_pred, labels)
        return K.sparse_ce_from_probs(y_pred, labels)

    def __repr__(self):
        return f"SparseCategoricalCrossentropy(from_logits={self.from_logits})"


_LOSSES = {"sparse_categorical_crossentropy": SparseCategoricalCrossentropy}


def get(identifier):
    """A Loss from a name or an instance.

    Raises:
        ValueError: an unknown name (the closest valid one is suggested).
        TypeError: neither a name nor a Loss.
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        raise TypeError(f"compile: loss must be a Loss instance or a name, got the class {identifier.__name__}; "
                        f"use {identifier.__name__}()")
    return lookup(identifier, _LOSSES, "loss", "compile")()
