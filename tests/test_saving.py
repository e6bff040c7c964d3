"""npcnn.saving: weight names and order (params, then buffers), the checked .npz reader (headers checked
against the archive before any allocation), float32 range, atomic writes, history files."""

import io
import json
import os
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

import npcnn
from npcnn import saving
from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from npcnn.models import Sequential


def small():
    m = Sequential([Conv2D(4, 3, activation="relu", input_shape=(8, 8, 3)), MaxPooling2D(2), Flatten(),
                    Dense(5, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def fake_model():
    """Two layers, the second with a buffer (as BatchNormalization's moving statistics will be)."""
    a = SimpleNamespace(name="dense", params={"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)})
    b = SimpleNamespace(name="bn", params={"gamma": np.ones(3, np.float32)},
                        buffers={"moving_mean": np.full(3, 0.5, np.float32)})
    return SimpleNamespace(layers=[a, b], _require_built=lambda where: None)


@pytest.fixture(autouse=True)
def _seed():
    npcnn.set_random_seed(0)


def test_weight_entries_keras_order_params_then_buffers():
    m = fake_model()
    assert [(n, t) for n, _, t in saving.weight_entries(m)] == [
        ("dense/kernel", True), ("dense/bias", True), ("bn/gamma", True), ("bn/moving_mean", False)]
    assert saving.weight_entries(m)[3][1] is m.layers[1].buffers["moving_mean"]  # the model's own array
    assert [w.shape for w in saving.get_weights(m)] == [(2, 3), (3,), (3,), (3,)]


def test_buffers_are_saved_loaded_and_set(tmp_path):
    m = fake_model()
    saving.save_weights(m, tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["bn/gamma", "bn/moving_mean", "dense/bias", "dense/kernel"]
    other = fake_model()
    other.layers[1].buffers["moving_mean"][:] = 0
    saving.load_weights(other, tmp_path / "w.npz")
    np.testing.assert_array_equal(other.layers[1].buffers["moving_mean"], 0.5)
    weights = saving.get_weights(m)
    weights[3] = np.full(3, 2.0)
    saving.set_weights(other, weights)
    np.testing.assert_array_equal(other.layers[1].buffers["moving_mean"], 2.0)
    with pytest.raises(ValueError, match=r"array 3 \(layer 'bn' moving_mean, shape \(3,\)\): missing"):
        saving.set_weights(other, weights[:3])


def test_set_weights_refuses_values_beyond_float32():
    """Issue 11 item 7: 1e300 in a float64 array would become Inf in the float32 model."""
    m = small()
    before = m.get_weights()
    weights = [w.astype(np.float64) for w in before]
    weights[3][1] = 1e300
    with pytest.raises(ValueError, match=r"array 3 \(layer 'dense' bias\): holds values beyond float32's range"):
        saving.set_weights(m, weights)
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)  # nothing changed
    weights[3][1] = 3e38  # within range: accepted
    saving.set_weights(m, weights)
    assert np.isfinite(m.get_weights()[3]).all()


def test_load_weights_refuses_values_beyond_float32(tmp_path):
    m = small()
    stored = {name: a.astype(np.float64) for name, a, _ in saving.weight_entries(m)}
    stored["conv2d/kernel"].flat[5] = -1e300
    np.savez(tmp_path / "big.npz", **stored)
    before = m.get_weights()
    with pytest.raises(ValueError, match=r"(?s)weights do not match the model:.*conv2d/kernel: holds values beyond "
                                         r"float32's range"):
        saving.load_weights(m, tmp_path / "big.npz")
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_model_and_layer_api_refuse_values_beyond_float32(tmp_path):
    """Through Sequential.set_weights / load_weights and Layer.set_weights (which delegate to npcnn.saving)."""
    m = small()
    weights = [w.astype(np.float64) for w in m.get_weights()]
    weights[1][0] = 1e300
    with pytest.raises(ValueError, match="beyond float32's range"):
        m.set_weights(weights)
    with pytest.raises(ValueError, match="beyond float32's range"):
        m.layers[0].set_weights(weights[:2])
    np.savez(tmp_path / "w.npz", **{name: w for (name, _, _), w in zip(saving.weight_entries(m), weights)})
    with pytest.raises(ValueError, match="conv2d/bias: holds values beyond float32's range"):
        m.load_weights(tmp_path / "w.npz")
    assert np.isfinite(m.layers[0].params["bias"]).all()


def test_float64_model_accepts_large_values():
    a = SimpleNamespace(name="d", params={"kernel": np.zeros(2, np.float64)})
    m = SimpleNamespace(layers=[a], _require_built=lambda where: None)
    saving.set_weights(m, [np.array([1e300, -1e300])])
    assert a.params["kernel"][0] == 1e300


def forged_npz(path, shape=(10**11,), descr="<f8", payload=b"\0" * 64, name="conv2d/kernel.npy"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, buf.getvalue() + payload)
    return path


def test_declared_size_beyond_the_file_is_refused_before_allocating(tmp_path, monkeypatch):
    """Issue 11 item 8: a ~300-byte .npz whose header claims shape (10**11,) raised MemoryError."""
    path = forged_npz(tmp_path / "forged.npz")
    assert os.path.getsize(path) < 400
    calls = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: calls.append(a) or real_load(*a, **k))
    with pytest.raises(ValueError, match=r"load_weights: '.*forged.npz' is not an npcnn weights file .*: member "
                                         r"'conv2d/kernel.npy' declares shape \(100000000000,\) of float64 "
                                         r"\(800,000,000,000 bytes\) but holds 64 bytes"):
        saving.load_weights(small(), path)
    assert calls == []  # refused from the headers alone: NumPy never started reading an array
    with pytest.raises(ValueError, match="declares shape"):
        small().load_weights(path)


def test_forged_zip_directory_sizes_are_refused(tmp_path):
    """A member whose directory entry claims far more bytes than the archive holds (a forged file_size)."""
    path = forged_npz(tmp_path / "f.npz", shape=(4,), payload=b"\0" * 32)
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24:central + 28] = (10**9).to_bytes(4, "little")  # uncompressed size in the central directory
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"claims 1,000,000,000 bytes in \d+ stored bytes"):
        saving.read_npz(path, "load_weights", saving.WEIGHTS_FILE)


@pytest.mark.parametrize("shape,payload", [((3,), b"\0" * 64), ((10,), b"\0" * 8)])
def test_header_and_data_must_agree(tmp_path, shape, payload):
    path = forged_npz(tmp_path / "x.npz", shape=shape, payload=payload)
    with pytest.raises(ValueError, match="declares shape .* but holds .* truncated or corrupt"):
        saving.read_npz(path, "load_weights", saving.WEIGHTS_FILE)


def test_reader_refuses_what_it_always_refused(tmp_path):
    where, what = "load_weights", saving.WEIGHTS_FILE
    np.save(tmp_path / "a.npy", np.zeros(3))
    (tmp_path / "t.npz").write_text("hello")
    (tmp_path / "empty.npz").write_bytes(b"")
    cases = {tmp_path / "a.npy": "a .npy array", tmp_path / "t.npz": "not a zip archive",
             tmp_path / "empty.npz": "an empty file", tmp_path: "it is a directory"}
    for path, why in cases.items():
        with pytest.raises(ValueError, match=why):
            saving.read_npz(path, where, what)
    with zipfile.ZipFile(tmp_path / "obj.npz", "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        z.writestr("w.npy", buf.getvalue())
    with pytest.raises(ValueError, match="pickled objects, which npcnn never loads"):
        saving.read_npz(tmp_path / "obj.npz", where, what)
    with zipfile.ZipFile(tmp_path / "foreign.npz", "w") as z:
        z.writestr("notes.txt", "x")
    with pytest.raises(ValueError, match=r"non-array members \['notes.txt'\]"):
        saving.read_npz(tmp_path / "foreign.npz", where, what)
    with pytest.raises(FileNotFoundError, match="load_weights: no such file"):
        saving.read_npz(tmp_path / "none.npz", where, what)


def test_compressed_npz_is_read(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", a=np.zeros((100, 100), np.float32), b=np.arange(5))
    out = saving.read_npz(tmp_path / "c.npz", "x", "y")
    assert out["a"].shape == (100, 100) and out["b"].tolist() == [0, 1, 2, 3, 4]


def test_custom_error(tmp_path):
    (tmp_path / "t.npz").write_text("hello")

    class Mine(ValueError):
        pass

    with pytest.raises(Mine, match="why=not a zip archive exc=None"):
        saving.read_npz(tmp_path / "t.npz", "w", "x", error=lambda reason, exc: Mine(f"why={reason} exc={exc}"))


def test_write_npz_is_atomic(tmp_path, monkeypatch):
    path = saving.write_npz(tmp_path / "w.npz", {"a": np.ones(3)})
    before = open(path, "rb").read()

    def half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        saving.write_npz(path, {"a": np.zeros(3)})
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["w.npz"]


def test_history_roundtrip_and_atomic(tmp_path, monkeypatch):
    h = SimpleNamespace(history={"loss": [1.0, 0.5], "val_loss": [1.2, float("nan")]}, epoch=[0, 1])
    path = saving.save_history(h, tmp_path / "h.json")
    loaded = saving.load_history(path)
    assert loaded["loss"] == [1.0, 0.5] and np.isnan(loaded["val_loss"][1])
    assert json.loads((tmp_path / "h.json").read_text().replace("NaN", "null"))["epoch"] == [0, 1]
    before = (tmp_path / "h.json").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", fail)
    with pytest.raises(OSError, match="disk full"):
        saving.save_history({"loss": [3.0]}, tmp_path / "h.json")
    assert (tmp_path / "h.json").read_bytes() == before  # save_history wrote in place before
    assert os.listdir(tmp_path) == ["h.json"]


def test_load_history_errors(tmp_path):
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="does not hold a history"):
        saving.load_history(tmp_path / "bad.json")
    (tmp_path / "notjson.json").write_text("{")
    with pytest.raises(ValueError, match="is not JSON"):
        saving.load_history(tmp_path / "notjson.json")
    np.savez(tmp_path / "w.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="does not hold a history"):
        saving.load_history(tmp_path / "w.npz")


def test_saving_imports_neither_models_nor_layers():
    import ast

    tree = ast.parse(open(saving.__file__).read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and (m.startswith("npcnn.models") or m.startswith("npcnn.layers")
                          or m.startswith("npcnn.checkpoint")) for m in imported), imported
