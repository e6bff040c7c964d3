"""Optimizers: they alone change weights, in place, from ``params`` and ``grads``.

State (moments) is keyed by the parameter array itself (its ``id``, with a
reference kept so the id cannot be reused), never by a bare name such as
'kernel' that several layers share.
"""

from __future__ import annotations

import numpy as np

from npcnn import kernels
from npcnn.utils import lookup


def _number(value, name, owner, lo=None, hi=None, lo_open=False, hi_open=True):
    """``value`` as float if it is a finite real number in the interval, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    ok = np.isfinite(v)
    if lo is not None:
        ok = ok and (v > lo if lo_open else v >= lo)
    if hi is not None:
        ok = ok and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}{')' if hi_open else ']'}"
        raise ValueError(f"{owner}: {name} must be a finite number in {interval}, got {value!r}")
    return v


class Optimizer:
    """Base class. ``apply(params, grads)`` takes two lists of arrays, same order and shapes."""

    slot_names: tuple = ()

    def __init__(self, learning_rate):
        self.learning_rate = _number(learning_rate, "learning_rate", type(self).__name__, lo=0, lo_open=True, hi=None)
        self.iterations = 0
        self._slots = {}  # id(param) -> (param, {slot_name: array})

    def _slots_for(self, p):
        entry = self._slots.get(id(p))
        if entry is None or entry[0] is not p:
            entry = (p, {name: np.zeros_like(p) for name in self.slot_names})
            self._slots[id(p)] = entry
        return entry[1]

    def apply(self, params, grads):
        """One update step: every ``params[i]`` moves using ``grads[i]`` (in place)."""
        if len(params) != len(grads):
            raise ValueError(f"{type(self).__name__}.apply: {len(params)} params but {len(grads)} grads")
        self.iterations += 1
        for p, g in zip(params, grads):
            self.update(p, g, self._slots_for(p))

    def update(self, p, g, slots):
        raise NotImplementedError

    # State for checkpoints: plain arrays in the order of ``params``.
    def get_state(self, params):
        """{'iterations': int array, 'slot{i}_{name}': array} for params in order."""
        state = {"iterations": np.array(self.iterations, dtype=np.int64)}
        for i, p in enumerate(params):
            for name, arr in self._slots_for(p).items():
                state[f"slot{i}_{name}"] = arr.copy()
        return state

    def set_state(self, params, state):
        """Restore what :meth:`get_state` returned (for the same params order and shapes).

        Everything is checked before anything is restored; every problem is listed.
        """
        owner = f"{type(self).__name__}.set_state"
        problems = []
        if "iterations" not in state or np.ndim(state["iterations"]) != 0:
            problems.append("missing the scalar 'iterations'")
        pending = []
        for i, p in enumerate(params):
            for name, arr in self._slots_for(p).items():
                key = f"slot{i}_{name}"
                if key not in state:
                    problems.append(f"missing {key} (shape {arr.shape})")
                    continue
                src = np.asarray(state[key])
                if src.shape != arr.shape:
                    problems.append(f"{key}: expected shape {arr.shape}, got {src.shape}")
                elif src.dtype.kind not in "biuf" or not np.isfinite(src).all():
                    problems.append(f"{key}: must hold finite numbers")
                else:
                    pending.append((arr, src))
        if problems:
            raise ValueError(f"{owner}: the optimizer state does not match the model:\n  " + "\n  ".join(problems))
        self.iterations = int(state["iterations"])
        for arr, src in pending:
            arr[...] = src


class SGD(Optimizer):
    """Keras's SGD: v = momentum*v - lr*g; p += v (nesterov: p += momentum*v - lr*g); plain: p -= lr*g."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        self.momentum = _number(momentum, "momentum", "SGD", lo=0, hi=1)
        self.nesterov = bool(nesterov)
        self.slot_names = ("momentum",) if self.momentum > 0 else ()

    def update(self, p, g, slots):
        lr = self.learning_rate
        if not self.momentum:
            p -= lr * g
            return
        v = slots["momentum"]
        v *= self.momentum
        v -= lr * g
        if self.nesterov:
            p += self.momentum * v - lr * g
        else:
            p += v


class Adam(Optimizer):
    """Adam with Keras's update rule (epsilon outside the bias correction).

    At step t (1-based)::

        m = m + (1 - beta_1) * (g - m)
        v = v + (1 - beta_2) * (g^2 - v)
        alpha = learning_rate * sqrt(1 - beta_2^t) / (1 - beta_1^t)
        p = p - alpha * m / (sqrt(v) + epsilon)

    epsilon (1e-7) is added to the *uncorrected* sqrt(v); the bias corrections
    are folded into the step size alpha. PyTorch instead adds its eps (1e-8) to
    sqrt(v / (1 - beta_2^t)); the two differ only while v is tiny.
    """

    slot_names = ("m", "v")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
        self.beta_1 = _number(beta_1, "beta_1", "Adam", lo=0, hi=1)
        self.beta_2 = _number(beta_2, "beta_2", "Adam", lo=0, hi=1)
        self.epsilon = _number(epsilon, "epsilon", "Adam", lo=0, lo_open=True, hi=None)

    def apply(self, params, grads):
        t = self.iterations + 1
        self._alpha = float(self.learning_rate * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t))
        super().apply(params, grads)

    def update(self, p, g, slots):
        # The formula above, in place: npcnn.kernels.optim (a NumPy twin and a fused Numba pass).
        kernels.adam_update(p, g, slots["m"], slots["v"], self.beta_1, self.beta_2, self._alpha, self.epsilon)


_OPTIMIZERS = {"adam": Adam, "sgd": SGD}


# Keras optimizers npcnn does not implement: named so the error says so instead of "unknown".
_NOT_IMPLEMENTED = ("rmsprop", "adagrad", "adadelta", "adamax", "adamw", "nadam", "ftrl", "lion")


def get(identifier):
    """An Optimizer from a name ('adam', 'sgd') or an instance.

    Raises:
        ValueError: an unknown name (the closest valid one is suggested), or a Keras optimizer
            npcnn does not implement (e.g. 'rmsprop', Keras's default).
        TypeError: neither a name nor an Optimizer.
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        raise TypeError(f"compile: optimizer must be an Optimizer instance or a name, got the class "
                        f"{identifier.__name__}; use {identifier.__name__}()")
    if isinstance(identifier, str) and identifier.lower() in _NOT_IMPLEMENTED:
        raise ValueError(f"compile: optimizer {identifier!r} is not implemented in npcnn; use 'adam' or 'sgd'")
    return lookup(identifier, _OPTIMIZERS, "optimizer", "compile")()
