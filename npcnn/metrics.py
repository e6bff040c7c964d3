"""Metrics, as Keras names them: accuracy (sparse or categorical) and top-k accuracy.

A metric counts the *hits* of a batch, ``hits(outputs, labels) -> float``: the model adds the counts
over an epoch (or an ``evaluate`` call) and divides by the number of samples, so the value reported is
the fraction of samples hit, exactly as Keras's mean of per-sample 0/1 values. ``outputs`` (N, K) are
the model's outputs or, when the loss owns the final softmax, its logits: every metric here depends
only on the order of a row's values, which the softmax keeps (see "Ties" below).

Names (strings in ``compile(metrics=[...])``, reported under the name given, as Keras does):

============================================  ======================  ==========================================
name                                          labels                  a sample is a hit when
============================================  ======================  ==========================================
'accuracy', 'acc'                             the loss's              as one of the two below, chosen by the loss
'sparse_categorical_accuracy'                 class indices (N,)      argmax(outputs) == label
'categorical_accuracy'                        one-hot rows (N, K)     argmax(outputs) == argmax(label row)
'sparse_top_k_categorical_accuracy' (k=5)     class indices (N,)      the label is among the k largest outputs
'top_k_categorical_accuracy' (k=5)            one-hot rows (N, K)     argmax(label row) is among the k largest
============================================  ======================  ==========================================

Ties. argmax takes the first of equal maxima (NumPy's and Keras's rule). Top-k follows Keras's
``in_top_k``: the label is in the top k when fewer than k classes have a *strictly* larger output, so
classes tied with the label's value at the k-th place all count as in (and a NaN output at the label
is never in). On logits the comparisons are exact; Keras compares probabilities, where two different
logits may round to one probability, so in such rare ties npcnn may count a miss where Keras counts a hit.

Objects: ``SparseTopKCategoricalAccuracy(k=3)``, ``TopKCategoricalAccuracy``, ``SparseCategoricalAccuracy``,
``CategoricalAccuracy``; each also works alone (``update_state(y_true, y_pred)``, ``result()``,
``reset_state()``). The functions of the same snake_case names return Keras's per-sample 0/1 values.
"""

from __future__ import annotations

import numpy as np

from npcnn.utils import did_you_mean


# ----------------------------------------------------------------------------- per-sample functions
def _class_of(labels):
    """Class indices (N,) from integer labels (N,)/(N, 1) or from one-hot rows (N, K) (their argmax)."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        return y.argmax(axis=1)
    return y.astype(np.int64)


def _in_top_k(outputs, classes, k):
    """(N,) bool: fewer than k entries of each row are strictly larger than the row's entry at ``classes``."""
    outputs = np.asarray(outputs)
    at_label = outputs[np.arange(len(outputs)), classes]
    larger = np.count_nonzero(outputs > at_label[:, None], axis=1)
    return (larger < k) & ~np.isnan(at_label)


def sparse_categorical_accuracy(y_true, y_pred):
    """(N,) float32: 1 where argmax(y_pred) equals the integer label."""
    return (np.asarray(y_pred).argmax(axis=-1) == _class_of(y_true)).astype(np.float32)


def categorical_accuracy(y_true, y_pred):
    """(N,) float32: 1 where argmax(y_pred) equals argmax of the one-hot label row."""
    return (np.asarray(y_pred).argmax(axis=-1) == np.asarray(y_true).argmax(axis=-1)).astype(np.float32)


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5):
    """(N,) float32: 1 where the integer label is among the k largest of y_pred (Keras's tie rule)."""
    return _in_top_k(y_pred, _class_of(y_true), _k(k, "sparse_top_k_categorical_accuracy")).astype(np.float32)


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    """(N,) float32: 1 where argmax of the one-hot label is among the k largest of y_pred (Keras's tie rule)."""
    classes = np.asarray(y_true).argmax(axis=-1)
    return _in_top_k(y_pred, classes, _k(k, "top_k_categorical_accuracy")).astype(np.float32)


def _k(k, owner):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{owner}: k must be a positive integer, got {k!r}")
    return int(k)


# ----------------------------------------------------------------------------- objects
class Metric:
    """A named count of hits per batch. Subclasses set ``label_kind`` ('sparse' or 'categorical') and
    implement :meth:`hits`."""

    label_kind = "sparse"

    def __init__(self, name):
        if not isinstance(name, str) or not name:
            raise TypeError(f"{type(self).__name__}: name must be a non-empty string, got {name!r}")
        self.name = name
        self.reset_state()

    def hits(self, outputs, labels):
        """Number of samples of the batch counted as hits (a float). outputs (N, K); labels as the loss takes."""
        raise NotImplementedError

    # Keras's stateful API, for use outside a model
    def reset_state(self):
        self._hits, self._count = 0.0, 0

    def update_state(self, y_true, y_pred):
        self._hits += self.hits(np.asarray(y_pred), np.asarray(y_true))
        self._count += len(y_pred)

    def result(self):
        """Hits / samples since the last reset (0.0 before any)."""
        return self._hits / self._count if self._count else 0.0

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SparseCategoricalAccuracy(Metric):
    """Fraction of samples whose largest output is at the integer label."""

    def __init__(self, name="sparse_categorical_accuracy"):
        super().__init__(name)

    def hits(self, outputs, labels):
        return float(np.count_nonzero(outputs.argmax(axis=-1) == _class_of(labels)))


