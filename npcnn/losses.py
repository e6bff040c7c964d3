"""Losses. Keras name: 'sparse_categorical_crossentropy'.

A loss returns ``(value, gradient)`` from ``compute(y_pred, labels, logits)``:
when ``logits`` is true, ``y_pred`` holds logits and the fused, stable
softmax-cross-entropy is used (gradient (p - onehot)/N); otherwise ``y_pred``
holds probabilities, clipped to [1e-7, 1 - 1e-7] as Keras does.
"""

from __future__ import annotations

import numpy as np

from npcnn import kernels as K
from npcnn.utils import did_you_mean


class Loss:
    """Base class: ``compute(y_pred, labels, logits) -> (loss, dy_pred)``; ``__call__(y_true, y_pred)`` like Keras."""

    name = "loss"

    def compute(self, y_pred, labels, logits=False):
        raise NotImplementedError

    def __call__(self, y_true, y_pred):
        labels = np.asarray(y_true).reshape(-1).astype(np.int64)
        return self.compute(np.asarray(y_pred), labels, logits=getattr(self, "from_logits", False))[0]


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy for integer labels, averaged over the batch.

    Args:
        from_logits: if True, the model's outputs are logits (no final softmax).
    Shapes: y_pred (N, K); labels (N,) ints in [0, K).
    loss = -(1/N) sum_n log p[n, y_n];  d loss / d logits = (p - onehot(y)) / N.
    """

    name = "sparse_categorical_crossentropy"

    def __init__(self, from_logits=False):
        self.from_logits = bool(from_logits)

    def compute(self, y_pred, labels, logits=False):
        if logits:
            return K.sparse_softmax_ce(y_pred, labels)
        return K.sparse_ce_from_probs(y_pred, labels)

    def __repr__(self):
        return f"SparseCategoricalCrossentropy(from_logits={self.from_logits})"


_LOSSES = {"sparse_categorical_crossentropy": SparseCategoricalCrossentropy}


def get(identifier):
    """A Loss from a name or an instance."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _LOSSES:
        return _LOSSES[identifier.lower()]()
    raise ValueError(f"Unknown loss {identifier!r}" + did_you_mean(identifier, _LOSSES))
