"""Learning-rate schedules (issue 13 item 6) against Keras 3's formulas, written out here in float64."""

import math

import numpy as np
import pytest

from npcnn import optimizers
from npcnn.schedules import CosineDecay, ExponentialDecay, LearningRateSchedule, PiecewiseConstantDecay

STEPS = [0, 1, 2, 3, 7, 9, 10, 11, 99, 100, 101, 250, 1000, 12345]


def keras_exponential(step, lr0, decay_steps, rate, staircase):
    p = step / decay_steps
    return lr0 * rate ** (np.floor(p) if staircase else p)


def keras_piecewise(step, boundaries, values):
    # Keras: values[0] where step <= b[0]; values[i] where b[i-1] < step <= b[i]; values[-1] past the end
    if step <= boundaries[0]:
        return values[0]
    for i in range(1, len(boundaries)):
        if boundaries[i - 1] < step <= boundaries[i]:
            return values[i]
    return values[-1]


def keras_cosine(step, lr0, decay_steps, alpha=0.0, warmup_target=None, warmup_steps=0):
    def decay(s, top):
        cos = 0.5 * (1.0 + np.cos(np.pi * s / decay_steps))
        return top * ((1 - alpha) * cos + alpha)

    if warmup_target is None:
        return decay(min(step, decay_steps), lr0)
    s = min(step, decay_steps + warmup_steps)
    if s < warmup_steps:
        return (warmup_target - lr0) * (s / warmup_steps) + lr0
    return decay(s - warmup_steps, warmup_target)


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize("decay_steps,rate", [(10, 0.96), (1, 0.5), (100, 1.5), (7, 0.1)])
def test_exponential_decay(staircase, decay_steps, rate):
    s = ExponentialDecay(0.1, decay_steps, rate, staircase=staircase)
    for step in STEPS:
        np.testing.assert_allclose(s(step), keras_exponential(step, 0.1, decay_steps, rate, staircase), rtol=1e-14)


def test_exponential_staircase_is_flat_between_drops():
    s = ExponentialDecay(1.0, 10, 0.5, staircase=True)
    assert [s(t) for t in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("boundaries,values", [([10], [1.0, 0.5]), ([100, 110], [1.0, 0.5, 0.1]),
                                               ([0, 3, 7, 1000], [5.0, 4.0, 3.0, 2.0, 1.0])])
def test_piecewise_constant(boundaries, values):
    s = PiecewiseConstantDecay(boundaries, values)
    for step in STEPS + [b + d for b in boundaries for d in (-1, 0, 1) if b + d >= 0]:
        assert s(step) == keras_piecewise(step, boundaries, values), step


def test_piecewise_boundary_belongs_to_the_earlier_value():
    s = PiecewiseConstantDecay([100000, 110000], [1.0, 0.5, 0.1])  # Keras's docstring example
    assert (s(100000), s(100001), s(110000), s(110001)) == (1.0, 0.5, 0.5, 0.1)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
@pytest.mark.parametrize("warmup_target,warmup_steps", [(None, 0), (0.5, 10), (0.05, 3), (0.2, 0)])
def test_cosine_decay(alpha, warmup_target, warmup_steps):
    s = CosineDecay(0.1, 100, alpha=alpha, warmup_target=warmup_target, warmup_steps=warmup_steps)
    for step in STEPS:
        want = keras_cosine(step, 0.1, 100, alpha, warmup_target, warmup_steps)
        np.testing.assert_allclose(s(step), want, rtol=1e-14, atol=1e-17)


def test_cosine_warmup_shape():
    s = CosineDecay(0.0, 10, warmup_target=1.0, warmup_steps=4, alpha=0.1)
    assert [s(t) for t in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]  # linear up, then the decay starts at the target
    assert math.isclose(s(9), 0.1 + 0.9 * 0.5) and s(14) == s(1000) == pytest.approx(0.1)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="1 less than the length of values"):
        PiecewiseConstantDecay([1, 2], [1.0, 2.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        PiecewiseConstantDecay([2, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="decay_steps must be a positive"):
        ExponentialDecay(0.1, 0, 0.9)
    with pytest.raises(ValueError, match="decay_steps must be a positive"):
        CosineDecay(0.1, -5)
    with pytest.raises(TypeError, match="initial_learning_rate must be a number"):
        CosineDecay("0.1", 5)
    with pytest.raises(ValueError, match="step must be a non-negative"):
        ExponentialDecay(0.1, 10, 0.9)(-1)


@pytest.mark.parametrize("s", [ExponentialDecay(0.1, 10, 0.9, staircase=True), PiecewiseConstantDecay([5], [1.0, 0.1]),
                               CosineDecay(0.1, 50, alpha=0.2, warmup_target=0.3, warmup_steps=5)])
def test_config_roundtrip_and_reachable_from_optimizers(s):
    again = type(s).from_config(s.get_config())
    assert [again(t) for t in STEPS] == [s(t) for t in STEPS]
    assert isinstance(s, LearningRateSchedule) and optimizers.schedules.ExponentialDecay is ExponentialDecay
    opt = optimizers.SGD(learning_rate=s)
    assert opt.learning_rate == s(0) and opt.schedule is s
