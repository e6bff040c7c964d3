"""Losses. Keras names: 'sparse_categorical_crossentropy' (integer labels (N,)) and
'categorical_crossentropy' (one-hot or soft labels (N, K), optional label smoothing).

A loss returns ``(value, gradient)`` from ``compute(y_pred, labels, logits)``:
when ``logits`` is true, ``y_pred`` holds logits and the fused, stable
softmax-cross-entropy is used (gradient (p - onehot)/N); otherwise ``y_pred``
holds probabilities, clipped to [1e-7, 1 - 1e-7] as Keras does.
A loss's ``label_kind`` ('sparse' or 'categorical') says which labels it takes; the model checks
its labels with :meth:`Loss.check_labels` once per call.
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
    #: the labels this loss takes: 'sparse' (class indices (N,)) or 'categorical' (one row per sample (N, K))
    label_kind = "sparse"

    def compute(self, y_pred, labels, logits=False):
        """Validate, then ``(loss, d loss / d y_pred)``. y_pred (N, K) float; labels (N,) ints in [0, K)
        (sparse losses) or (N, K) floats (categorical ones)."""
        y_pred, labels = self.check_targets(y_pred, labels, f"{type(self).__name__}.compute")
        return self._compute(y_pred, labels, logits)

    def _compute(self, y_pred, labels, logits=False):
        raise NotImplementedError

    def __call__(self, y_true, y_pred):
        """Keras's order (labels first); returns the mean loss."""
        y_pred, labels = self.check_targets(y_pred, y_true, type(self).__name__, label_name="y_true")
        return self._compute(y_pred, labels, logits=getattr(self, "from_logits", False))[0]

    def check_targets(self, y_pred, labels, where, label_name="labels"):
        """``(y_pred, labels)`` checked and converted for :meth:`_compute` (see :func:`check_sparse_targets`)."""
        if self.label_kind == "categorical":
            return check_categorical_targets(y_pred, labels, where, label_name)
        return check_sparse_targets(y_pred, labels, where, label_name)

    def check_labels(self, labels, n, classes, where, name="labels"):
        """The model's labels for ``n`` samples and ``classes`` outputs, checked once per call:
        int64 (N,) class indices (sparse) or float32 (N, classes) rows (categorical)."""
        if self.label_kind == "categorical":
            return check_categorical_labels(labels, n, classes, where, name)
        return check_labels(labels, n, classes, where, name)


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


def check_categorical_targets(y_pred, labels, where, label_name="labels"):
    """``(y_pred, labels)`` as float (N, K) arrays of one shape, or raise (see :func:`check_categorical_labels`)."""
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
    return y_pred, check_categorical_labels(labels, n, k, where, label_name, dtype=y_pred.dtype)


