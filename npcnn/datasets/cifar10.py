"""CIFAR-10, as ``keras.datasets.cifar10.load_data()`` returns it.

``load_data(path=None)`` gives ``(x_train, y_train), (x_test, y_test)``:
uint8 images (50000, 32, 32, 3) and (10000, 32, 32, 3), channels last, and
uint8 labels of shape (N, 1), in the order of the official files
(``data_batch_1`` ... ``data_batch_5``, then ``test_batch``).

Where it looks, in order (the first that is set wins; only that folder is used):

1. ``path``: a folder holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``,
   the ``cifar-10-batches-py`` folder itself, or the ``.tar.gz`` file;
2. the environment variable ``NPCNN_DATA_DIR``;
3. a per-user cache folder (``platformdirs.user_cache_dir("npcnn")/datasets``).

If that folder holds neither, the official archive is downloaded into it with
pooch (progress bar, md5 checked; the download goes to a temporary file that
is renamed only once verified) and extracted (into a temporary folder that is
renamed when complete). Without network and without a local copy,
:class:`DataUnavailableError` says where to put the archive. ``load_data``
never falls back to anything else; the small bundled sample is reachable only
explicitly, through :func:`load_sample`.

The batch files are pickles. They are read with a restricted unpickler that
admits only plain containers, bytes/str/numbers, NumPy's array reconstruction
and latin-1 byte strings (``_codecs.encode``, how Python 3 pickles bytes at
protocol 2), so a crafted file raises :class:`CIFAR10FormatError` and runs
nothing; a truncated or malformed file raises the same error, naming the file.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile

import numpy as np

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = TRAIN_FILES + (TEST_FILE,)
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SAMPLE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_sample.npz")

ENV_DATA_DIR = "NPCNN_DATA_DIR"
ENV_URL = "NPCNN_CIFAR10_URL"  # a mirror of the official archive (its md5 is still checked)

_IMAGE_BYTES = 3 * 32 * 32
_MAX_IMAGES_PER_FILE = 1_000_000  # a sanity bound: the official files hold 10,000 each


class DataUnavailableError(OSError):
    """No local copy of CIFAR-10 was found and it could not be downloaded."""


class CIFAR10FormatError(ValueError):
    """A CIFAR-10 file is truncated, malformed, or holds something other than the official data."""


# ---------------------------------------------------------------------------- restricted unpickling
# Exactly what the official files (pickled by Python 2 / NumPy 1) and copies written by
# NumPy 2 refer to: ndarray reconstruction and dtypes; plus ``_codecs.encode``, through which
# Python 3 writes bytes at protocols 0-2 (``_codecs.encode('...', 'latin1')``), admitted only
# as that: a str encoded as latin-1 into bytes. Nothing else can be called.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}
_LATIN_1 = codecs.lookup("latin-1").name


def _safe_dtype(*args, **kwargs):
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise pickle.UnpicklingError("refusing an object dtype")
    return dt


def _safe_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as Python 3's protocol-2 pickles of bytes use it: a str to latin-1 bytes, nothing else."""
    try:
        latin_1 = isinstance(encoding, str) and codecs.lookup(encoding).name == _LATIN_1
    except LookupError:
        latin_1 = False
    if not (isinstance(obj, str) and latin_1 and errors == "strict"):
        raise pickle.UnpicklingError(
            f"refusing _codecs.encode({type(obj).__name__}, {encoding!r}): only latin-1 byte strings are allowed"
        )
    return obj.encode("latin-1")


def _safe_reconstruct(subtype, *args):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to reconstruct {subtype!r}")
    return np.ndarray.__new__(np.ndarray, *args)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals NumPy arrays need; anything else is an error."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            if name == "_reconstruct":
                return _safe_reconstruct
            if name == "dtype":
                return _safe_dtype
            if name == "encode":
                return _safe_encode
            return np.ndarray
        raise pickle.UnpicklingError(
            f"forbidden global {module}.{name}: CIFAR-10 files hold only dicts, lists, bytes and NumPy arrays"
        )

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in CIFAR-10 files")


