"""Optimizers: they alone change weights, in place, from ``params`` and ``grads``.

State (moments) is keyed by the parameter array itself (its ``id``, with a
reference kept so the id cannot be reused), never by a bare name such as
'kernel' that several layers share.
"""

from __future__ import annotations

import numpy as np

from npcnn.utils import did_you_mean


class Optimizer:
    """Base class. ``apply(params, grads)`` takes two lists of arrays, same order and shapes."""

    slot_names: tuple = ()

    def __init__(self, learning_rate):
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float, np.floating)) \
                or not np.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(f"{type(self).__name__}: learning_rate must be a positive number, got {learning_rate!r}")
        self.learning_rate = float(learning_rate)
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
        """Restore what :meth:`get_state` returned (for the same params order and shapes)."""
        self.iterations = int(state["iterations"])
        for i, p in enumerate(params):
            for name, arr in self._slots_for(p).items():
                src = np.asarray(state[f"slot{i}_{name}"])
                if src.shape != arr.shape:
                    raise ValueError(f"optimizer state slot{i}_{name}: expected shape {arr.shape}, got {src.shape}")
                arr[...] = src


class SGD(Optimizer):
    """Keras's SGD: v = momentum*v - lr*g; p += v (nesterov: p += momentum*v - lr*g); plain: p -= lr*g."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
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
        for name, b in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0 <= b < 1:
                raise ValueError(f"Adam: {name} must be in [0, 1), got {b!r}")
        if not epsilon > 0:
            raise ValueError(f"Adam: epsilon must be positive, got {epsilon!r}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def apply(self, params, grads):
        t = self.iterations + 1
        self._alpha = float(self.learning_rate * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t))
        super().apply(params, grads)

    def update(self, p, g, slots):
        m, v = slots["m"], slots["v"]
        m += (1 - self.beta_1) * (g - m)
        v += (1 - self.beta_2) * (g * g - v)
        denom = np.sqrt(v)
        denom += self.epsilon
        np.divide(m, denom, out=denom)
        denom *= self._alpha
        p -= denom


_OPTIMIZERS = {"adam": Adam, "sgd": SGD}


def get(identifier):
    """An Optimizer from a name ('adam', 'sgd') or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _OPTIMIZERS:
        return _OPTIMIZERS[identifier.lower()]()
    raise ValueError(f"Unknown optimizer {identifier!r}" + did_you_mean(identifier, _OPTIMIZERS))
