"""Keras 3's model JSON (``model.to_json()``) read by ``npcnn.models.model_from_json``: bring a Keras model over.

The fixtures in tests/data/ were written by Keras 3.15.1 (tests/data/make_keras_json.py and
make_keras_weights.py); neither Keras nor torch is needed here (the weight files need h5py).
"""

import json
import pathlib

import numpy as np
import pytest

from npcnn import layers as L
from npcnn.models import cifar10_deep, model_from_json
from npcnn.serialization import from_keras_layer_config

DATA = pathlib.Path(__file__).parent / "data"


def keras_json(name):
    return (DATA / f"{name}.json").read_text()


def test_the_deep_network_from_keras_has_npcnns_architecture():
    model = model_from_json(keras_json("keras_cifar10_deep"))
    ours = cifar10_deep(compile=False)
    assert model.count_params() == ours.count_params() == 552_874
    assert [type(a).__name__ for a in model.layers] == [type(b).__name__ for b in ours.layers]
    for a, b in zip(model.layers, ours.layers):
        ca, cb = a.get_config(), b.get_config()
        for key in ("name", "input_shape"):
            ca.pop(key, None)
            cb.pop(key, None)
        assert ca == cb, (a, b)


@pytest.mark.parametrize("name", ["keras_cifar10_small", "keras_bn_model"])
def test_a_keras_model_runs_in_npcnn_with_its_weights(name):
    """model_from_json(Keras's JSON) + load_weights(Keras's .weights.h5) predicts what Keras predicted."""
    pytest.importorskip("h5py")
    model = model_from_json(keras_json(name))
    model.load_weights(str(DATA / f"{name}.weights.h5"))
    x = np.load(DATA / "keras_input.npy")
    if name == "keras_bn_model":
        x = x[:, :10, :10, :]
    np.testing.assert_allclose(model.predict(x, batch_size=4), np.load(DATA / f"{name}_pred.npy"), rtol=1e-5,
                               atol=1e-6)


def conv_config(**changes):
    config = json.loads(keras_json("keras_cifar10_small"))["config"]["layers"][1]["config"]
    config.update(changes)
    return config


def test_keras_only_features_are_refused_by_name():
    assert L.Conv2D.from_config(from_keras_layer_config(L.Conv2D, conv_config())).filters == 4
    with pytest.raises(ValueError, match="dilation_rate=\\[2, 2\\] is not supported"):
        from_keras_layer_config(L.Conv2D, conv_config(dilation_rate=[2, 2]))
    with pytest.raises(ValueError, match="groups=2"):
        from_keras_layer_config(L.Conv2D, conv_config(groups=2))
    with pytest.raises(ValueError, match="kernel_constraint"):
        from_keras_layer_config(L.Conv2D, conv_config(kernel_constraint={"class_name": "MaxNorm", "config": {}}))
    seeded = {"module": "keras.initializers", "class_name": "GlorotUniform", "config": {"seed": 3},
              "registered_name": None}
    with pytest.raises(ValueError, match="initializers take no arguments"):
        from_keras_layer_config(L.Conv2D, conv_config(kernel_initializer=seeded))
    with pytest.raises(ValueError, match="data_format"):
        L.Conv2D.from_config(from_keras_layer_config(L.Conv2D, conv_config(data_format="channels_first")))


def test_keras_regularizers_and_dtypes_are_read():
    reg = {"module": "keras.regularizers", "class_name": "L2", "config": {"l2": 0.02}, "registered_name": None}
    layer = L.Conv2D.from_config(from_keras_layer_config(L.Conv2D, conv_config(kernel_regularizer=reg)))
    assert layer.get_config()["kernel_regularizer"] == {"class_name": "L2", "config": {"l2": 0.02}}
    assert L.Conv2D.from_config(from_keras_layer_config(L.Conv2D, conv_config())).dtype == np.float32
    with pytest.raises(TypeError, match="float16"):
        L.Conv2D.from_config(from_keras_layer_config(L.Conv2D, conv_config(
            dtype={"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float16"}})))
    relu = {"max_value": None, "negative_slope": 0.0, "threshold": 0.0, "name": "re_lu", "trainable": True}
    L.ReLU.from_config(from_keras_layer_config(L.ReLU, relu))  # Keras's ReLU layer, plain
    with pytest.raises(ValueError, match="max_value=6"):
        from_keras_layer_config(L.ReLU, dict(relu, max_value=6))


def test_npcnn_configs_pass_through_unchanged():
    for layer in cifar10_deep(compile=False).layers:
        config = layer.get_config()
        assert from_keras_layer_config(type(layer), config) == config
