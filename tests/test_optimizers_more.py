"""Optimizers of issue 13 item 5: SGD (momentum, nesterov), RMSprop, Adam's amsgrad, AdamW, weight decay,
clipnorm / global_clipnorm / clipvalue, names in compile, state in checkpoints.

Every rule is checked against Keras's documented formula computed here in float64, and against PyTorch
where its rule is the same up to a convention (constant learning rate, eps -> 0), on both kernel backends.
The kernels' NumPy twins and Numba versions agree to the last bit.
"""

import numpy as np
import pytest

import npcnn
from npcnn.checkpoint import TrainingCheckpoint, restore_checkpoint
from npcnn.kernels import optim
from npcnn.layers import Dense, Flatten
from npcnn.losses import SparseCategoricalCrossentropy
from npcnn.models import Sequential
from npcnn.optimizers import SGD, Adam, AdamW, RMSprop, get
from npcnn.schedules import CosineDecay, ExponentialDecay

try:  # PyTorch is optional (pip install torch==2.13.0): the tests that compare with it skip without it
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (pip install torch==2.13.0)")

SHAPES = [(5,), (3, 4), (2, 3, 2, 4)]


def _grads(rng, shape, steps=6):
    return [rng.standard_normal(shape) * (1 + i) for i in range(steps)]


def _run(opt, p0, grads):
    p = p0.copy()
    for g in grads:
        opt.apply([p], [g])
    return p


# ------------------------------------------------------------------------------ the formulas (float64)
def keras_sgd(p, grads, lr, momentum=0.0, nesterov=False, wd=None):
    v = np.zeros_like(p)
    for g in grads:
        if wd:
            p = p - p * wd * lr
        if momentum:
            v = momentum * v - lr * g
            p = p + (momentum * v - lr * g if nesterov else v)
        else:
            p = p - lr * g
    return p


def keras_rmsprop(p, grads, lr, rho=0.9, momentum=0.0, eps=1e-7, centered=False, wd=None):
    v, mg, mom = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        if wd:
            p = p - p * wd * lr
        v = rho * v + (1 - rho) * g**2
        if centered:
            mg = rho * mg + (1 - rho) * g
            den = v - mg**2 + eps
        else:
            den = v + eps
        inc = lr * g / np.sqrt(den)
        if momentum > 0:
            mom = momentum * mom + inc
            p = p - mom
        else:
            p = p - inc
    return p


def keras_adam(p, grads, lr, b1=0.9, b2=0.999, eps=1e-7, amsgrad=False, wd=None, lr_at=None):
    m, v, vhat = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        rate = lr if lr_at is None else lr_at(t - 1)
        if wd:
            p = p - p * wd * rate
        m = m + (g - m) * (1 - b1)
        v = v + (g**2 - v) * (1 - b2)
        if amsgrad:
            vhat = np.maximum(vhat, v)
        alpha = rate * np.sqrt(1 - b2**t) / (1 - b1**t)
        p = p - m * alpha / (np.sqrt(vhat if amsgrad else v) + eps)
    return p


# ------------------------------------------------------------------------------ against the formulas
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, None), (0.9, False, None), (0.9, True, None),
                                                  (0.5, True, 0.01), (0.0, False, 0.1)])
@pytest.mark.parametrize("shape", SHAPES)
def test_sgd_matches_keras_formula(backend, rng, momentum, nesterov, wd, shape):
    p0, grads = rng.standard_normal(shape), _grads(rng, shape)
    got = _run(SGD(0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd), p0, grads)
    np.testing.assert_allclose(got, keras_sgd(p0, grads, 0.05, momentum, nesterov, wd), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.9, False), (0.0, True), (0.7, True)])
