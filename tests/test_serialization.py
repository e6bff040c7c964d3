"""Configs and model files (issue 13 item 8): get_config/from_config on every layer, to_json /
model_from_json, model.save / load_model (one atomic .npz, no pickle), resuming training after a load."""

import json
import zipfile

import numpy as np
import pytest

import npcnn
from npcnn import layers as L
from npcnn import regularizers, saving
from npcnn.checkpoint import save_checkpoint
from npcnn.models import Sequential, load_model, model_from_json
from npcnn.optimizers import SGD, Adam
from npcnn.utils import set_random_seed

# Each layer class with arguments away from its defaults (where it has any), so a config that forgets
# a key rebuilds a different layer and the round trip fails.
FACTORIES = {
    "Conv2D": lambda: L.Conv2D(4, (3, 2), strides=(2, 1), padding="same", activation="relu", use_bias=False,
                               kernel_initializer="he_normal", bias_initializer="ones",
                               kernel_regularizer=regularizers.L2(1e-3), bias_regularizer="l1",
                               input_shape=(8, 8, 3), name="c"),
    "Dense": lambda: L.Dense(5, activation=L.LeakyReLU(0.1), kernel_initializer="glorot_normal",
                             kernel_regularizer=regularizers.L1L2(1e-4, 2e-4), dtype="float64"),
    "Flatten": lambda: L.Flatten(name="flat"),
    "MaxPooling2D": lambda: L.MaxPooling2D(3, strides=2, padding="same"),
    "AveragePooling2D": lambda: L.AveragePooling2D((2, 3), strides=(1, 2), padding="same"),
    "GlobalAveragePooling2D": lambda: L.GlobalAveragePooling2D(keepdims=True),
    "GlobalMaxPooling2D": lambda: L.GlobalMaxPooling2D(keepdims=True),
    "ZeroPadding2D": lambda: L.ZeroPadding2D(((1, 2), (0, 3))),
    "BatchNormalization": lambda: L.BatchNormalization(momentum=0.9, epsilon=1e-5, center=False,
                                                       gamma_initializer="he_uniform",
                                                       moving_variance_initializer="zeros"),
    "Dropout": lambda: L.Dropout(0.25, noise_shape=(None, 1, 1, 4), seed=7),
    "ReLU": lambda: L.ReLU(name="r"),
    "Softmax": lambda: L.Softmax(axis=1),
    "Sigmoid": lambda: L.Sigmoid(),
    "Tanh": lambda: L.Tanh(),
    "ELU": lambda: L.ELU(alpha=0.5),
    "GELU": lambda: L.GELU(),
    "LeakyReLU": lambda: L.LeakyReLU(negative_slope=0.05),
    "Activation": lambda: L.Activation("elu"),
    "RandomFlip": lambda: L.RandomFlip("vertical", seed=3),
    "RandomTranslation": lambda: L.RandomTranslation((-0.1, 0.2), 0.15, fill_mode="constant",
                                                     interpolation="nearest", seed=4, fill_value=0.5),
    "Linear": lambda: L.activations.Linear(),
}


def every_layer_class():
    return sorted({cls.__name__: cls for cls in L.layer_classes().values()}.items())


@pytest.mark.parametrize("name,cls", every_layer_class())
def test_every_layer_round_trips_through_its_config(name, cls):
    layer = FACTORIES[name]() if name in FACTORIES else cls()  # a new layer with required arguments: add it
    config = layer.get_config()
    assert {"name", "dtype"} <= set(config)
    again = cls.from_config(config)
    assert type(again) is cls
    assert again.get_config() == config
    # through JSON (tuples become lists) and the registry
    text = json.dumps(L.serialize(layer))
    back = L.deserialize(json.loads(text))
    assert type(back) is cls
    assert json.dumps(L.serialize(back)) == text


def test_every_registered_layer_has_a_factory_with_non_default_arguments():
    missing = [name for name, _ in every_layer_class() if name not in FACTORIES]
    assert not missing, f"add a factory for {missing} to FACTORIES (arguments away from the defaults)"


