"""npcnn.models.cifar10_deep (issue 14): the stack, its parameter counts against Keras's, the compile settings."""

import numpy as np
import pytest

from npcnn import schedules
from npcnn.models import cifar10_deep

# Keras's figures for the same stack, by hand (Conv2D: KH*KW*C*F + F; BatchNormalization: 4*C, of which
# 2*C (moving mean and variance) non-trainable; Dense: D*U + U; the other layers have none):
#   conv 3->32:    3*3*3*32 + 32    =     896     BN(32):  128
#   conv 32->32:   3*3*32*32 + 32   =   9,248     BN(32):  128
#   conv 32->64:   3*3*32*64 + 64   =  18,496     BN(64):  256
#   conv 64->64:   3*3*64*64 + 64   =  36,928     BN(64):  256
#   conv 64->128:  3*3*64*128 + 128 =  73,856     BN(128): 512
#   conv 128->128: 3*3*128*128 + 128 = 147,584    BN(128): 512
#   Dense 2048->128 (4*4*128 = 2048): 2048*128 + 128 = 262,272     BN(128): 512
#   Dense 128->10: 128*10 + 10 = 1,290
#   convs 287,008 + Dense 263,562 + BN 2,304 = 552,874 total; non-trainable 2,304 / 2 = 1,152;
#   trainable 552,874 - 1,152 = 551,722
KERAS_TOTAL, KERAS_TRAINABLE, KERAS_NON_TRAINABLE = 552_874, 551_722, 1_152
KERAS_PER_LAYER = {"conv2d": 896, "conv2d_1": 9_248, "conv2d_2": 18_496, "conv2d_3": 36_928, "conv2d_4": 73_856,
                   "conv2d_5": 147_584, "dense": 262_272, "dense_1": 1_290, "batch_normalization": 128,
                   "batch_normalization_1": 128, "batch_normalization_2": 256, "batch_normalization_3": 256,
                   "batch_normalization_4": 512, "batch_normalization_5": 512, "batch_normalization_6": 512}

BLOCK = ["Conv2D", "BatchNormalization", "Activation"] * 2 + ["MaxPooling2D", "Dropout"]
STACK = (["RandomFlip", "RandomTranslation"] + BLOCK * 3
         + ["Flatten", "Dense", "BatchNormalization", "Activation", "Dropout", "Dense"])


def test_stack_is_the_issues():
    model = cifar10_deep()
    assert [type(layer).__name__ for layer in model.layers] == STACK
    assert model.input_shape == (32, 32, 3) and model.output_shape == (10,)
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [32, 32, 64, 64, 128, 128]
    assert all(c.get_config()["padding"] == "same" and tuple(c.get_config()["kernel_size"]) == (3, 3)
               for c in convs)
    rates = [layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"]
    assert rates == [0.2, 0.3, 0.4, 0.5]
    flip, shift = model.layers[:2]
    assert flip.get_config()["mode"] == "horizontal"
    assert shift.get_config()["height_factor"] == 0.1 and shift.get_config()["width_factor"] == 0.1
    acts = [layer.get_config()["activation"] for layer in model.layers if type(layer).__name__ == "Activation"]
    assert acts == ["relu"] * 7
    assert model.layers[-1].get_config()["activation"] == "softmax"
    # Keras's defaults: glorot-uniform kernels, zero biases
    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
    assert all(layer.get_config()["kernel_initializer"] == "glorot_uniform"
               and layer.get_config()["bias_initializer"] == "zeros" for layer in convs + dense)
    assert all(not np.any(c.params["bias"]) for c in convs)


def test_parameter_counts_equal_keras(capsys):
    model = cifar10_deep()
    trainable = sum(layer.count_trainable() for layer in model.layers)
    assert model.count_params() == KERAS_TOTAL
    assert trainable == KERAS_TRAINABLE and model.count_params() - trainable == KERAS_NON_TRAINABLE
    assert {layer.name: layer.count_params() for layer in model.layers if layer.count_params()} == KERAS_PER_LAYER
    model.summary(batch_size=64)
    out = capsys.readouterr().out
    assert "Total params: 552,874" in out
    assert "Trainable params: 551,722" in out and "Non-trainable params: 1,152" in out


def test_compiled_with_adamw_cosine_decay():
    model = cifar10_deep()
    assert type(model.optimizer).__name__ == "AdamW" and model.optimizer.weight_decay == 0.05
    for plain_adam in (0, None):
        assert type(cifar10_deep(weight_decay=plain_adam).optimizer).__name__ == "Adam"
    sched = model.optimizer.schedule
    assert isinstance(sched, schedules.CosineDecay)
    assert sched.initial_learning_rate == 1e-3 and sched.decay_steps == 30 * 782  # 30 epochs of 782 batches of 64
    assert sched(0) == pytest.approx(1e-3) and sched(30 * 782) == pytest.approx(0.0)
    assert model.metrics == ["accuracy"]
    assert type(model.loss).__name__ == "SparseCategoricalCrossentropy"
    plain = cifar10_deep(decay_steps=None, learning_rate=5e-4)
    assert plain.optimizer.schedule is None and plain.optimizer.learning_rate == pytest.approx(5e-4)
    assert cifar10_deep(compile=False).compiled is False


def test_without_augmentation_and_other_shapes():
    model = cifar10_deep(augment=False, compile=False)
    assert [type(layer).__name__ for layer in model.layers] == STACK[2:]
    assert model.count_params() == KERAS_TOTAL
    small = cifar10_deep(input_shape=(16, 16, 3), classes=4)
    # Flatten sees 2*2*128 = 512 values: Dense 512*128 + 128 = 65,664; Dense 128*4 + 4 = 516
    assert small.output_shape == (4,)
    assert small.layers[-5].count_params() == 65_664 and small.layers[-1].count_params() == 516


def test_a_few_steps_train_and_predict():
    """Two fit epochs on 32 random images run end to end (augmentation, BN, dropout); predict sums to 1."""
    import npcnn

    npcnn.set_random_seed(0)
    model = cifar10_deep(decay_steps=100)
    rng = np.random.default_rng(0)
    x = rng.random((32, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, 32)
    moving = model.layers[3].buffers["moving_mean"].copy()
    hist = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert all(np.isfinite(hist.history["loss"]))
    assert model.optimizer.iterations == 4
    assert not np.array_equal(moving, model.layers[3].buffers["moving_mean"])  # BN's statistics moved
    p = model.predict(x[:5])
    assert p.shape == (5, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(p, model.predict(x[:5]))  # inference: no augmentation, no dropout