class CategoricalAccuracy(Metric):
    """Fraction of samples whose largest output is at the largest entry of the one-hot label row."""

    label_kind = "categorical"

    def __init__(self, name="categorical_accuracy"):
        super().__init__(name)

    def hits(self, outputs, labels):
        return float(np.count_nonzero(outputs.argmax(axis=-1) == np.asarray(labels).argmax(axis=-1)))


class SparseTopKCategoricalAccuracy(Metric):
    """Fraction of samples whose integer label is among the k largest outputs (ties as Keras's in_top_k)."""

    def __init__(self, k=5, name="sparse_top_k_categorical_accuracy"):
        self.k = _k(k, type(self).__name__)
        super().__init__(name)

    def hits(self, outputs, labels):
        return float(np.count_nonzero(_in_top_k(outputs, _class_of(labels), self.k)))

    def get_config(self):
        return {"k": self.k, "name": self.name}


class TopKCategoricalAccuracy(SparseTopKCategoricalAccuracy):
    """Fraction of samples whose one-hot label's class is among the k largest outputs."""

    label_kind = "categorical"

    def __init__(self, k=5, name="top_k_categorical_accuracy"):
        super().__init__(k, name)

    def hits(self, outputs, labels):
        return float(np.count_nonzero(_in_top_k(outputs, np.asarray(labels).argmax(axis=-1), self.k)))


_BY_NAME = {
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
}
_FUNCTIONS = {
    sparse_categorical_accuracy: SparseCategoricalAccuracy,
    categorical_accuracy: CategoricalAccuracy,
    sparse_top_k_categorical_accuracy: SparseTopKCategoricalAccuracy,
    top_k_categorical_accuracy: TopKCategoricalAccuracy,
}
NAMES = ("accuracy", "acc") + tuple(_BY_NAME)


def get(identifier, label_kind="sparse", where="compile"):
    """A :class:`Metric` from a name (reported under that name), one of this module's functions, or an
    instance; 'accuracy'/'acc' mean the accuracy for ``label_kind`` (the loss's labels).

    Raises:
        ValueError: an unknown name (the closest valid one is suggested), or a metric for the other kind
            of labels than the loss takes (e.g. 'sparse_top_k_categorical_accuracy' with
            'categorical_crossentropy').
        TypeError: anything else (a class instead of an instance, a custom function).
    """
    if isinstance(identifier, Metric):
        metric = identifier
    elif isinstance(identifier, type) and issubclass(identifier, Metric):
        raise TypeError(f"{where}: metrics must be names or Metric instances, got the class {identifier.__name__}; "
                        f"use {identifier.__name__}()")
    elif isinstance(identifier, str):
        key = identifier
        if key in ("accuracy", "acc"):
            cls = CategoricalAccuracy if label_kind == "categorical" else SparseCategoricalAccuracy
        elif key in _BY_NAME:
            cls = _BY_NAME[key]
        else:
            raise ValueError(f"{where}: unknown metric {identifier!r}" + did_you_mean(identifier, NAMES))
        metric = cls(name=identifier)
    elif callable(identifier) and any(identifier is f for f in _FUNCTIONS):
        metric = _FUNCTIONS[identifier]()
    else:
        raise TypeError(f"{where}: metrics must be names such as 'accuracy' or npcnn.metrics objects, got "
                        f"{identifier!r} ({type(identifier).__name__})")
    if metric.label_kind != label_kind:
        other = {"sparse": "categorical", "categorical": "sparse"}
        suggestion = {"sparse_categorical_accuracy": "categorical_accuracy",
                      "categorical_accuracy": "sparse_categorical_accuracy",
                      "sparse_top_k_categorical_accuracy": "top_k_categorical_accuracy",
                      "top_k_categorical_accuracy": "sparse_top_k_categorical_accuracy"}
        base = {SparseCategoricalAccuracy: "sparse_categorical_accuracy", CategoricalAccuracy: "categorical_accuracy",
                SparseTopKCategoricalAccuracy: "sparse_top_k_categorical_accuracy",
                TopKCategoricalAccuracy: "top_k_categorical_accuracy"}.get(type(metric))
        hint = f"; use {suggestion[base]!r}" if base in suggestion else ""
        words = {"sparse": "integer class labels (N,)", "categorical": "one-hot labels (N, classes)"}
        raise ValueError(f"{where}: metric {metric.name!r} takes {words[metric.label_kind]}, but the loss takes "
                         f"{words[other[metric.label_kind]]}{hint}")
    return metric


__all__ = ["Metric", "SparseCategoricalAccuracy", "CategoricalAccuracy", "SparseTopKCategoricalAccuracy",
           "TopKCategoricalAccuracy", "sparse_categorical_accuracy", "categorical_accuracy",
           "sparse_top_k_categorical_accuracy", "top_k_categorical_accuracy", "get", "NAMES"]
