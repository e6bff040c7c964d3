"""npcnn.datasets.cifar10: layout, search order, safe unpickling, errors, download; all without network.

The archives are small fakes in the official layout, built here. An opt-in test reads the real
local copy (``$NPCNN_CIFAR10_DIR``, default /tmp/cifar) and is skipped when it is absent.
"""

import functools
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading

import numpy as np
import pytest

from npcnn.datasets import cifar10
from npcnn.datasets.cifar10 import CIFAR10FormatError, DataUnavailableError

PER_BATCH = 12
TEST_N = 8


def _batch_dict(rng, n, name):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    return {b"batch_label": name.encode(), b"labels": labels, b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def _py2_pickle(obj):
    """What Python 2's cPickle (protocol 2) with NumPy 1 writes, as in the official files:
    py2 ``str`` as SHORT_BINSTRING/BINSTRING, arrays via numpy.core.multiarray._reconstruct."""
    out = bytearray(b"\x80\x02")

    def string(b):
        out.extend(b"U" + struct.pack("<B", len(b)) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b)

    def integer(v):
        out.extend(b"K" + struct.pack("<B", v) if 0 <= v < 256 else b"J" + struct.pack("<i", v))

    def emit(o):
        if isinstance(o, bytes):
            string(o)
        elif isinstance(o, bool) or o is None:
            out.extend({True: b"\x88", False: b"\x89", None: b"N"}[o])
        elif isinstance(o, int):
            integer(o)
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for v in o:
                emit(v)
            out.extend(b"t")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            emit((0,))
            emit(b"b")
            out.extend(b"\x87R")  # TUPLE3, REDUCE
            out.extend(b"(")
            emit(1)
            emit(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            emit((b"u1", 0, 1))
            out.extend(b"R")
            emit((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD the dtype
            emit(False)
            emit(o.tobytes())
            out.extend(b"tb")  # the state tuple, BUILD the array
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _dump(d, protocol=4, py2=False):
    return _py2_pickle(d) if py2 else pickle.dumps(d, protocol=protocol)


def make_fake_cifar(root, tarball=False, keep_folder=True, protocol=4, py2=False, seed=0):
    """Write root/cifar-10-batches-py (and/or root/cifar-10-python.tar.gz); return the expected arrays."""
    rng = np.random.default_rng(seed)
    files = {}
    for name in cifar10.TRAIN_FILES:
        files[name] = _batch_dict(rng, PER_BATCH, name)
    files[cifar10.TEST_FILE] = _batch_dict(rng, TEST_N, cifar10.TEST_FILE)
    meta = {b"num_cases_per_batch": PER_BATCH, b"label_names": [c.encode() for c in cifar10.CLASS_NAMES],
            b"num_vis": 3072}
    blobs = {name: _dump(d, protocol, py2) for name, d in files.items()}
    blobs["batches.meta"] = _dump(meta, protocol, py2)
    blobs["readme.html"] = b"<html></html>"
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(root, exist_ok=True)
    if tarball:
        with tarfile.open(os.path.join(root, "cifar-10-python.tar.gz"), "w:gz") as tar:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    if keep_folder:
        os.makedirs(folder, exist_ok=True)
        for name, blob in blobs.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(blob)
    x_train = np.concatenate([files[n][b"data"] for n in cifar10.TRAIN_FILES])
    y_train = np.concatenate([files[n][b"labels"] for n in cifar10.TRAIN_FILES])
    test = files[cifar10.TEST_FILE]
    return (x_train, y_train), (test[b"data"], np.array(test[b"labels"]))


def check_matches(loaded, expected):
    (x_train, y_train), (x_test, y_test) = loaded
    (ex_train, ey_train), (ex_test, ey_test) = expected
    assert x_train.shape == (5 * PER_BATCH, 32, 32, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (TEST_N, 32, 32, 3) and x_test.dtype == np.uint8
    assert y_train.shape == (5 * PER_BATCH, 1) and y_train.dtype == np.uint8
    assert y_test.shape == (TEST_N, 1) and y_test.dtype == np.uint8
    # Keras's layout: row = 1024 red, 1024 green, 1024 blue values, each 32x32 row-major -> NHWC.
    for i, (h, w, c) in enumerate([(0, 0, 0), (3, 17, 1), (31, 31, 2), (10, 0, 2)]):
        assert x_train[i, h, w, c] == ex_train[i, c * 1024 + h * 32 + w]
        assert x_test[i, h, w, c] == ex_test[i, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(x_train, ex_train.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(x_test, ex_test.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y_train[:, 0], ey_train)
    np.testing.assert_array_equal(y_test[:, 0], ey_test)
    assert x_train.flags.c_contiguous and x_test.flags.c_contiguous


@pytest.fixture
def no_download(monkeypatch):
    """Any download attempt fails at once (a closed local port), never touching the network."""
    monkeypatch.setattr(cifar10, "URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    monkeypatch.setenv(cifar10.ENV_URL, "http://127.0.0.1:9/cifar-10-python.tar.gz")


# ---------------------------------------------------------------------------- where it looks
def test_folder_holding_batches(tmp_path):
    expected = make_fake_cifar(tmp_path)
    check_matches(cifar10.load_data(tmp_path), expected)


def test_batches_folder_itself(tmp_path):
    expected = make_fake_cifar(tmp_path)
    check_matches(cifar10.load_data(tmp_path / "cifar-10-batches-py"), expected)


def test_archive_is_extracted_once(tmp_path):
    expected = make_fake_cifar(tmp_path, tarball=True, keep_folder=False)
    check_matches(cifar10.load_data(str(tmp_path)), expected)
    folder = tmp_path / "cifar-10-batches-py"
    assert sorted(os.listdir(folder)) == sorted(
        list(cifar10.REQUIRED_FILES) + ["batches.meta", "readme.html"])
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no leftover temporary folder
    os.remove(tmp_path / "cifar-10-python.tar.gz")  # now the extracted folder alone is enough
    check_matches(cifar10.load_data(str(tmp_path)), expected)


def test_archive_path_itself(tmp_path):
    expected = make_fake_cifar(tmp_path, tarball=True, keep_folder=False)
    check_matches(cifar10.load_data(tmp_path / "cifar-10-python.tar.gz"), expected)


def test_env_var_and_cache_dir(tmp_path, monkeypatch, no_download):
    expected = make_fake_cifar(tmp_path / "env")
    monkeypatch.setenv("NPCNN_DATA_DIR", str(tmp_path / "env"))
    check_matches(cifar10.load_data(), expected)
    # without the variable: the per-user cache folder from platformdirs
    import platformdirs

    monkeypatch.delenv("NPCNN_DATA_DIR")
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda *a, **k: str(tmp_path / "cache"))
    assert cifar10.default_data_dir() == str(tmp_path / "cache" / "datasets")
    with pytest.raises(DataUnavailableError, match="cache"):
        cifar10.load_data()
    expected2 = make_fake_cifar(tmp_path / "cache" / "datasets", seed=1)
    check_matches(cifar10.load_data(), expected2)


def test_py2_style_official_pickles(tmp_path):
    """The official files were written by Python 2 + NumPy 1 (protocol 2, numpy.core.multiarray)."""
    expected = make_fake_cifar(tmp_path, py2=True)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:  # plain pickle reads it too
        assert pickle.load(f, encoding="bytes")[b"data"].shape == (PER_BATCH, 3072)
    assert b"numpy.core.multiarray" in (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    check_matches(cifar10.load_data(tmp_path), expected)
    assert cifar10.load_meta(tmp_path) == list(cifar10.CLASS_NAMES)


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_python3_low_protocol_pickles(tmp_path, protocol):
    """Python 3 writes bytes at protocols 0-2 through ``_codecs.encode(str, 'latin1')`` (issue 11 item 14)."""
    expected = make_fake_cifar(tmp_path, protocol=protocol)
    assert b"_codecs" in (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    check_matches(cifar10.load_data(tmp_path), expected)
    assert cifar10.load_meta(tmp_path) == list(cifar10.CLASS_NAMES)


class _Encode:
    """Pickles as a call of ``_codecs.encode(*args)``."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        import _codecs

        return (_codecs.encode, self.args)


@pytest.mark.parametrize("args", [("abc", "utf-8"), ("abc", "rot13"), (b"abc", "latin1"), ("abc", "latin1", "ignore"),
                                  ("abc",), ("abc", "no-such-codec"), (3, "latin1")])
def test_codecs_encode_only_for_latin1_strings(tmp_path, args):
    make_fake_cifar(tmp_path)
    d = _batch_dict(np.random.default_rng(0), PER_BATCH, "data_batch_1")
    d[b"batch_label"] = _Encode(*args)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(CIFAR10FormatError, match=r"data_batch_1.*refusing _codecs.encode"):
        cifar10.load_data(tmp_path)


def test_other_codecs_globals_are_still_forbidden(tmp_path):
    import _codecs

    class _Decode:
        def __reduce__(self):
            return (_codecs.decode, (b"abc", "latin1"))

    make_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(_Decode(), protocol=2))
    with pytest.raises(CIFAR10FormatError, match="forbidden global _codecs.decode"):
        cifar10.load_data(tmp_path)


# ---------------------------------------------------------------------------- hostile and broken files
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _EvilExec:
    def __reduce__(self):
        return (exec, ("import os; os.environ['NPCNN_PWNED'] = '1'",))


@pytest.mark.parametrize("payload", ["open", "exec", "inside_dict"])
def test_crafted_pickle_runs_nothing(tmp_path, payload, monkeypatch):
    monkeypatch.delenv("NPCNN_PWNED", raising=False)
    make_fake_cifar(tmp_path)
    marker = tmp_path / "pwned"
    evil = {"open": _Evil(str(marker)), "exec": _EvilExec()}.get(payload)
    if payload == "inside_dict":
        d = _batch_dict(np.random.default_rng(0), PER_BATCH, "data_batch_2")
        d[b"extra"] = _Evil(str(marker))
        evil = d
    target = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    target.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(CIFAR10FormatError, match="data_batch_2.*forbidden global"):
        cifar10.load_data(tmp_path)
    assert not marker.exists()
    assert "NPCNN_PWNED" not in os.environ


def test_object_arrays_refused(tmp_path):
    make_fake_cifar(tmp_path)
    d = _batch_dict(np.random.default_rng(0), PER_BATCH, "data_batch_1")
    d[b"data"] = d[b"data"].astype(object)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(d, protocol=4))
    with pytest.raises(CIFAR10FormatError, match="data_batch_1"):
        cifar10.load_data(tmp_path)


@pytest.mark.parametrize("cut", [0, 10, 1000, -5])
def test_truncated_file_names_it(tmp_path, cut):
    make_fake_cifar(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "test_batch"
    raw = target.read_bytes()
    target.write_bytes(raw[:cut])
    with pytest.raises(CIFAR10FormatError, match="test_batch"):
        cifar10.load_data(tmp_path)


@pytest.mark.parametrize("mutate, why", [
    (lambda d: d.pop(b"data"), "no 'data'"),
    (lambda d: d.__setitem__(b"data", d[b"data"][:, :100]), "shape"),
    (lambda d: d.__setitem__(b"data", d[b"data"].astype(np.float32)), "uint8"),
    (lambda d: d.__setitem__(b"labels", d[b"labels"][:-1]), "labels"),
    (lambda d: d.__setitem__(b"labels", [11] * PER_BATCH), r"\[0, 9\]"),
    (lambda d: d.clear() or d.update({b"data": "nope", b"labels": []}), "'data' must be"),
])
def test_malformed_batch(tmp_path, mutate, why):
    make_fake_cifar(tmp_path)
    d = _batch_dict(np.random.default_rng(0), PER_BATCH, "data_batch_4")
    mutate(d)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").write_bytes(pickle.dumps(d, protocol=4))
    with pytest.raises(CIFAR10FormatError, match=f"data_batch_4.*{why}"):
        cifar10.load_data(tmp_path)


def test_not_a_dict(tmp_path):
    make_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CIFAR10FormatError, match="data_batch_1.*expected a dict"):
        cifar10.load_data(tmp_path)


def test_incomplete_folder(tmp_path, no_download):
    make_fake_cifar(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_5")
    with pytest.raises(CIFAR10FormatError, match="missing data_batch_5"):
        cifar10.load_data(tmp_path)


def test_corrupt_archive_leaves_nothing(tmp_path, no_download):
    make_fake_cifar(tmp_path, tarball=True, keep_folder=False)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:3000])
    with pytest.raises(CIFAR10FormatError, match="cifar-10-python.tar.gz"):
        cifar10.load_data(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["cifar-10-python.tar.gz"]


def test_archive_without_the_batches(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../evil/data_batch_1")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(CIFAR10FormatError, match="not the CIFAR-10 python archive"):
        cifar10.load_data(tmp_path)
    assert not (tmp_path.parent / "evil").exists()


# ---------------------------------------------------------------------------- download (localhost only)
def test_offline_error_says_where_to_put_it(tmp_path, no_download):
    with pytest.raises(DataUnavailableError) as info:
        cifar10.load_data(tmp_path / "empty")
    msg = str(info.value)
    assert str(tmp_path / "empty") in msg and "cifar-10-python.tar.gz" in msg and cifar10.MD5 in msg
    assert "\n" not in msg
    assert os.listdir(tmp_path / "empty") == []  # nothing half-downloaded


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/www on localhost; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_verifies_md5_then_extracts(tmp_path, http_server, monkeypatch):
    www, base = http_server
    expected = make_fake_cifar(www, tarball=True, keep_folder=False)
    blob = (www / "cifar-10-python.tar.gz").read_bytes()
    monkeypatch.setenv(cifar10.ENV_URL, base + "/cifar-10-python.tar.gz")
    dest = tmp_path / "dest"
    # The real md5 does not match the fake archive: refused, and nothing left under the final name.
    with pytest.raises(DataUnavailableError, match="md5|hash"):
        cifar10.load_data(dest)
    assert not (dest / "cifar-10-python.tar.gz").exists() and not (dest / "cifar-10-batches-py").exists()
    assert os.listdir(dest) == []
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(blob).hexdigest())
    check_matches(cifar10.load_data(dest), expected)
    assert (dest / "cifar-10-python.tar.gz").read_bytes() == blob


# ---------------------------------------------------------------------------- the bundled sample
def test_load_sample():
    (x_train, y_train), (x_test, y_test) = cifar10.load_sample()
    assert x_train.shape == (1000, 32, 32, 3) and x_test.shape == (200, 32, 32, 3)
    assert x_train.dtype == x_test.dtype == y_train.dtype == y_test.dtype == np.uint8
    assert y_train.shape == (1000, 1) and y_test.shape == (200, 1)
    assert np.bincount(y_train[:, 0], minlength=10).tolist() == [100] * 10
    assert np.bincount(y_test[:, 0], minlength=10).tolist() == [20] * 10
    assert os.path.getsize(cifar10.SAMPLE_FILE) < 5e6
    assert 50 < x_train.mean() < 200 and x_train.std() > 30  # real images, not noise or zeros


def test_load_data_never_falls_back_to_the_sample(tmp_path, no_download):
    with pytest.raises(DataUnavailableError):
        cifar10.load_data(tmp_path)


# ---------------------------------------------------------------------------- opt-in: the real local copy
REAL_DIR = os.environ.get("NPCNN_CIFAR10_DIR", "/tmp/cifar")


@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isdir(os.path.join(REAL_DIR, "cifar-10-batches-py")),
                    reason=f"no local CIFAR-10 in {REAL_DIR} (set NPCNN_CIFAR10_DIR)")
def test_real_local_copy():
    (x_train, y_train), (x_test, y_test) = cifar10.load_data(REAL_DIR)
    assert x_train.shape == (50000, 32, 32, 3) and x_test.shape == (10000, 32, 32, 3)
    assert y_train.shape == (50000, 1) and y_test.shape == (10000, 1)
    assert x_train.dtype == y_train.dtype == x_test.dtype == y_test.dtype == np.uint8
    assert np.bincount(y_train[:, 0]).tolist() == [5000] * 10
    assert np.bincount(y_test[:, 0]).tolist() == [1000] * 10
    with open(os.path.join(REAL_DIR, "cifar-10-batches-py", "data_batch_2"), "rb") as f:
        d = pickle.load(f, encoding="bytes")  # the trusted local copy: compare with plain pickle
    np.testing.assert_array_equal(x_train[10000:20000], d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    # the bundled sample is taken from this copy
    with np.load(cifar10.SAMPLE_FILE) as z:
        np.testing.assert_array_equal(z["x_train"], x_train[z["source_index_train"]])
        np.testing.assert_array_equal(z["x_test"], x_test[z["source_index_test"]])
        np.testing.assert_array_equal(z["y_test"], y_test[z["source_index_test"]])
