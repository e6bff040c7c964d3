"""float32 end to end: one training step of the seed model keeps every array float32.

Every layer's output (forward), every gradient it returns and stores (backward), every
weight and every optimizer slot must stay float32 on both backends: one stray
``np.zeros(shape)`` (float64 by default) would silently double the memory traffic.
"""

from __future__ import annotations

import numpy as np
from conftest import seed_model


def _record(model):
    """Wrap each step of the model's plan (a layer's op, an activation or a fused block) to collect
    (what, dtype) of everything its forward and backward take and return."""
    seen = []
    for step in model.plan.steps:
        name = step.layers[0].name

        def fwd(x, state, ctx, _f=step.forward, _n=name):
            y = _f(x, state, ctx)
            seen.append((f"{_n} input", x.dtype))
            seen.append((f"{_n} output", y.dtype))
            return y

        def bwd(dy, state, ctx, _b=step.backward, _n=name):
            dx = _b(dy, state, ctx)
            seen.append((f"{_n} dy", dy.dtype))
            if dx is not None:
                seen.append((f"{_n} dx", dx.dtype))
            return dx

        step.forward, step.backward = fwd, bwd
    return seen


def test_training_step_is_float32(backend, rng):
    model = seed_model()
    seen = _record(model)
    x = rng.random((8, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    loss, acc = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert seen, "the forward/backward hooks saw nothing"
    # Every layer runs in some step (fused blocks are named by their first layer).
    covered = {layer.name for step in model.plan.steps for layer in step.layers}
    assert covered == {layer.name for layer in model.layers}
    assert {what.split()[0] for what, _ in seen} == {step.layers[0].name for step in model.plan.steps}
    bad = [(what, dt) for what, dt in seen if dt != np.float32]
    for layer in model.layers:
        for key, p in layer.params.items():
            if p.dtype != np.float32:
                bad.append((f"{layer.name}/{key}", p.dtype))
            g = layer.grads.get(key)
            if g is None or g.dtype != np.float32:
                bad.append((f"{layer.name}/{key} grad", None if g is None else g.dtype))
    for states in model._free_states:  # the per-call states the step ran with, back in the model's pool
        for st in states:
            for buf_name, buf in (st.ws or {}).items():
                # the bias gradients' partial sums are float64 accumulators by design (cast once at the end)
                if buf.dtype.kind == "f" and buf.dtype != np.float32 and not buf_name.endswith(".db_partial"):
                    bad.append((f"buffer {buf_name}", buf.dtype))
    for _, slots in model.optimizer._slots.values():
        for name, arr in slots.items():
            if arr.dtype != np.float32:
                bad.append((f"optimizer slot {name}", arr.dtype))
    assert not bad, f"float64 (or other) arrays in a float32 training step: {bad}"


def test_kernel_caches_are_float32(backend, rng):
    from npcnn import kernels as K

    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    bias = np.zeros(4, np.float32)
    y, cache = K.conv2d_forward(x, kernel, bias, (1, 1), (0, 0, 0, 0), (5, 5), relu=True)
    assert y.dtype == np.float32 and cache[1].dtype == np.float32
    dx, dk, db = K.conv2d_backward(np.ones_like(y), cache)
    assert dx.dtype == dk.dtype == db.dtype == np.float32
    loss, dz = K.sparse_softmax_ce(rng.standard_normal((3, 10)).astype(np.float32), np.array([0, 1, 2]))
    assert isinstance(loss, np.float32) and dz.dtype == np.float32