def check_categorical_labels(labels, n, classes, where, name="labels", dtype=np.float32):
    """``labels`` as a ``dtype`` (N, classes) array of finite numbers (one-hot rows, or any probability
    rows such as smoothed ones), or a ValueError/TypeError naming what is wrong.

    Integer class indices (N,) or (N, 1) are refused with a hint (they belong to the sparse loss)."""
    try:
        y = np.asarray(labels)
    except Exception as e:  # ragged lists
        raise TypeError(f"{where}: {name} must be an array of one-hot rows, could not convert it: {e}") from None
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{where}: {name} must hold numbers (one-hot rows), got dtype {y.dtype}")
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1 and classes != 1):
        raise ValueError(f"{where}: {name} have shape {y.shape}, but categorical_crossentropy takes one-hot labels "
                         f"of shape (N, {classes}); for class indices use loss='sparse_categorical_crossentropy', "
                         f"or one-hot encode them (np.eye({classes})[y])")
    if y.ndim != 2 or y.shape[1] != classes:
        raise ValueError(f"{where}: {name} must have shape (N, {classes}) (one-hot rows for {classes} classes), "
                         f"got shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"{where}: {n} samples but {len(y)} {name}; they must have the same length")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError(f"{where}: {name} contain NaN or Inf")
    return np.ascontiguousarray(y, dtype=dtype)


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


def _log_softmax(z):
    """Row-wise log-softmax (max subtracted first), in z's dtype."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def categorical_ce_from_logits(logits, targets):
    """Softmax + cross-entropy against rows of targets, fused and stable.

    Args:
        logits: (N, K) float. targets: (N, K), same dtype (one-hot, smoothed or any soft rows).
    Returns:
        loss: -(1/N) sum_n sum_k t[n, k] log softmax(z)[n, k] (the logits' float type),
        dlogits: (N, K) = (softmax(z) * sum_k t[n, k] - t) / N  (= (p - t) / N for rows summing to 1).
    """
    n = logits.shape[0]
    logp = _log_softmax(logits)
    loss = -(targets * logp).sum(axis=1, dtype=np.float64).mean()
    dlogits = np.exp(logp)
    dlogits *= targets.sum(axis=1, keepdims=True)
    dlogits -= targets
    dlogits /= n
    return logits.dtype.type(loss), dlogits


def categorical_ce_from_probs(probs, targets, epsilon=1e-7):
    """Cross-entropy on probabilities as Keras computes it: each row is divided by its sum, then
    clipped to [epsilon, 1 - epsilon] (the gradient is 0 where the clip is active).

    Args:
        probs: (N, K) float (positive rows). targets: (N, K), same dtype.
    Returns:
        loss: -(1/N) sum_n sum_k t[n, k] log clip(p[n, k] / S[n]) with S[n] = sum_k p[n, k],
        dprobs: (N, K) = (a - sum_k a_k q_k) / (N S), a_k = -t_k / q_k where unclipped (else 0), q = p / S.
    """
    n = probs.shape[0]
    s = probs.sum(axis=1, keepdims=True)
    q = probs / s
    clipped = np.clip(q, epsilon, 1 - epsilon)
    loss = -(targets * np.log(clipped)).sum(axis=1, dtype=np.float64).mean()
    inside = (q > epsilon) & (q < 1 - epsilon)
    a = np.where(inside, -targets / clipped, 0).astype(probs.dtype, copy=False)
    dprobs = (a - (a * q).sum(axis=1, keepdims=True)) / (n * s)
    return probs.dtype.type(loss), dprobs.astype(probs.dtype, copy=False)


class CategoricalCrossentropy(Loss):
    """Cross-entropy for one-hot (or soft) labels (N, K), averaged over the batch.

    Args:
        from_logits: if True, the model's outputs are logits (no final softmax).
        label_smoothing: in [0, 1]: the labels become ``y * (1 - label_smoothing) + label_smoothing / K``.
    Shapes: y_pred (N, K); labels (N, K).
    loss = -(1/N) sum_n sum_k y[n, k] log p[n, k];  d loss / d logits = (p - y) / N (rows of y summing to 1).
    On probabilities (from_logits=False without a final softmax the loss can own) Keras's arithmetic:
    each row divided by its sum, then clipped to [1e-7, 1 - 1e-7].
    """

    name = "categorical_crossentropy"
    label_kind = "categorical"

    def __init__(self, from_logits=False, label_smoothing=0.0):
        if not isinstance(from_logits, (bool, np.bool_)):
            raise TypeError(f"CategoricalCrossentropy: from_logits must be True or False, got {from_logits!r}")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.integer,
                                                                                  np.floating)):
            raise TypeError(f"CategoricalCrossentropy: label_smoothing must be a number in [0, 1], got "
                            f"{label_smoothing!r}")
        if not 0 <= label_smoothing <= 1:
            raise ValueError(f"CategoricalCrossentropy: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.from_logits = bool(from_logits)
        self.label_smoothing = float(label_smoothing)

    def smoothed(self, labels):
        """The labels after label smoothing (the same array when label_smoothing is 0)."""
        if not self.label_smoothing:
            return labels
        k = labels.shape[1]
        ls = self.label_smoothing
        return labels * labels.dtype.type(1 - ls) + labels.dtype.type(ls / k)

    def _compute(self, y_pred, labels, logits=False):
        targets = self.smoothed(labels.astype(y_pred.dtype, copy=False))
        if logits:
            return categorical_ce_from_logits(y_pred, targets)
        return categorical_ce_from_probs(y_pred, targets)

    def __repr__(self):
        return f"CategoricalCrossentropy(from_logits={self.from_logits}, label_smoothing={self.label_smoothing})"


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Keras's function: the per-sample losses (N,) for integer labels (no gradient)."""
    y_pred, labels = check_sparse_targets(y_pred, y_true, "sparse_categorical_crossentropy", "y_true")
    if from_logits:
        logp = _log_softmax(y_pred)
        return -logp[np.arange(len(labels)), labels]
    return -np.log(np.clip(y_pred[np.arange(len(labels)), labels], 1e-7, 1 - 1e-7))


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0):
    """Keras's function: the per-sample losses (N,) for one-hot labels (no gradient)."""
    loss = CategoricalCrossentropy(from_logits, label_smoothing)
    y_pred, labels = check_categorical_targets(y_pred, y_true, "categorical_crossentropy", "y_true")
    targets = loss.smoothed(labels)
    if from_logits:
        return -(targets * _log_softmax(y_pred)).sum(axis=1)
    q = np.clip(y_pred / y_pred.sum(axis=1, keepdims=True), 1e-7, 1 - 1e-7)
    return -(targets * np.log(q)).sum(axis=1)


_LOSSES = {"sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
           "categorical_crossentropy": CategoricalCrossentropy}


def get(identifier):
    """A Loss from a name ('sparse_categorical_crossentropy', 'categorical_crossentropy'), one of the
    functions of the same names (as Keras accepts them), or an instance.

    Raises:
        ValueError: an unknown name (the closest valid one is suggested).
        TypeError: neither a name nor a Loss.
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        raise TypeError(f"compile: loss must be a Loss instance or a name, got the class {identifier.__name__}; "
                        f"use {identifier.__name__}()")
    if identifier is sparse_categorical_crossentropy or identifier is categorical_crossentropy:
        return _LOSSES[identifier.__name__]()
    return lookup(identifier, _LOSSES, "loss", "compile")()
