"""Keras 3's own weight files (issue 13 item 9): ``model.load_weights("x.weights.h5")``.

The fixtures in tests/data/ were written by Keras 3.15.1 (torch backend) with
tests/data/make_keras_weights.py, which also saved Keras's predictions on fixed inputs; neither Keras
nor torch is needed here, only h5py (the tests that read .h5 files skip without it).
"""

import builtins
import pathlib
import shutil

import numpy as np
import pytest

from npcnn import layers as L
from npcnn import saving
from npcnn.models import Sequential, cifar10_cnn, load_model

DATA = pathlib.Path(__file__).parent / "data"
SMALL = DATA / "keras_cifar10_small.weights.h5"
BN = DATA / "keras_bn_model.weights.h5"


def x_fixed():
    return np.load(DATA / "keras_input.npy")


def small_model():
    """The tutorial model shrunk as in make_keras_weights.py."""
    return cifar10_cnn(input_shape=(18, 18, 3), filters=(4, 6, 5), units=8, compile=False)


def bn_model(names=True):
    """make_keras_weights.py's BatchNormalization model, with npcnn's own (here: custom) names."""
    n = (lambda s: s) if names else (lambda s: None)
    return Sequential([
        L.Conv2D(4, 3, padding="same", input_shape=(10, 10, 3), name=n("stem")),
        L.BatchNormalization(name=n("bn_a")),
        L.ReLU(),
        L.MaxPooling2D(),
        L.Conv2D(6, 3, name=n("second")),
        L.BatchNormalization(name=n("bn_b")),
        L.Dropout(0.3),
        L.Flatten(),
        L.Dense(5, activation="softmax", name=n("head")),
    ])


def test_the_fixtures_are_what_the_script_says():
    h5py = pytest.importorskip("h5py")
    with h5py.File(SMALL, "r") as f:
        groups = sorted(f["layers"])
        assert groups == ["conv2d", "conv2d_1", "conv2d_2", "dense", "dense_1", "flatten", "max_pooling2d",
                          "max_pooling2d_1"]
        assert f["layers/conv2d/vars/0"].shape == (3, 3, 3, 4)  # Keras's kernel layout (KH, KW, C, F)
    with h5py.File(BN, "r") as f:
        # Keras's layer names (attribute) differ from its addresses (groups): class + position
        assert f["layers/conv2d/vars"].attrs["name"] == "conv2d_6"
        assert len(f["layers/batch_normalization/vars"]) == 4


@pytest.mark.usefixtures("backend")
def test_the_tutorial_model_predicts_as_keras_did():
    pytest.importorskip("h5py")
    model = small_model()
    model.load_weights(str(SMALL))
    expected = np.load(DATA / "keras_cifar10_small_pred.npy")
    np.testing.assert_allclose(model.predict(x_fixed()), expected, rtol=1e-5, atol=1e-6)


def test_the_weights_are_keras_variables_in_order():
    h5py = pytest.importorskip("h5py")
    model = small_model()
    pairs = saving.load_keras_weights(model, SMALL)
    assert pairs == [("conv2d", "conv2d"), ("conv2d_1", "conv2d_1"), ("conv2d_2", "conv2d_2"),
                     ("dense", "dense"), ("dense_1", "dense_1")]
    with h5py.File(SMALL, "r") as f:
        expected = [np.array(f[f"layers/{g}/vars/{i}"]) for g, _ in pairs for i in range(2)]
    for a, b in zip(model.get_weights(), expected):
        assert a.dtype == np.float32 and np.array_equal(a, b)


@pytest.mark.usefixtures("backend")
def test_batchnorm_model_with_other_names_pairs_layers_by_class_and_position():
    pytest.importorskip("h5py")
    model = bn_model()
    pairs = saving.load_keras_weights(model, BN)
    assert pairs == [("conv2d", "stem"), ("batch_normalization", "bn_a"), ("conv2d_1", "second"),
                     ("batch_normalization_1", "bn_b"), ("dense", "head")]
    bn = model.layers[1]
    assert not np.array_equal(bn.buffers["moving_mean"], 0) and not np.array_equal(bn.buffers["moving_variance"], 1)
    expected = np.load(DATA / "keras_bn_model_pred.npy")
    np.testing.assert_allclose(model.predict(x_fixed()[:, :10, :10, :]), expected, rtol=1e-5, atol=1e-6)


def test_every_mismatch_is_listed_and_nothing_changes():
    pytest.importorskip("h5py")
    model = cifar10_cnn(input_shape=(18, 18, 3), filters=(4, 7, 5), units=9, compile=False)
    before = model.get_weights()
    with pytest.raises(ValueError) as e:
        model.load_weights(SMALL)
    msg = str(e.value)
    assert "the Keras weights do not match the model" in msg
    assert "Keras layer 'conv2d_1' (layers/conv2d_1) -> npcnn layer 'conv2d_1'" in msg
    assert "vars/0 has shape (3, 3, 4, 6), npcnn's kernel is (3, 3, 4, 7)" in msg
    assert "vars/0 has shape (5, 8), npcnn's kernel is (5, 9)" in msg
    assert "vars/0 has shape (8, 10), npcnn's kernel is (9, 10)" in msg
    assert len(msg.splitlines()) == 1 + 6
    for a, b in zip(model.get_weights(), before):
        assert np.array_equal(a, b)


def test_missing_and_left_over_layers_are_named():
    pytest.importorskip("h5py")
    model = bn_model(names=False)
    with pytest.raises(ValueError) as e:
        model.load_weights(SMALL)
    msg = str(e.value)
    assert "npcnn layer 'batch_normalization' (BatchNormalization: gamma, beta, moving_mean, moving_variance) " \
           "has no Keras layer in the file" in msg
    assert "Keras layer 'conv2d_2' (layers/conv2d_2, 2 variables [(3, 3, 6, 5), (5,)]) has no npcnn layer" in msg
    assert "Keras layer 'dense_1' (layers/dense_1" in msg


def test_not_a_keras_file(tmp_path):
    pytest.importorskip("h5py")
    model = small_model()
    (tmp_path / "x.weights.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="is not a Keras 3 weights file.*not an HDF5 file"):
        model.load_weights(tmp_path / "x.weights.h5")
    with pytest.raises(FileNotFoundError):
        model.load_weights(tmp_path / "absent.weights.h5")
    import h5py

    with h5py.File(tmp_path / "legacy.h5", "w") as f:  # Keras 2's layout: root attribute layer_names
        f.attrs["layer_names"] = [b"conv2d"]
    with pytest.raises(ValueError, match="Keras 2 \\(legacy\\)"):
        model.load_weights(tmp_path / "legacy.h5")
    with pytest.raises(ValueError, match="Keras file"):
        load_model(SMALL)


def test_a_clear_message_when_h5py_is_missing(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_h5py(name, *args, **kwargs):
        if name == "h5py" or name.startswith("h5py."):
            raise ImportError("No module named 'h5py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "h5py", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_h5py)
    shutil.copy(SMALL, tmp_path / "x.weights.h5")
    with pytest.raises(ImportError, match=r'needs h5py.*pip install -e "\.\[keras\]"'):
        small_model().load_weights(tmp_path / "x.weights.h5")
