"""Weight penalties (Keras's ``kernel_regularizer`` / ``bias_regularizer``): L1, L2, L1L2.

A regularizer is a penalty R(w) on one weight array. ``Dense`` and ``Conv2D`` keep theirs in
``layer.regularizers`` ({'kernel': reg, 'bias': reg}); the model's plan adds R(w) to the loss that
``fit`` and ``evaluate`` report and dR/dw to the weight's gradient (:meth:`npcnn.plan.Plan.loss_and_grad`),
so the optimizer sees d(loss + R)/dw. Each regularizer has::

    reg(w) -> float            the penalty, computed in float64
    reg.gradient(w) -> array   dR/dw, in w's dtype and shape

L1(l1):       R = l1 * sum |w|            dR/dw = l1 * sign(w)       (0 at w = 0, the subgradient)
L2(l2):       R = l2 * sum w^2            dR/dw = 2 * l2 * w
L1L2(l1, l2): R = l1 * sum |w| + l2 * sum w^2, dR/dw the sum of the two

As in Keras the penalty is added once per batch, not divided by the batch size, and it is not
scaled by the learning rate's schedule: L2(l2) with SGD shrinks w by 2 * lr * l2 * w per step.

Example::

    from npcnn import regularizers
    Dense(64, activation="relu", kernel_regularizer=regularizers.L2(1e-4))
    Conv2D(32, 3, kernel_regularizer="l2")          # L2(0.01), Keras's default
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["Regularizer", "L1", "L2", "L1L2", "l1", "l2", "l1_l2", "get"]


def _factor(value, name, owner):
    """A finite number >= 0 (Keras's check), as a float."""
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not math.isfinite(float(value)) or value < 0):
        raise ValueError(f"{owner}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


class Regularizer:
    """Base class: ``__call__(w) -> float`` (the penalty) and ``gradient(w) -> array`` (dR/dw)."""

    def __call__(self, w):
        return 0.0

    def gradient(self, w):
        return np.zeros_like(w)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


class L1(Regularizer):
    """R(w) = l1 * sum |w|; dR/dw = l1 * sign(w), 0 where w is exactly 0.

    Args:
        l1: the factor, a finite number >= 0 (Keras's default 0.01; None means the default).
    """

    def __init__(self, l1=0.01):
        self.l1 = _factor(0.01 if l1 is None else l1, "l1", "L1")

    def __call__(self, w):
        return self.l1 * float(np.sum(np.abs(np.asarray(w, dtype=np.float64))))

    def gradient(self, w):
        return np.sign(w) * w.dtype.type(self.l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    """R(w) = l2 * sum w^2; dR/dw = 2 * l2 * w.

    Args:
        l2: the factor, a finite number >= 0 (Keras's default 0.01; None means the default).
    """

    def __init__(self, l2=0.01):
        self.l2 = _factor(0.01 if l2 is None else l2, "l2", "L2")

    def __call__(self, w):
        w64 = np.asarray(w, dtype=np.float64)
        return self.l2 * float(np.sum(w64 * w64))

    def gradient(self, w):
        return w * w.dtype.type(2.0 * self.l2)

    def get_config(self):
        return {"l2": self.l2}


class L1L2(Regularizer):
    """R(w) = l1 * sum |w| + l2 * sum w^2; dR/dw = l1 * sign(w) + 2 * l2 * w.

    Args:
        l1, l2: the factors, finite numbers >= 0 (Keras's defaults 0.0 and 0.0; None means 0).
    """

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor(0.0 if l1 is None else l1, "l1", "L1L2")
        self.l2 = _factor(0.0 if l2 is None else l2, "l2", "L1L2")

    def __call__(self, w):
        w64 = np.asarray(w, dtype=np.float64)
        return self.l1 * float(np.sum(np.abs(w64))) + self.l2 * float(np.sum(w64 * w64))

    def gradient(self, w):
        t = w.dtype.type
        return np.sign(w) * t(self.l1) + w * t(2.0 * self.l2)

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


# Keras's lower-case aliases (keras.regularizers.l1 is L1, ...)
l1 = L1
l2 = L2


def l1_l2(l1=0.01, l2=0.01):
    """tf.keras's ``l1_l2(l1=0.01, l2=0.01)``: an :class:`L1L2` with both factors 0.01 by default."""
    return L1L2(l1=l1, l2=l2)


# The names get() accepts: Keras 3's class names and their snake_case forms ('l1', 'l2', 'l1l2'),
# and tf.keras's 'l1_l2' (both factors 0.01, as its l1_l2 function; Keras 3's L1L2() has 0 and 0).
_NAMES = {"l1": L1, "l2": L2, "l1l2": L1L2, "l1_l2": l1_l2}
_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}


def get(identifier, owner=None):
    """A regularizer from None, a name, a config dict or an instance (Keras's ``regularizers.get``).

    Names: 'l1' -> L1(0.01), 'l2' -> L2(0.01), 'l1_l2' -> L1L2(0.01, 0.01) (tf.keras), 'l1l2' or
    'L1L2' -> L1L2(0.0, 0.0) (Keras 3), 'L1', 'L2'. A dict is ``{'class_name': 'L2', 'config': {...}}``.
    An object is accepted when it has both ``__call__(w)`` and ``gradient(w)``.

    Returns:
        the regularizer, or None for None.
    Raises:
        ValueError: an unknown name (the valid ones are listed) or class_name.
        TypeError: an object without ``gradient`` (npcnn needs dR/dw), or another type.
    """
    where = f"{owner}: " if owner else ""
    if identifier is None:
        return None
    if isinstance(identifier, str):
        cls = _CLASSES.get(identifier) or _NAMES.get(identifier.lower())
        if cls is None:
            from npcnn.utils import did_you_mean

            raise ValueError(f"{where}unknown regularizer {identifier!r}" + did_you_mean(identifier, _NAMES))
        return cls()
    if isinstance(identifier, dict):
        cls = _CLASSES.get(identifier.get("class_name"))
        if cls is None:
            raise ValueError(f"{where}a regularizer config needs a class_name among {sorted(_CLASSES)}, "
                             f"got {identifier!r}")
        return cls.from_config(dict(identifier.get("config") or {}))
    if isinstance(identifier, type) and issubclass(identifier, Regularizer):
        return identifier()
    if callable(identifier) and callable(getattr(identifier, "gradient", None)):
        return identifier
    raise TypeError(f"{where}a regularizer is None, a name ('l1', 'l2', 'l1_l2'), a config dict or an object "
                    f"with __call__(w) and gradient(w); got {identifier!r}")
