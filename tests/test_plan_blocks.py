"""The Conv2D + BatchNormalization + ReLU (+ MaxPooling2D) block of the plan (npcnn.plan.ConvBNReLU).

Training runs the ops one by one (the ReLU inside the BatchNormalization kernel, npcnn.plan.BNReLU), so it is
bit-identical to the unfused plan; inference folds the
normalisation into the convolution (kernel * s, (bias - mean) * s + beta) and runs one conv kernel
(with its ReLU) or the fused conv + ReLU + max-pool op, equal to the unfused layers up to rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

import npcnn
from npcnn import gradcheck
from npcnn import plan as plan_mod
from npcnn.layers import Activation, BatchNormalization, Conv2D, Dense, Flatten, MaxPooling2D, ReLU
from npcnn.models import Sequential


def _model(pool=True, use_bias=True, center=True, scale=True, relu=lambda: Activation("relu")):
    npcnn.set_random_seed(7)
    layers = [Conv2D(6, 3, padding="same", use_bias=use_bias, input_shape=(10, 9, 3)),
              BatchNormalization(center=center, scale=scale), relu()]
    layers += [MaxPooling2D()] if pool else []
    layers += [Flatten(), Dense(4, activation="softmax")]
    model = Sequential(layers)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def _data(n=16):
    rng = np.random.default_rng(3)
    return rng.standard_normal((n, 10, 9, 3)).astype(np.float32), rng.integers(0, 4, n)


@pytest.mark.parametrize("pool", [True, False])
def test_the_block_is_compiled(pool):
    step = _model(pool).plan.steps[0]
    assert isinstance(step, plan_mod.ConvBNReLU) and (step.pool is not None) == pool
    assert [layer.name for layer in step.layers][:2] == ["conv2d", "batch_normalization"]
    assert isinstance(_model(pool, relu=ReLU).plan.steps[0], plan_mod.ConvBNReLU)


@pytest.mark.parametrize("pool", [True, False])
def test_training_is_bit_identical_to_the_unfused_plan(backend, monkeypatch, pool):
    x, y = _data()
    results = []
    for fuse in (True, False):
        monkeypatch.setattr(plan_mod, "FUSE", fuse)
        model = _model(pool)
        assert isinstance(model.plan.steps[0], plan_mod.ConvBNReLU) == fuse
        losses = [model.train_on_batch(x, y) for _ in range(4)]
        results.append((losses, model.get_weights()))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):  # moving statistics included
        np.testing.assert_array_equal(a, b)


def test_training_with_a_frozen_bn_is_bit_identical_to_the_unfused_plan(backend, monkeypatch):
    """A frozen BatchNormalization runs in inference mode inside the training step: its fused ReLU's mask
    must reach the affine backward too."""
    x, y = _data()
    results = []
    for fuse in (True, False):
        monkeypatch.setattr(plan_mod, "FUSE", fuse)
        model = _model(pool=True)
        model.layers[1].trainable = False
        model.compile("adam", "sparse_categorical_crossentropy")
        assert isinstance(model.plan.steps[0], plan_mod.ConvBNReLU) == fuse
        for _ in range(3):
            model.train_on_batch(x, y)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("variant", ["default", "no-bias", "no-center-scale", "negative-gamma"])
def test_folded_inference_equals_the_layers(backend, monkeypatch, pool, variant):
    x, y = _data()
    kwargs = {"no-bias": dict(use_bias=False), "no-center-scale": dict(center=False, scale=False)}.get(variant, {})
    outs = []
    for fuse in (True, False):
        monkeypatch.setattr(plan_mod, "FUSE", fuse)
        model = _model(pool, **kwargs)
        for _ in range(3):
            model.train_on_batch(x, y)  # moving statistics away from their initial 0 / 1
        if variant == "negative-gamma":  # a negative scale flips which value a max-pool window picks
            bn = model.layers[1]
            bn.params["gamma"][...] = np.linspace(-1.5, 1.0, 6, dtype=np.float32)
            bn.params["beta"][...] = np.linspace(0.3, -0.2, 6, dtype=np.float32)
        outs.append(model.predict(x, batch_size=16))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_whole_model_gradcheck_through_the_block(backend):
    model = _model(pool=True)
    assert isinstance(model.plan.steps[0], plan_mod.ConvBNReLU)
    x = gradcheck.spread_input((3, 10, 9, 3), np.random.default_rng(0))
    rows = gradcheck.check_model(model, x, np.array([0, 3, 1]))
    assert {r.layer for r in rows} == {"conv2d", "batch_normalization", "dense"}
    # the conv bias right before BN has a true gradient of 0 (BN removes the mean): its check compares
    # rounding noise with rounding noise, so it is left out here (docs/batchnorm.md says why)
    assert all(r.passed for r in rows if not (r.layer == "conv2d" and r.tensor == "bias")), rows


def test_sharded_training_through_the_block_equals_one_thread():
    x, y = _data(32)
    runs = []
    previous = npcnn.get_num_threads()
    try:
        for threads in (1, min(2, npcnn.threads.max_threads())):
            npcnn.set_num_threads(threads)
            model = _model(pool=True, use_bias=False)
            for _ in range(5):
                model.train_on_batch(x, y)
            runs.append(model.get_weights())
    finally:
        npcnn.set_num_threads(previous)
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