@pytest.mark.parametrize("shape", SHAPES)
def test_rmsprop_matches_keras_formula(backend, rng, momentum, centered, shape):
    p0, grads = rng.standard_normal(shape), _grads(rng, shape)
    got = _run(RMSprop(0.01, rho=0.8, momentum=momentum, centered=centered), p0, grads)
    want = keras_rmsprop(p0, grads, 0.01, 0.8, momentum, 1e-7, centered)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_rmsprop_epsilon_is_inside_the_root(backend):
    """One step from v = 0 with g = 1e-4: Keras's lr * g / sqrt(0.1 g^2 + eps), not lr * g / (sqrt(0.1 g^2) + eps)."""
    p = np.zeros(1)
    RMSprop(1.0, rho=0.9, epsilon=1e-7).apply([p], [np.array([1e-4])])
    np.testing.assert_allclose(-p, 1e-4 / np.sqrt(0.1 * 1e-8 + 1e-7), rtol=1e-14)
    assert abs(-p[0] - 1e-4 / (np.sqrt(0.1 * 1e-8) + 1e-7)) > 1e-3


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("cls,wd", [(Adam, None), (Adam, 0.02), (AdamW, 0.004), (AdamW, 0.1)])
@pytest.mark.parametrize("shape", SHAPES)
def test_adam_family_matches_keras_formula(backend, rng, amsgrad, cls, wd, shape):
    p0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) * s for s in (3.0, 0.1, 0.1, 2.0, 0.01, 1.0)]  # so that max_v matters
    opt = cls(0.01, weight_decay=wd, amsgrad=amsgrad) if cls is Adam else cls(0.01, wd, amsgrad=amsgrad)
    got = _run(opt, p0, grads)
    np.testing.assert_allclose(got, keras_adam(p0, grads, 0.01, amsgrad=amsgrad, wd=wd), rtol=1e-12, atol=1e-14)


def test_amsgrad_changes_the_result(rng):
    p0 = rng.standard_normal(4)
    grads = [np.full(4, 5.0), np.full(4, 0.1), np.full(4, 0.1)]
    assert not np.allclose(_run(Adam(0.1), p0, grads), _run(Adam(0.1, amsgrad=True), p0, grads))


# ------------------------------------------------------------------------------ against PyTorch
def _torch_run(make, p0, grads):
    p = torch.tensor(p0.copy(), requires_grad=True)
    opt = make([p])
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy()


@needs_torch
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_agrees_with_torch_at_a_constant_rate(backend, rng, momentum, nesterov):
    """torch keeps buf = mu buf + g and steps -lr buf; Keras keeps v = mu v - lr g = -lr buf: the same
    trajectory while lr is constant."""
    p0, grads = rng.standard_normal((3, 5)), _grads(rng, (3, 5))
    got = _run(SGD(0.03, momentum=momentum, nesterov=nesterov), p0, grads)
    want = _torch_run(lambda ps: torch.optim.SGD(ps, lr=0.03, momentum=momentum, nesterov=nesterov), p0, grads)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@needs_torch
