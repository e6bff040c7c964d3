"""Learning-rate schedules (Keras's ``keras.optimizers.schedules``): pass one as ``learning_rate=``.

A schedule is called with the optimizer's iteration count (the number of updates already applied:
0 for the first one, as Keras does) and returns the learning rate of that update. The optimizer's
``iterations`` is in every checkpoint, so a resumed run continues the schedule exactly.

Formulas (Keras 3's; npcnn computes them in float64, Keras in float32)::

    ExponentialDecay:        lr(s) = initial * decay_rate ^ (s / decay_steps)      (staircase: floor(s / decay_steps))
    PiecewiseConstantDecay:  values[0] for s <= boundaries[0], values[i] for boundaries[i-1] < s <= boundaries[i],
                             values[-1] for s > boundaries[-1]
    CosineDecay:             warmup (warmup_target given, s < warmup_steps):
                             lr = initial + (target - initial) * s / warmup_steps
                             then, with s' = min(s - warmup_steps, decay_steps) and top = warmup_target or initial:
                             lr = top * ((1 - alpha) * 0.5 * (1 + cos(pi * s' / decay_steps)) + alpha)

Example::

    from npcnn.optimizers import SGD, schedules
    opt = SGD(learning_rate=schedules.ExponentialDecay(0.1, decay_steps=1000, decay_rate=0.96, staircase=True))
"""

from __future__ import annotations

import math

import numpy as np


def _number(value, name, owner, positive=False, nonnegative=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0) or (nonnegative and v < 0):
        what = "a positive" if positive else "a non-negative" if nonnegative else "a finite"
        raise ValueError(f"{owner}: {name} must be {what} finite number, got {value!r}")
    return v


def _count(value, name, owner):
    """A positive number of steps, kept an int when given as one (as Keras's configs hold it)."""
    v = _number(value, name, owner, positive=True)
    return int(value) if isinstance(value, (int, np.integer)) else v


def _step(step, owner):
    if isinstance(step, bool) or not isinstance(step, (int, float, np.integer, np.floating)) or step < 0:
        raise ValueError(f"{owner}: step must be a non-negative number (the optimizer's iterations), got {step!r}")
    return float(step)


class LearningRateSchedule:
    """Base class: ``schedule(step) -> learning rate`` (a float); ``get_config()`` / ``from_config()``."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``; with ``staircase`` the exponent is
    floored (the rate drops every ``decay_steps`` updates). Keras's defaults and arguments."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
        owner = "ExponentialDecay"
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", owner)
        self.decay_steps = _count(decay_steps, "decay_steps", owner)
        self.decay_rate = _number(decay_rate, "decay_rate", owner)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = _step(step, "ExponentialDecay") / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[i]`` between ``boundaries[i-1]`` (excluded) and ``boundaries[i]`` (included), as Keras.

    Raises:
        ValueError: ``len(values) != len(boundaries) + 1``, or boundaries not increasing.
    """

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        owner = "PiecewiseConstantDecay"
        try:
            boundaries, values = list(boundaries), list(values)
        except TypeError:
            raise TypeError(f"{owner}: boundaries and values must be lists of numbers") from None
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"{owner}: the length of boundaries should be 1 less than the length of values; "
                             f"got {len(boundaries)} boundaries and {len(values)} values")
        self.boundaries = [_number(b, "boundaries", owner) for b in boundaries]
        self.values = [_number(v, "values", owner) for v in values]
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"{owner}: boundaries must be strictly increasing, got {list(boundaries)!r}")
        self.name = name

    def __call__(self, step):
        s = _step(step, "PiecewiseConstantDecay")
        for b, v in zip(self.boundaries, self.values):
            if s <= b:
                return v
        return self.values[-1]

    def get_config(self):
        return {"boundaries": list(self.boundaries), "values": list(self.values), "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay from ``initial_learning_rate`` (or, after a linear warmup, from ``warmup_target``)
    to ``alpha`` times it over ``decay_steps`` updates; Keras 3's arguments, defaults and formula
    (module docstring). Past the end it stays at the final value."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        owner = "CosineDecay"
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate", owner)
        self.decay_steps = _count(decay_steps, "decay_steps", owner)
        self.alpha = _number(alpha, "alpha", owner)
        self.warmup_target = None if warmup_target is None else _number(warmup_target, "warmup_target", owner)
        self.warmup_steps = _number(warmup_steps, "warmup_steps", owner, nonnegative=True)
        if isinstance(warmup_steps, (int, np.integer)):
            self.warmup_steps = int(warmup_steps)
        self.name = name

    def _decay(self, s, top):
        cosine = 0.5 * (1.0 + math.cos(math.pi * (s / self.decay_steps)))
        return top * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        s = _step(step, "CosineDecay")
        if self.warmup_target is None:
            return self._decay(min(s, self.decay_steps), self.initial_learning_rate)
        s = min(s, self.decay_steps + self.warmup_steps)
        if s < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return delta * (s / self.warmup_steps) + self.initial_learning_rate
        return self._decay(s - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}


__all__ = ["LearningRateSchedule", "ExponentialDecay", "PiecewiseConstantDecay", "CosineDecay"]