def test_configs_use_keras_keys_and_values():
    c = FACTORIES["Conv2D"]().get_config()
    assert c == {"name": "c", "dtype": "float32", "trainable": True, "input_shape": (8, 8, 3), "filters": 4,
                 "kernel_size": (3, 2),
                 "strides": (2, 1), "padding": "same", "activation": "relu", "use_bias": False,
                 "kernel_initializer": "he_normal", "bias_initializer": "ones",
                 "kernel_regularizer": {"class_name": "L2", "config": {"l2": 1e-3}},
                 "bias_regularizer": {"class_name": "L1", "config": {"l1": 0.01}}}
    d = L.Dense(3).get_config()
    assert d["activation"] == "linear" and d["kernel_regularizer"] is None
    # an activation a name would rebuild differently is kept as a layer config
    leaky = FACTORIES["Dense"]().get_config()["activation"]
    assert leaky == {"class_name": "LeakyReLU", "config": {"name": None, "dtype": "float32", "trainable": True,
                                                           "negative_slope": 0.1}}
    assert L.Dense(3, activation="leaky_relu").get_config()["activation"] == "leaky_relu"
    bn = L.BatchNormalization().get_config()
    assert {k: bn[k] for k in ("axis", "momentum", "epsilon", "center", "scale")} == \
        {"axis": -1, "momentum": 0.99, "epsilon": 1e-3, "center": True, "scale": True}


def test_rebuilt_layers_compute_the_same_function():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    for make in (FACTORIES["Conv2D"], lambda: L.Dense(4, activation=L.LeakyReLU(0.1)), FACTORIES["Softmax"]):
        a = make()
        inp = x if not isinstance(a, L.Dense) else x.reshape(2, -1)
        ya = a.forward(inp)
        b = L.deserialize(json.loads(json.dumps(L.serialize(a))))
        b.build(inp.shape[1:])
        b.set_weights(a.get_weights())
        assert np.array_equal(b.forward(inp), ya)


def test_a_config_that_cannot_be_saved_is_refused_with_the_reason():
    def my_init(shape, dtype):
        return np.zeros(shape, dtype)

    with pytest.raises(ValueError, match="my_init.*custom callable"):
        L.Dense(3, kernel_initializer=my_init).get_config()


def test_deserialize_refuses_unknown_classes_and_bad_configs():
    with pytest.raises(ValueError, match="unknown layer class 'Conv2d'.*Conv2D"):
        L.deserialize({"class_name": "Conv2d", "config": {}})
    with pytest.raises(ValueError, match="Dense refuses its config"):
        L.deserialize({"class_name": "Dense", "config": {"units": 3, "kernel_constrant": None}})  # a typo
    # Keras 3 writes kernel_constraint=None into every config: that one loads (npcnn has no constraints),
    # any real constraint is refused by name
    assert L.deserialize({"class_name": "Dense", "config": {"units": 3, "kernel_constraint": None}}).units == 3
    with pytest.raises(ValueError, match="kernel_constraint"):
        L.deserialize({"class_name": "Dense", "config": {"units": 3, "kernel_constraint": {"class_name": "NonNeg"}}})
    with pytest.raises(ValueError, match="class_name"):
        L.deserialize(["Dense"])


# ------------------------------------------------------------------------------------------- models
def toolbox_model(compile=True, optimizer="adam"):
    """Conv2D / BatchNormalization / pooling / Dropout / Dense, with a regularizer and an activation layer."""
    model = Sequential([
        L.Conv2D(4, 3, padding="same", input_shape=(10, 10, 3), kernel_regularizer=regularizers.L2(1e-4)),
        L.BatchNormalization(),
        L.Activation("relu"),
        L.MaxPooling2D(),
        L.Conv2D(6, 3, activation="relu"),
        L.AveragePooling2D(),
        L.Dropout(0.3),
        L.Flatten(),
        L.Dense(8, activation="relu"),
        L.Dense(5, activation="softmax"),
    ])
    if compile:
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data(n=24):
    rng = np.random.default_rng(1)
    return rng.random((n, 10, 10, 3)).astype(np.float32), rng.integers(0, 5, n)


def test_model_json_round_trip():
    set_random_seed(0)
    model = toolbox_model(compile=False)
    text = model.to_json()
    cfg = json.loads(text)
    assert cfg["class_name"] == "Sequential" and cfg["npcnn_version"] == npcnn.__version__
    assert [c["class_name"] for c in cfg["config"]["layers"]][:3] == ["Conv2D", "BatchNormalization", "Activation"]
    assert cfg["config"]["build_input_shape"] == [None, 10, 10, 3]
    again = model_from_json(text)
    assert again.to_json() == text
    assert again.built and not again.compiled
    assert [layer.name for layer in again.layers] == [layer.name for layer in model.layers]
    assert [w.shape for w in again.get_weights()] == [w.shape for w in model.get_weights()]
    again.add(L.Dense(3))  # a later layer gets a fresh default name, as it would in the saved model
    assert again.layers[-1].name == "dense_2"


def test_model_json_of_a_model_built_with_build():
    model = Sequential([L.Conv2D(2, 3), L.Flatten(), L.Dense(2)])
    model.build((None, 6, 6, 1))
    again = model_from_json(model.to_json())
    assert again.built and again.input_shape == (6, 6, 1)