@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.9, False), (0.0, True), (0.5, True)])
def test_rmsprop_agrees_with_torch_as_eps_goes_to_zero(backend, rng, momentum, centered):
    """The rules differ only by where eps goes (inside the root in Keras, outside in torch) and by what the
    momentum buffer holds (lr * g / den vs g / den): with eps -> 0 and a constant lr they agree."""
    p0, grads = rng.standard_normal(7), _grads(rng, 7)
    got = _run(RMSprop(0.01, rho=0.9, momentum=momentum, epsilon=1e-300, centered=centered), p0, grads)
    want = _torch_run(lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=0.0, momentum=momentum,
                                                     centered=centered), p0, grads)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@needs_torch
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_and_adamw_agree_with_torch_as_eps_goes_to_zero(backend, rng, amsgrad, decoupled):
    p0 = rng.standard_normal(6)
    grads = [rng.standard_normal(6) * s for s in (3.0, 0.1, 0.1, 2.0, 0.01, 1.0)]
    if decoupled:
        got = _run(AdamW(0.01, weight_decay=0.05, epsilon=1e-300, amsgrad=amsgrad), p0, grads)
        make = lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.05, eps=0.0, amsgrad=amsgrad)  # noqa: E731
    else:
        got = _run(Adam(0.01, epsilon=1e-300, amsgrad=amsgrad), p0, grads)
        make = lambda ps: torch.optim.Adam(ps, lr=0.01, eps=0.0, amsgrad=amsgrad)  # noqa: E731
    np.testing.assert_allclose(got, _torch_run(make, p0, grads), rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------------------ clipping
def test_clipnorm_clips_each_array_as_keras(backend, rng):
    a, b = rng.standard_normal(4) * 10, rng.standard_normal((2, 3)) * 0.01
    pa, pb = np.zeros(4), np.zeros((2, 3))
    ga, gb = a.copy(), b.copy()
    SGD(1.0, clipnorm=1.0).apply([pa, pb], [ga, gb])
    np.testing.assert_allclose(-pa, a * 1.0 / max(np.linalg.norm(a), 1.0), rtol=1e-14)
    np.testing.assert_array_equal(-pb, b)  # under the norm: untouched
    np.testing.assert_array_equal(ga, a)  # the gradients themselves are never changed in place
    assert np.isclose(np.linalg.norm(pa), 1.0)


@needs_torch
def test_global_clipnorm_agrees_with_torch(backend, rng):
    gs = [rng.standard_normal(4) * 3, rng.standard_normal((2, 3)) * 2]
    ps = [np.zeros(4), np.zeros((2, 3))]
    SGD(1.0, global_clipnorm=2.0).apply(ps, [g.copy() for g in gs])
    tg = [torch.tensor(g) for g in gs]
    tp = [torch.zeros_like(g, requires_grad=True) for g in tg]
    for p, g in zip(tp, tg):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(tp, 2.0)
    for p, t in zip(ps, tp):
        np.testing.assert_allclose(-p, t.grad.numpy(), rtol=1e-6)  # torch adds 1e-6 to the norm
    total = np.sqrt(sum(np.sum(g**2) for g in gs))
    for p, g in zip(ps, gs):
        np.testing.assert_allclose(-p, g * 2.0 / max(total, 2.0), rtol=1e-14)  # Keras's formula, exactly


def test_clipvalue(backend, rng):
    g = rng.standard_normal(10) * 3
    p = np.zeros(10)
    Adam(0.1, clipvalue=0.5).apply([p], [g.copy()])
    np.testing.assert_allclose(p, keras_adam(np.zeros(10), [np.clip(g, -0.5, 0.5)], 0.1), rtol=1e-12)


def test_clipnorm_takes_precedence_and_the_pair_is_refused():
    with pytest.raises(ValueError, match="only one of clipnorm and global_clipnorm"):
        SGD(clipnorm=1.0, global_clipnorm=1.0)
    p = np.zeros(2)
    SGD(1.0, clipnorm=10.0, clipvalue=0.1).apply([p], [np.array([3.0, 4.0])])  # Keras: clipnorm, then nothing
    np.testing.assert_array_equal(p, [-3.0, -4.0])
    for bad in (0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="clipvalue"):
            Adam(clipvalue=bad)


def test_clipping_keeps_float32(rng):
    p = np.zeros(5, np.float32)
    g = (rng.standard_normal(5) * 100).astype(np.float32)
    opt = Adam(clipnorm=1.0)
    opt.apply([p], [g])
    assert p.dtype == np.float32 and opt._slots_for(p)["m"].dtype == np.float32


# ------------------------------------------------------------------------------ schedules in the optimizer
def test_a_schedule_is_evaluated_at_the_iterations_before_each_update(backend, rng):
    sched = ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    p0, grads = rng.standard_normal(3), _grads(rng, 3)
    got = _run(SGD(sched), p0, grads)
    want = p0 - sum(sched(t) * g for t, g in enumerate(grads))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    opt = Adam(CosineDecay(0.01, 4, warmup_target=0.02, warmup_steps=2))
    got = _run(opt, p0, grads)
    np.testing.assert_allclose(got, keras_adam(p0, grads, None, lr_at=opt.schedule), rtol=1e-12)
    assert opt.learning_rate == opt.schedule(len(grads))
    with pytest.raises(TypeError, match="not settable"):
        opt.learning_rate = 0.1


def test_decay_uses_the_scheduled_rate(backend, rng):
    sched = ExponentialDecay(0.1, 1, 0.5)
    p0, grads = rng.standard_normal(4), _grads(rng, 4, steps=3)
    got = _run(AdamW(sched, weight_decay=0.5), p0, grads)
    np.testing.assert_allclose(got, keras_adam(p0, grads, None, wd=0.5, lr_at=sched), rtol=1e-12)


# ------------------------------------------------------------------------------ kernels: twins to the bit
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_update_kernels_twins_agree_to_the_bit(rng, dtype, shape):
    def arrays(k, positive=()):
        out = [rng.standard_normal(shape).astype(dtype) for _ in range(k)]
        for i in positive:
            out[i] = np.abs(out[i])
        return out

    cases = []
    for mom, nest, decay in [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-3)]:
        cases.append(("sgd_update", arrays(3), lambda a, mom=mom, nest=nest, decay=decay:
                      (a[0], a[1], a[2] if mom else None, mom, 0.01, nest, decay)))
    for mom, centered in [(0.0, False), (0.9, True)]:
        cases.append(("rmsprop_update", arrays(5, positive=(2,)), lambda a, mom=mom, centered=centered:
                      (a[0], a[1], a[2], 0.9, 0.01, 1e-7, a[3] if mom else None, mom, a[4] * 0 if centered else None,
                       1e-3)))
    for ams, decay in [(True, 0.0), (False, 4e-6), (True, 4e-6)]:
        cases.append(("adam_update", arrays(5, positive=(3, 4)), lambda a, ams=ams, decay=decay:
                      (a[0], a[1], a[2], a[3], 0.9, 0.999, 1e-3, 1e-7, a[4] if ams else None, decay)))
    for name, base, args in cases:
        twin, fast = getattr(optim, f"{name}_numpy"), getattr(optim, f"{name}_numba")
        a, b = [x.copy() for x in base], [x.copy() for x in base]
        aa, bb = args(a), args(b)  # (the centered mean gradient starts at 0, a fresh array per side)
        for _ in range(3):
            twin(*aa)
            fast(*bb)
        for x, y in zip(aa, bb):
            if isinstance(x, np.ndarray):
                np.testing.assert_array_equal(x, y, err_msg=name)