def restricted_load(f, encoding="bytes"):
    """Unpickle from a binary file object, admitting only containers, scalars, bytes and NumPy arrays."""
    return _RestrictedUnpickler(f, encoding=encoding).load()


def load_batch(fpath, label_key="labels"):
    """Read one CIFAR-10 batch file, as ``keras.datasets.cifar.load_batch``.

    Returns:
        (data, labels): uint8 (N, 3, 32, 32) channel-first images and a (N,) uint8 array.
    Raises:
        CIFAR10FormatError: the file is truncated, malformed, or refers to anything beyond plain
            data (a crafted pickle is refused before anything runs); the message names the file.
        FileNotFoundError: the file does not exist.
    """
    fpath = os.fspath(fpath)
    with open(fpath, "rb") as f:
        try:
            d = restricted_load(f)
        except pickle.UnpicklingError as e:
            raise CIFAR10FormatError(f"{fpath}: not a valid CIFAR-10 batch file (refused or malformed pickle: {e})") \
                from None
        except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, MemoryError,
                OverflowError, UnicodeDecodeError) as e:
            raise CIFAR10FormatError(
                f"{fpath}: not a valid CIFAR-10 batch file (truncated or malformed: {type(e).__name__}: {e})"
            ) from None
    return _check_batch(d, fpath, label_key)