def test_model_from_json_refuses_what_is_not_a_model():
    with pytest.raises(ValueError, match="not a model's JSON"):
        model_from_json("{nope")
    with pytest.raises(ValueError, match="Sequential"):
        model_from_json(json.dumps({"class_name": "Functional", "config": {}}))
    bad = json.loads(toolbox_model(compile=False).to_json())
    bad["config"]["layers"][1]["class_name"] = "BatchNorm"
    with pytest.raises(ValueError, match="layer 1: .*unknown layer class 'BatchNorm'"):
        model_from_json(json.dumps(bad))


def test_saved_model_predicts_bit_identically(tmp_path):
    set_random_seed(0)
    model = toolbox_model()
    x, y = data()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # moving statistics and Adam's moments move
    path = model.save(tmp_path / "model.npcnn")
    assert path == str(tmp_path / "model.npcnn")
    loaded = load_model(tmp_path / "model.npcnn")
    assert np.array_equal(loaded.predict(x), model.predict(x))
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert loaded.to_json() == model.to_json()
    assert loaded.compiled and type(loaded.optimizer) is Adam and loaded.metrics == ["accuracy"]
    assert type(loaded.loss) is type(model.loss)
    assert loaded.optimizer.iterations == model.optimizer.iterations == 3
    assert loaded.layers[0].kernel_regularizer == regularizers.L2(1e-4)
    assert np.isclose(loaded.evaluate(x, y, verbose=0)[0], model.evaluate(x, y, verbose=0)[0], rtol=0, atol=0)