def test_update_kernels_fall_back_for_non_contiguous_arrays(rng):
    p = rng.standard_normal((4, 6))[:, ::2]
    g, v = rng.standard_normal((4, 3)), rng.standard_normal((4, 6))[:, ::2]
    expect = [p.copy(), g.copy(), v.copy()]
    optim.sgd_update_numpy(expect[0], expect[1], expect[2], 0.9, 0.1, True)
    optim.sgd_update_numba(p, g, v, 0.9, 0.1, True)
    np.testing.assert_array_equal(p, expect[0])
    np.testing.assert_array_equal(v, expect[2])


def test_new_kernels_are_registered():
    assert npcnn.kernels.get_kernel("sgd_update", "numba") is optim.sgd_update_numba
    assert npcnn.kernels.get_kernel("rmsprop_update", "numpy") is optim.rmsprop_update_numpy


# ------------------------------------------------------------------------------ names, defaults, configs
def test_names_in_compile_and_keras_defaults():
    assert isinstance(get("rmsprop"), RMSprop) and isinstance(get("AdamW"), AdamW) and isinstance(get("SGD"), SGD)
    model = Sequential([Flatten(input_shape=(2, 2, 1)), Dense(3)])
    model.compile(loss="sparse_categorical_crossentropy")  # Keras's default optimizer
    assert isinstance(model.optimizer, RMSprop)
    r, w, s = RMSprop(), AdamW(), SGD()
    assert (r.learning_rate, r.rho, r.momentum, r.epsilon, r.centered) == (0.001, 0.9, 0.0, 1e-7, False)
    assert (w.learning_rate, w.weight_decay, w.beta_1, w.beta_2, w.epsilon, w.amsgrad) == \
        (0.001, 0.004, 0.9, 0.999, 1e-7, False)
    assert (s.learning_rate, s.momentum, s.nesterov) == (0.01, 0.0, False)
    with pytest.raises(ValueError, match="'nadam' is not implemented in npcnn; use 'sgd', 'rmsprop', 'adam'"):
        get("nadam")
    with pytest.raises(ValueError, match="weight_decay must be a float"):
        AdamW(weight_decay=None)


