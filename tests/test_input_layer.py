"""Input / InputLayer: Keras 3's way of giving a Sequential model its input shape."""

import json

import numpy as np
import pytest

import npcnn
from npcnn.layers import Conv2D, Dense, Flatten, Input, InputLayer, MaxPooling2D
from npcnn.models import Sequential, model_from_json


def tutorial(first):
    layers = [Conv2D(32, (3, 3), activation="relu"), MaxPooling2D((2, 2)), Flatten(), Dense(10, activation="softmax")]
    if first is None:
        layers[0] = Conv2D(32, (3, 3), activation="relu", input_shape=(32, 32, 3))
        return Sequential(layers)
    return Sequential([first] + layers)


def test_input_first_builds_the_model_like_input_shape():
    a = tutorial(Input(shape=(32, 32, 3)))
    b = tutorial(None)
    assert a.built and a.input_shape == (32, 32, 3) and a.output_shape == (10,)
    assert [type(layer).__name__ for layer in a.layers] == ["Conv2D", "MaxPooling2D", "Flatten", "Dense"]
    assert a.count_params() == b.count_params() == 3 * 3 * 3 * 32 + 32 + 15 * 15 * 32 * 10 + 10
    lines = []
    a.summary(print_fn=lines.append)
    assert not any("InputLayer" in line for line in lines)  # Keras 3 shows no row for it either


def test_input_with_add_and_npcnn_Input_and_batch_shape():
    m = Sequential()
    m.add(npcnn.Input(batch_shape=(None, 8, 8, 3)))
    m.add(Conv2D(4, 3))
    assert m.built and m.output_shape == (6, 6, 4)
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    assert m.predict(x).shape == (2, 6, 6, 4)
    assert Input(shape=(5,), batch_size=16).shape == (16, 5)
    assert InputLayer(shape=[32, 32, 3]).shape == (None, 32, 32, 3)


def test_input_must_come_first_and_be_well_formed():
    m = Sequential([Dense(3, input_shape=(4,))])
    with pytest.raises(ValueError, match="an Input must come first"):
        m.add(Input(shape=(4,)))
    assert len(m.layers) == 1 and m.input_shape == (4,)
    with pytest.raises(ValueError, match="not both"):
        Input(shape=(4,), batch_shape=(None, 4))
    with pytest.raises(ValueError, match="shape is required"):
        Input()
    with pytest.raises(ValueError):
        Input(shape=(0, 3))
    with pytest.raises(ValueError, match="float32"):
        Input(shape=(4,), dtype="float64")
    with pytest.raises(ValueError, match="batch_size"):
        Input(shape=(4,), batch_size=0)


def test_keras3_json_with_an_input_layer_loads():
    """Keras 3 writes the InputLayer as the first entry of a Sequential model's layers."""
    m = tutorial(Input(shape=(32, 32, 3)))
    config = json.loads(m.to_json())
    config["config"]["layers"].insert(0, {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                                          "config": {"batch_shape": [None, 32, 32, 3], "dtype": "float32",
                                                     "sparse": False, "name": "input_layer"}})
    config["config"]["build_input_shape"] = None
    back = model_from_json(json.dumps(config))
    assert back.input_shape == (32, 32, 3) and back.count_params() == m.count_params()
    assert InputLayer.from_config({"batch_input_shape": [None, 4], "name": "x"}).shape == (None, 4)  # Keras 2's key
    # Keras 3.x's flags, as its to_json writes them
    keras3 = {"batch_shape": [None, 32, 32, 3], "dtype": "float32", "sparse": False, "ragged": False,
              "name": "input_layer", "optional": False}
    assert InputLayer.from_config(keras3).shape == (None, 32, 32, 3)
    with pytest.raises(ValueError, match="sparse=True"):
        InputLayer.from_config(dict(keras3, sparse=True))
