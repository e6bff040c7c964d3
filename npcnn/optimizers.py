"""Optimizers: they alone change weights, in place, from ``params`` and ``grads``.

SGD, RMSprop, Adam (amsgrad) and AdamW with Keras 3's update rules, arguments and defaults; every one takes
weight_decay, clipnorm, global_clipnorm, clipvalue and a float or a :mod:`npcnn.schedules` learning rate.
The rules are written out in docs/optimizers.md; the per-element work is in :mod:`npcnn.kernels.optim`.

State (moments) is keyed by the parameter array itself (its ``id``, with a
reference kept so the id cannot be reused), never by a bare name such as
'kernel' that several layers share.
"""

from __future__ import annotations

import math

import numpy as np

from npcnn import kernels, schedules
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


def _optional_positive(value, name, owner):
    return None if value is None else _number(value, name, owner, lo=0, lo_open=True, hi=None)


class Optimizer:
    """Base class. ``apply(params, grads)`` takes two lists of arrays, same order and shapes.

    Args (every optimizer, Keras 3's names and defaults):
        learning_rate: a positive float or a :class:`npcnn.schedules.LearningRateSchedule`, evaluated
            at :attr:`iterations` (updates already applied: 0 for the first).
        weight_decay: decoupled decay (None: none): each update first does ``p -= lr * weight_decay * p``.
        clipnorm: clip each gradient to this L2 norm (``g * clipnorm / max(||g||, clipnorm)``, per array).
        global_clipnorm: clip all gradients together to this global L2 norm (one factor for all).
        clipvalue: clip every gradient element to ``[-clipvalue, clipvalue]``.
        Only one clip applies, in Keras's order: clipnorm, else global_clipnorm, else clipvalue.
    Raises:
        ValueError: a non-positive or non-finite setting, or both clipnorm and global_clipnorm.
        TypeError: a setting that is not a number (or a schedule, for learning_rate).
    """

    slot_names: tuple = ()

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        owner = type(self).__name__
        self.learning_rate = learning_rate
        self.weight_decay = None if weight_decay is None else _number(weight_decay, "weight_decay", owner, lo=0,
                                                                      hi=None)
        self.clipnorm = _optional_positive(clipnorm, "clipnorm", owner)
        self.global_clipnorm = _optional_positive(global_clipnorm, "global_clipnorm", owner)
        self.clipvalue = _optional_positive(clipvalue, "clipvalue", owner)
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise ValueError(f"{owner}: only one of clipnorm and global_clipnorm can be set, got "
                             f"clipnorm={clipnorm!r}, global_clipnorm={global_clipnorm!r}")
        self.iterations = 0
        self._slots = {}  # id(param) -> (param, {slot_name: array})

    # -------------------------------------------------------------- the learning rate
    @property
    def learning_rate(self):
        """The learning rate of the next update: the float given, or the schedule at :attr:`iterations`."""
        if self._schedule is not None:
            return float(self._schedule(self.iterations))
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        LearningRateSchedule = schedules.LearningRateSchedule
        owner = type(self).__name__
        if isinstance(value, LearningRateSchedule):
            if getattr(self, "_schedule", None) is not None or getattr(self, "_learning_rate", None) is not None:
                raise TypeError(f"{owner}: the learning rate cannot be replaced by a schedule after construction")
            self._schedule, self._learning_rate = value, None
            return
        if getattr(self, "_schedule", None) is not None:
            raise TypeError(f"{owner}: this optimizer was created with a LearningRateSchedule as its learning_rate, "
                            "hence its learning rate is not settable")
        if isinstance(value, type) and issubclass(value, LearningRateSchedule):
            raise TypeError(f"{owner}: learning_rate got the class {value.__name__}; pass an instance")
        self._schedule = None
        self._learning_rate = _number(value, "learning_rate", owner, lo=0, lo_open=True, hi=None)

    @property
    def schedule(self):
        """The :class:`npcnn.schedules.LearningRateSchedule` given as learning_rate, or None."""
        return self._schedule

    # -------------------------------------------------------------- slots and the update
    def _slots_for(self, p):
        entry = self._slots.get(id(p))
        if entry is None or entry[0] is not p:
            entry = (p, {name: np.zeros_like(p) for name in self.slot_names})
            self._slots[id(p)] = entry
        return entry[1]

    def _clip(self, grads):
        """The gradients after Keras's clipping (new arrays where a clip changes them; never in place)."""
        if self.clipnorm is not None:
            out = []
            for g in grads:
                norm = _l2(g)
                out.append(g * g.dtype.type(self.clipnorm / norm) if norm > self.clipnorm else g)
            return out
        if self.global_clipnorm is not None:
            norm = math.sqrt(sum(_l2(g) ** 2 for g in grads))
            if norm <= self.global_clipnorm:
                return list(grads)
            scale = self.global_clipnorm / norm
            return [g * g.dtype.type(scale) for g in grads]
        if self.clipvalue is not None:
            return [np.clip(g, -self.clipvalue, self.clipvalue).astype(g.dtype, copy=False) for g in grads]
        return list(grads)

    def apply(self, params, grads):
        """One update step: every ``params[i]`` moves using ``grads[i]`` (in place), clipped first."""
        if len(params) != len(grads):
            raise ValueError(f"{type(self).__name__}.apply: {len(params)} params but {len(grads)} grads")
        grads = self._clip(grads)
        lr = self.learning_rate  # at the iterations before this update (Keras's step for a schedule)
        self._lr = lr
        self._decay = lr * self.weight_decay if self.weight_decay else 0.0
        self.iterations += 1
        for p, g in zip(params, grads):
            self.update(p, g, self._slots_for(p))

    def update(self, p, g, slots):
        raise NotImplementedError

    # -------------------------------------------------------------- configuration
    def get_config(self):
        """Keras-style settings: {'learning_rate': float or {'class_name', 'config'}, ...}."""
        lr = self._learning_rate if self._schedule is None else {
            "class_name": type(self._schedule).__name__, "config": self._schedule.get_config()}
        return {"learning_rate": lr, "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue, **self._own_config()}

    def _own_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        lr = config.get("learning_rate")
        if isinstance(lr, dict):
            kind = getattr(schedules, str(lr.get("class_name")), None)
            if not (isinstance(kind, type) and issubclass(kind, schedules.LearningRateSchedule)):
                raise ValueError(f"{cls.__name__}.from_config: unknown schedule {lr.get('class_name')!r}")
            config["learning_rate"] = kind.from_config(lr.get("config") or {})
        return cls(**config)

    def __repr__(self):
        config = self.get_config()
        if self._schedule is not None:
            config["learning_rate"] = self._schedule
        args = ", ".join(f"{k}={v!r}" for k, v in config.items() if v is not None)
        return f"{type(self).__name__}({args})"

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


def _l2(g):
    """L2 norm of an array, summed in float64."""
    flat = np.asarray(g, dtype=np.float64).reshape(-1)
    return math.sqrt(float(np.dot(flat, flat)))


class SGD(Optimizer):
    """Keras's SGD: v = momentum*v - lr*g; p += v (nesterov: p += momentum*v - lr*g); plain: p -= lr*g.

    Defaults: ``learning_rate=0.01, momentum=0.0, nesterov=False`` (Keras's). One slot per parameter,
    ``momentum`` (the velocity v), when momentum > 0. Kernel: :func:`npcnn.kernels.optim.sgd_update_numpy`.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, clipnorm=None,
                 clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)
        self.momentum = _number(momentum, "momentum", "SGD", lo=0, hi=1)
        self.nesterov = bool(nesterov)
        self.slot_names = ("momentum",) if self.momentum > 0 else ()

    def update(self, p, g, slots):
        kernels.sgd_update(p, g, slots.get("momentum"), self.momentum, self._lr, self.nesterov, self._decay)

    def _own_config(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class RMSprop(Optimizer):
    """RMSprop with Keras's update rule (epsilon *inside* the square root)::

        v   = rho * v + (1 - rho) * g^2
        mg  = rho * mg + (1 - rho) * g                       (centered only)
        inc = lr * g / sqrt(v - mg^2 + epsilon)              (not centered: sqrt(v + epsilon))
        mom = momentum * mom + inc;  p -= mom                (momentum > 0; else p -= inc)

    PyTorch adds its eps outside the root (``sqrt(v) + eps``) and keeps ``g / denom`` in its momentum
    buffer (npcnn, as Keras, keeps ``lr * g / denom``). Defaults (Keras's): ``learning_rate=0.001,
    rho=0.9, momentum=0.0, epsilon=1e-7, centered=False``; Keras's ``compile`` default optimizer.
    Slots: ``v``, ``momentum`` (momentum > 0), ``average_gradient`` (centered).
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)
        self.rho = _number(rho, "rho", "RMSprop", lo=0, hi=1)
        self.momentum = _number(momentum, "momentum", "RMSprop", lo=0, hi=1)
        self.epsilon = _number(epsilon, "epsilon", "RMSprop", lo=0, lo_open=True, hi=None)
        self.centered = bool(centered)
        self.slot_names = ("v",) + (("momentum",) if self.momentum > 0 else ()) + \
            (("average_gradient",) if self.centered else ())

    def update(self, p, g, slots):
        kernels.rmsprop_update(p, g, slots["v"], self.rho, self._lr, self.epsilon, slots.get("momentum"),
                               self.momentum, slots.get("average_gradient"), self._decay)

    def _own_config(self):
        return {"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon, "centered": self.centered}


class Adam(Optimizer):
    """Adam with Keras's update rule (epsilon outside the bias correction).

    At step t (1-based)::

        m = m + (1 - beta_1) * (g - m)
        v = v + (1 - beta_2) * (g^2 - v)
        max_v = max(max_v, v), used instead of v below       (amsgrad only)
        alpha = learning_rate * sqrt(1 - beta_2^t) / (1 - beta_1^t)
        p = p - alpha * m / (sqrt(v) + epsilon)

    epsilon (1e-7) is added to the *uncorrected* sqrt(v); the bias corrections
    are folded into the step size alpha. PyTorch instead adds its eps (1e-8) to
    sqrt(v / (1 - beta_2^t)); the two differ only while v is tiny.
    Slots: ``m``, ``v`` and, with amsgrad, ``max_v``.
    """

    slot_names = ("m", "v")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)
        owner = type(self).__name__
        self.beta_1 = _number(beta_1, "beta_1", owner, lo=0, hi=1)
        self.beta_2 = _number(beta_2, "beta_2", owner, lo=0, hi=1)
        self.epsilon = _number(epsilon, "epsilon", owner, lo=0, lo_open=True, hi=None)
        self.amsgrad = bool(amsgrad)
        if self.amsgrad:
            self.slot_names = ("m", "v", "max_v")

    def apply(self, params, grads):
        """One Adam step: alpha for this step (t = iterations + 1, the learning rate at iterations), then
        the base class's clipping, decay and per-array updates."""
        t = self.iterations + 1
        self._alpha = float(self.learning_rate * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t))
        super().apply(params, grads)

    def update(self, p, g, slots):
        # The formula above, in place: npcnn.kernels.optim (a NumPy twin and a fused Numba pass).
        kernels.adam_update(p, g, slots["m"], slots["v"], self.beta_1, self.beta_2, self._alpha, self.epsilon,
                            slots.get("max_v"), self._decay)

    def _own_config(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon, "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with Keras's decoupled weight decay: each update first does ``p -= lr * weight_decay * p``
    (every trained array, biases included, as Keras does by default), then the Adam step.

    Defaults (Keras's): ``learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
    epsilon=1e-7, amsgrad=False``. PyTorch's AdamW decays the same way (``p *= 1 - lr * wd``) but with
    its own eps placement (see :class:`Adam`).
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, clipnorm=None, clipvalue=None, global_clipnorm=None):
        if weight_decay is None:
            raise ValueError("AdamW: weight_decay must be a float, got None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay, clipnorm, clipvalue,
                         global_clipnorm)


_OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}