@pytest.mark.parametrize("opt", [SGD(0.1, momentum=0.9, nesterov=True, clipnorm=2.0),
                                 RMSprop(centered=True, momentum=0.5, global_clipnorm=1.0),
                                 Adam(amsgrad=True, clipvalue=0.5), AdamW(ExponentialDecay(0.1, 10, 0.9))])
def test_config_roundtrip(opt, rng):
    again = type(opt).from_config(opt.get_config())
    assert again.get_config() == opt.get_config()
    assert get({"class_name": type(opt).__name__, "config": opt.get_config()}).get_config() == opt.get_config()
    p0, grads = rng.standard_normal(3), _grads(rng, 3, steps=3)
    np.testing.assert_array_equal(_run(opt, p0, grads), _run(again, p0, grads))


# ------------------------------------------------------------------------------ state and checkpoints
@pytest.mark.parametrize("make", [lambda: SGD(0.1, momentum=0.9), lambda: RMSprop(momentum=0.9, centered=True),
                                  lambda: Adam(amsgrad=True), lambda: AdamW(CosineDecay(0.01, 5))])
def test_state_roundtrip(make, rng):
    a, b = rng.standard_normal(3), rng.standard_normal((2, 2))
    opt = make()
    for _ in range(2):
        opt.apply([a, b], [rng.standard_normal(3), rng.standard_normal((2, 2))])
    state = opt.get_state([a, b])
    assert set(state) == {"iterations"} | {f"slot{i}_{n}" for i in range(2) for n in opt.slot_names}
    fresh = make()
    a2, b2 = a.copy(), b.copy()
    fresh.set_state([a2, b2], state)
    assert fresh.iterations == 2 and fresh.learning_rate == opt.learning_rate
    for _ in range(2):
        g = [rng.standard_normal(3), rng.standard_normal((2, 2))]
        opt.apply([a, b], g)
        fresh.apply([a2, b2], g)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)


def _model(opt):
    model = Sequential([Flatten(input_shape=(4, 4, 2)), Dense(8, activation="relu"), Dense(5)])
    model.compile(optimizer=opt, loss=SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


@pytest.mark.parametrize("make", [lambda: RMSprop(0.01, momentum=0.5, centered=True),
                                  lambda: AdamW(ExponentialDecay(0.01, 3, 0.5), amsgrad=True, clipnorm=0.5),
                                  lambda: SGD(CosineDecay(0.1, 10, warmup_target=0.2, warmup_steps=4), 0.9, True)])
def test_resume_through_a_checkpoint_is_bit_identical(tmp_path, make):
    rng = np.random.default_rng(1)
    x, y = rng.random((24, 4, 4, 2), dtype=np.float32), rng.integers(0, 5, 24)
    npcnn.set_random_seed(3)
    ref = _model(make())
    ref.fit(x, y, epochs=3, batch_size=8, verbose=0)
    npcnn.set_random_seed(3)
    first = _model(make())
    ckpt = TrainingCheckpoint(tmp_path)
    first.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[ckpt])
    npcnn.set_random_seed(77)
    second = _model(make())
    state = restore_checkpoint(ckpt.path, second)
    second.fit(x, y, epochs=3, batch_size=8, verbose=0, initial_epoch=state.epoch)
    assert second.optimizer.iterations == ref.optimizer.iterations == 9
    for a, b in zip(ref.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