def test_the_file_is_one_plain_npz_without_pickle(tmp_path):
    set_random_seed(0)
    model = toolbox_model()
    model.fit(*data(), epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        names = set(f.files)
        meta = json.loads(str(f["npcnn_model"]))
    assert {f"weights/{n}" for n, _, _ in saving.weight_entries(model)} <= names
    assert "optimizer/iterations" in names and "optimizer/slot0_m" in names
    assert meta["format"] == "npcnn-model" and meta["version"] == 1 and meta["optimizer_state"]
    assert set(meta["compile"]["optimizer"]) == {"class_name", "config"}
    assert meta["compile"]["optimizer"]["class_name"] == "Adam"
    assert meta["compile"]["optimizer"]["config"]["learning_rate"] == 0.001
    assert meta["compile"]["loss"]["class_name"] == "SparseCategoricalCrossentropy"
    assert meta["compile"]["metrics"] == ["accuracy"]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writer left no temporary file


@pytest.mark.parametrize("optimizer", [lambda: Adam(learning_rate=0.003, beta_1=0.8),
                                       lambda: SGD(learning_rate=0.05, momentum=0.9, nesterov=True)])
def test_a_compiled_model_resumes_training_identically_after_save_and_load(tmp_path, optimizer):
    set_random_seed(0)
    model = toolbox_model(optimizer=optimizer())
    x, y = data()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.npcnn")
    loaded = load_model(tmp_path / "m.npcnn")
    assert loaded.optimizer.get_state(loaded.params).keys() == model.optimizer.get_state(model.params).keys()
    for k, v in model.optimizer.get_state(model.params).items():
        assert np.array_equal(loaded.optimizer.get_state(loaded.params)[k], v)
    set_random_seed(5)  # the same shuffles and Dropout masks for both continuations
    h1 = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    set_random_seed(5)
    h2 = loaded.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert h1.history == h2.history
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        assert np.array_equal(a, b)


def test_without_the_optimizer_state_the_settings_are_kept(tmp_path):
    set_random_seed(0)
    model = toolbox_model(optimizer=SGD(learning_rate=0.02, momentum=0.5))
    model.fit(*data(), epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.npcnn", include_optimizer=False)
    with np.load(tmp_path / "m.npcnn", allow_pickle=False) as f:
        assert not [k for k in f.files if k.startswith("optimizer/")]
    loaded = load_model(tmp_path / "m.npcnn")
    assert type(loaded.optimizer) is SGD and loaded.optimizer.iterations == 0
    assert (loaded.optimizer.learning_rate, loaded.optimizer.momentum) == (0.02, 0.5)
    assert not load_model(tmp_path / "m.npcnn", compile=False).compiled


def test_an_uncompiled_model_saves_and_loads_uncompiled(tmp_path):
    set_random_seed(0)
    model = toolbox_model(compile=False)
    model.save(tmp_path / "m.npcnn")
    loaded = load_model(tmp_path / "m.npcnn")
    assert not loaded.compiled
    x, _ = data(4)
    assert np.array_equal(loaded.predict(x), model.predict(x))


def test_save_refuses_unbuilt_models_and_keras_suffixes(tmp_path):
    with pytest.raises(npcnn.utils.NotBuiltError):
        Sequential([L.Dense(2)]).save(tmp_path / "m.npcnn")
    with pytest.raises(ValueError, match="not Keras's"):
        toolbox_model().save(tmp_path / "m.keras")


def test_a_failed_save_leaves_the_old_file(tmp_path):
    set_random_seed(0)
    model = toolbox_model()
    model.save(tmp_path / "m.npcnn")
    before = (tmp_path / "m.npcnn").read_bytes()

    def my_init(shape, dtype):
        return np.ones(shape, dtype)

    model.add(L.Dense(3, kernel_initializer=my_init))
    with pytest.raises(ValueError, match="custom callable"):
        model.save(tmp_path / "m.npcnn")
    assert (tmp_path / "m.npcnn").read_bytes() == before


def test_load_model_refuses_bad_and_foreign_files(tmp_path):
    set_random_seed(0)
    model = toolbox_model()
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.npcnn")
    model.save_weights(tmp_path / "w.npz")
    with pytest.raises(ValueError, match="is not an npcnn model file.*save_weights"):
        load_model(tmp_path / "w.npz")
    model.fit(*data(8), epochs=1, verbose=0)
    save_checkpoint(tmp_path / "ckpt.npz", model, epoch=1)
    with pytest.raises(ValueError, match="training checkpoint"):
        load_model(tmp_path / "ckpt.npz")
    (tmp_path / "text.npcnn").write_text("hello")
    with pytest.raises(ValueError, match="not an npcnn model file"):
        load_model(tmp_path / "text.npcnn")
    with pytest.raises(ValueError, match="Keras file"):
        load_model(tmp_path / "x.weights.h5")

    model.save(tmp_path / "good.npcnn")
    with np.load(tmp_path / "good.npcnn", allow_pickle=False) as f:
        good = {k: f[k] for k in f.files}

    def variant(name, **changes):
        arrays = dict(good)
        for k, v in changes.items():
            if v is None:
                arrays.pop(k)
            else:
                arrays[k] = v
        return saving.write_npz(tmp_path / name, arrays)

    meta = json.loads(str(good["npcnn_model"]))
    cases = {
        "notjson": ({"npcnn_model": np.array("{not json")}, "not the JSON of an npcnn model"),
        "version": ({"npcnn_model": np.array(json.dumps({**meta, "version": 99}))}, "format version 99"),
        "missing": ({"weights/dense/bias": None}, r"\['dense/bias'\] are listed but missing"),
        "foreign": ({"extra": np.zeros(2)}, "unexpected member 'extra'"),
        "shape": ({"weights/dense/bias": np.zeros(9, np.float32)}, "dense/bias: expected shape"),
        "nan": ({"weights/dense/bias": np.full(8, np.nan, np.float32)}, "NaN"),
        "optstate": ({"optimizer/slot0_m": np.zeros(3, np.float32)}, "optimizer state does not fit"),
    }
    for name, (changes, message) in cases.items():
        path = variant(name + ".npcnn", **changes)
        with pytest.raises(ValueError, match=message):
            load_model(path)
    # a pickled member is refused by the checked reader, before anything is unpickled
    with zipfile.ZipFile(tmp_path / "pickled.npcnn", "w") as z:
        with z.open("npcnn_model.npy", "w") as m:
            np.lib.format.write_array(m, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled"):
        load_model(tmp_path / "pickled.npcnn")


def test_compile_settings_of_every_kind_round_trip(tmp_path):
    """Another optimizer with a schedule, a loss with arguments, metric objects with arguments."""
    from npcnn import losses, metrics, optimizers, schedules

    set_random_seed(0)
    model = toolbox_model(compile=False)
    model.compile(optimizer=optimizers.AdamW(learning_rate=schedules.ExponentialDecay(0.01, 3, 0.5),
                                             weight_decay=0.01, beta_1=0.8),
                  loss=losses.CategoricalCrossentropy(label_smoothing=0.1),
                  metrics=["categorical_accuracy", metrics.TopKCategoricalAccuracy(k=2)])
    x, labels = data()
    y = np.eye(5, dtype=np.float32)[labels]
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.npcnn")
    loaded = load_model(tmp_path / "m.npcnn")
    assert type(loaded.optimizer) is optimizers.AdamW
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert type(loaded.loss) is losses.CategoricalCrossentropy and loaded.loss.label_smoothing == 0.1
    assert loaded.metrics[0] == "categorical_accuracy"
    assert type(loaded.metrics[1]) is metrics.TopKCategoricalAccuracy and loaded.metrics[1].k == 2
    set_random_seed(3)
    h1 = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    set_random_seed(3)
    h2 = loaded.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert h1.history == h2.history
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        assert np.array_equal(a, b)