def _check_batch(d, fpath, label_key):
    def bad(why):
        return CIFAR10FormatError(f"{fpath}: not a valid CIFAR-10 batch file ({why})")

    if not isinstance(d, dict):
        raise bad(f"expected a dict, got {type(d).__name__}")
    d = {k.decode("utf8") if isinstance(k, bytes) else k: v for k, v in d.items()}
    for key in ("data", label_key):
        if key not in d:
            raise bad(f"no {key!r} entry; keys are {sorted(map(str, d))}")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _IMAGE_BYTES:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise bad(f"'data' must be a uint8 array of shape (N, {_IMAGE_BYTES}), got {desc}")
    n = data.shape[0]
    if n == 0 or n > _MAX_IMAGES_PER_FILE:
        raise bad(f"'data' holds {n} images")
    labels = d[label_key]
    try:
        labels = np.asarray(labels)
    except Exception as e:  # ragged or odd objects
        raise bad(f"{label_key!r} is not a list of integers: {e}") from None
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise bad(f"{label_key!r} must be {n} integers, got {labels.dtype} values of shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() > 9):
        raise bad(f"labels must be in [0, 9], got values from {labels.min()} to {labels.max()}")
    return data.reshape(n, 3, 32, 32), labels.astype(np.uint8)


# ---------------------------------------------------------------------------- locating the files
def default_data_dir():
    """``$NPCNN_DATA_DIR`` if set, else the per-user cache folder (``platformdirs``)."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    import platformdirs

    return os.path.join(platformdirs.user_cache_dir("npcnn", appauthor=False), "datasets")


def _is_batches_dir(folder):
    return os.path.isdir(folder) and os.path.isfile(os.path.join(folder, TRAIN_FILES[0]))


def _check_complete(folder):
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise CIFAR10FormatError(
            f"{folder}: incomplete CIFAR-10 folder, missing {', '.join(missing)}; remove the folder "
            f"(or put the complete {ARCHIVE_NAME} beside it) and try again"
        )
    return folder


def find_local(path=None):
    """The ``cifar-10-batches-py`` folder for ``path`` (see :func:`load_data`), extracting a local
    archive if that is what is there; ``None`` when nothing is found."""
    root = os.path.abspath(os.path.expanduser(os.fspath(path))) if path is not None else default_data_dir()
    if os.path.isfile(root):
        if root.endswith((".tar.gz", ".tgz", ".tar")):
            return extract_archive(root, os.path.dirname(root))
        raise CIFAR10FormatError(f"{root}: expected a folder or {ARCHIVE_NAME}, got another file")
    if _is_batches_dir(root):
        return _check_complete(root)
    folder = os.path.join(root, FOLDER_NAME)
    if os.path.isdir(folder):
        return _check_complete(folder)
    archive = os.path.join(root, ARCHIVE_NAME)
    if os.path.isfile(archive):
        return extract_archive(archive, root)
    return None


def extract_archive(archive, dest):
    """Extract the batch files of ``archive`` into ``dest/cifar-10-batches-py`` (atomically: a
    temporary folder renamed when complete). Only regular files inside that folder are taken,
    by their base name, so no member can write elsewhere."""
    archive = os.fspath(archive)
    final = os.path.join(dest, FOLDER_NAME)
    os.makedirs(dest, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.", suffix=".partial", dir=dest)
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    parts = member.name.replace("\\", "/").strip("/").split("/")
                    if not member.isfile() or len(parts) != 2 or parts[0] != FOLDER_NAME:
                        continue
                    name = parts[1]
                    if name in ("", ".", ".."):
                        continue
                    src = tar.extractfile(member)
                    with open(os.path.join(tmp, name), "wb") as out:
                        shutil.copyfileobj(src, out, length=1 << 20)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise CIFAR10FormatError(
                f"{archive}: cannot extract the CIFAR-10 archive (truncated or corrupt? {type(e).__name__}: {e}); "
                "delete it and download it again"
            ) from None
        missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(tmp, f))]
        if missing:
            raise CIFAR10FormatError(
                f"{archive}: not the CIFAR-10 python archive: no {FOLDER_NAME}/{', '.join(missing)} inside"
            )
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_batches_dir(final):  # not a concurrent extraction that got there first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _check_complete(final)


def file_md5(path, chunk=1 << 20):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(dest, url=None, progressbar=True):
    """Download the official archive into ``dest`` with pooch and check its md5; returns its path.

    pooch writes to a temporary file in ``dest`` and renames it only once the hash matches, so an
    interrupted or corrupt download never leaves a file under the final name.

    Raises:
        DataUnavailableError: the download failed (no network, bad mirror, md5 mismatch).
    """
    import pooch

    url = url or os.environ.get(ENV_URL) or URL
    try:
        os.makedirs(dest, exist_ok=True)
        return pooch.retrieve(url, known_hash=f"md5:{MD5}", fname=ARCHIVE_NAME, path=dest, progressbar=progressbar)
    except Exception as e:  # requests' connection errors, pooch's hash mismatch, permissions...
        raise DataUnavailableError(_unavailable_message(dest, url, e)) from e


def _unavailable_message(dest, url, err):
    reason = f"{type(err).__name__}: {err}".splitlines()[0]
    if len(reason) > 200:
        reason = reason[:200] + "..."
    return (
        f"CIFAR-10 is not available: no local copy in {dest} and the download from {url} failed ({reason}). "
        f"Download {ARCHIVE_NAME} (md5 {MD5}) from {URL} on a machine with network and put it in {dest} "
        f"(or pass path=/folder/holding/it, or set {ENV_DATA_DIR})."
    )


def get_data_dir(path=None, download_if_missing=True, progressbar=True):
    """The ``cifar-10-batches-py`` folder, found locally or downloaded (see :func:`load_data`)."""
    folder = find_local(path)
    if folder is not None:
        return folder
    root = os.path.abspath(os.path.expanduser(os.fspath(path))) if path is not None else default_data_dir()
    if not download_if_missing:
        raise DataUnavailableError(
            f"CIFAR-10 is not available: no {FOLDER_NAME}/ or {ARCHIVE_NAME} in {root}. Download {ARCHIVE_NAME} "
            f"(md5 {MD5}) from {URL} and put it there."
        )
    archive = download(root, progressbar=progressbar)
    return extract_archive(archive, root)


# ---------------------------------------------------------------------------- public loaders
def load_data(path=None):
    """Load CIFAR-10 exactly as ``keras.datasets.cifar10.load_data()``.

    Args:
        path: a folder holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``, the batches
            folder itself, or the archive. Default: ``$NPCNN_DATA_DIR``, else the per-user cache
            folder. When nothing is there the official archive is downloaded into that folder.
    Returns:
        ``(x_train, y_train), (x_test, y_test)``: uint8 arrays of shapes (50000, 32, 32, 3),
        (50000, 1), (10000, 32, 32, 3), (10000, 1).
    Raises:
        DataUnavailableError: no local copy and the download failed (the message says where to put
            the archive). There is no silent fallback; see :func:`load_sample`.
        CIFAR10FormatError: a file is truncated, malformed or crafted (names the file).
    Example::

        (x_train, y_train), (x_test, y_test) = cifar10.load_data()
        x_train = x_train.astype("float32") / 255
    """
    folder = get_data_dir(path)
    # Fill one preallocated NHWC array batch by batch: no concatenated channel-first copy.
    x_train = y_train = None
    pos = 0
    for name in TRAIN_FILES:
        data, labels = load_batch(os.path.join(folder, name))
        if x_train is None:
            x_train = np.empty((len(data) * len(TRAIN_FILES), 32, 32, 3), dtype=np.uint8)
            y_train = np.empty((len(data) * len(TRAIN_FILES),), dtype=np.uint8)
        if pos + len(data) > len(x_train):  # batches of unequal sizes (not the official files)
            x_train = np.concatenate([x_train[:pos], np.empty((len(data),) + x_train.shape[1:], np.uint8)])
            y_train = np.concatenate([y_train[:pos], np.empty(len(data), np.uint8)])
        x_train[pos:pos + len(data)] = data.transpose(0, 2, 3, 1)
        y_train[pos:pos + len(data)] = labels
        pos += len(data)
        del data, labels
    if pos < len(x_train):
        x_train, y_train = x_train[:pos].copy(), y_train[:pos].copy()
    data, labels = load_batch(os.path.join(folder, TEST_FILE))
    x_test = np.ascontiguousarray(data.transpose(0, 2, 3, 1))
    y_test = labels.reshape(-1, 1)
    return (x_train, y_train.reshape(-1, 1)), (x_test, y_test)


def load_sample():
    """The small real sample bundled with npcnn, in :func:`load_data`'s format.

    About 1,000 training and 200 test CIFAR-10 images (balanced classes), for offline demos and
    tests. Figures obtained on it are *not* comparable to the full data set.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: uint8 (N, 32, 32, 3) images, uint8 (N, 1) labels.
    """
    try:
        with np.load(SAMPLE_FILE, allow_pickle=False) as z:
            out = (z["x_train"], z["y_train"]), (z["x_test"], z["y_test"])
    except FileNotFoundError:
        raise FileNotFoundError(f"the bundled CIFAR-10 sample {SAMPLE_FILE} is missing from this installation") \
            from None
    return out


def load_meta(path=None):
    """The class names stored in ``batches.meta`` (falls back to the official names if the file is absent)."""
    folder = get_data_dir(path)
    meta = os.path.join(folder, META_FILE)
    if not os.path.isfile(meta):
        return list(CLASS_NAMES)
    with open(meta, "rb") as f:
        try:
            d = restricted_load(f)
        except Exception as e:
            raise CIFAR10FormatError(f"{meta}: not a valid CIFAR-10 meta file ({type(e).__name__}: {e})") from None
    names = d.get(b"label_names") if isinstance(d, dict) else None
    if not isinstance(names, list):
        raise CIFAR10FormatError(f"{meta}: no 'label_names' list")
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


__all__ = ["load_data", "load_sample", "load_batch", "load_meta", "get_data_dir", "find_local", "default_data_dir",
           "download", "extract_archive", "restricted_load", "DataUnavailableError", "CIFAR10FormatError",
           "CLASS_NAMES", "URL", "MD5"]