# Keras optimizers npcnn does not implement: named so the error says so instead of "unknown".
_NOT_IMPLEMENTED = ("adagrad", "adadelta", "adamax", "nadam", "ftrl", "lion", "adafactor", "lamb")


def get(identifier):
    """An Optimizer from a name ('sgd', 'rmsprop', 'adam', 'adamw'), a config
    ({'class_name': 'Adam', 'config': {...}}) or an instance.

    Raises:
        ValueError: an unknown name (the closest valid one is suggested), or a Keras optimizer
            npcnn does not implement (e.g. 'nadam').
        TypeError: neither a name nor an Optimizer.
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        raise TypeError(f"compile: optimizer must be an Optimizer instance or a name, got the class "
                        f"{identifier.__name__}; use {identifier.__name__}()")
    if isinstance(identifier, dict) and "class_name" in identifier:
        cls = lookup(str(identifier["class_name"]), _OPTIMIZERS, "optimizer", "compile")
        return cls.from_config(identifier.get("config") or {})
    if isinstance(identifier, str) and identifier.lower() in _NOT_IMPLEMENTED:
        raise ValueError(f"compile: optimizer {identifier!r} is not implemented in npcnn; use 'sgd', 'rmsprop', "
                         "'adam' or 'adamw'")
    return lookup(identifier, _OPTIMIZERS, "optimizer", "compile")()

