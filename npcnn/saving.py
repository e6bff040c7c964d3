"""Weights and histories on disk: the names, the checked reader and the atomic writer, in one place.

Every weight has a name ``"<layer>/<key>"`` (``"conv2d/kernel"``, ``"batch_normalization/moving_mean"``)
and a place in Keras's order: layer by layer, first the trained ``params`` (kernel, bias), then the
saved-but-untrained ``buffers`` (Keras's non-trainable weights). :func:`weight_entries` lists them;
``get_weights``/``set_weights`` (lists), ``save_weights``/``load_weights`` (``.npz`` files) and the
training checkpoints (:mod:`npcnn.checkpoint`) all go through this module, so they agree on names,
order and checks:

* **files**: :func:`read_npz` opens only ``.npz`` archives of plain arrays (never unpickles), reads each
  member's ``.npy`` header from the zip first and refuses one that declares more bytes than the archive
  can hold, before anything is allocated; :func:`write_npz` writes to a temporary file renamed over the
  target (a crash leaves the old file or the new one);
* **values**: every array must hold numbers, have exactly the expected shape and be finite; float
  values beyond float32's range are refused for float32 weights (they would become Inf);
* **all or nothing**: every problem is listed in one error, and nothing is changed unless all pass.

This module imports neither :mod:`npcnn.models` nor :mod:`npcnn.layers` (they import it).

Example::

    from npcnn import saving
    saving.save_weights(model, "w.npz")
    saving.load_weights(other, "w.npz")          # ValueError listing every mismatch by name
    [name for name, _, _ in saving.weight_entries(model)]   # ['conv2d/kernel', 'conv2d/bias', ...]
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from zlib import error as zlib_error

import numpy as np

from npcnn.utils import atomic_write

NUMERIC_KINDS = "biuf"
WEIGHTS_FILE = "an npcnn weights file (.npz written by save_weights)"
# Deflate expands at most ~1032:1; a member whose directory entry claims more is forged or corrupt.
_MAX_DEFLATE_RATIO = 1100


class _Refused(Exception):
    """Internal: why :func:`read_npz` refuses a file (turned into the caller's error)."""


# ---------------------------------------------------------------------------------------------- names
def layer_weight_entries(layer):
    """[(key, array, trainable)] of one layer: its ``params`` (trainable), then its ``buffers`` (not)."""
    entries = [(key, p, True) for key, p in layer.params.items()]
    entries += [(key, b, False) for key, b in getattr(layer, "buffers", {}).items()]
    return entries


def weight_entries(model):
    """[(name, array, trainable)] of every weight of ``model``, in Keras order, ``name = "<layer>/<key>"``.

    The arrays are the model's own (not copies): layer by layer, the trained ``params`` first, then the
    ``buffers`` (saved but not trained, e.g. BatchNormalization's moving statistics).
    """
    return [(f"{layer.name}/{key}", arr, trainable)
            for layer in model.layers for key, arr, trainable in layer_weight_entries(layer)]


# --------------------------------------------------------------------------------------------- values
def value_problem(a, dtype=None):
    """Why the numeric array ``a`` cannot become a weight of ``dtype``, or None.

    NaN or Inf anywhere, or (for a float32 target) float values beyond float32's range, which the
    conversion would turn into Inf. One min/max pass; NaN propagates through both.
    """
    a = np.asarray(a)
    if a.dtype.kind != "f" or a.size == 0:
        return None
    lo, hi = a.min(), a.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "contains NaN or Inf"
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.kind == "f" and a.dtype.itemsize > dtype.itemsize:
            limit = float(np.finfo(dtype).max)
            if max(-float(lo), float(hi)) > limit:
                shown = f"{limit:.2g}".replace("e+", "e")
                return f"holds values beyond {dtype.name}'s range (|x| > {shown})"
    return None


def check_weight_list(weights, expected, where):
    """Check a list of weight arrays against ``expected``; return them as arrays.

    Args:
        weights: a list (any iterable but an array) of array-likes.
        expected: [(label, shape)] or [(label, shape, dtype)], one per weight, in order; with a dtype,
            float values beyond its range are refused too.
        where: the caller, for the messages (e.g. ``"set_weights"``).
    Raises:
        ValueError: every problem in one message: a wrong count, each wrong shape (by label), each array
            holding NaN/Inf or values beyond the target's range.
        TypeError: ``weights`` is not a list, or an array does not hold numbers.
    """
    if isinstance(weights, np.ndarray) or not hasattr(weights, "__iter__"):
        raise TypeError(f"{where}: weights must be a list of arrays, got {type(weights).__name__}")
    weights = list(weights)
    expected = [tuple(e) + (None,) * (3 - len(e)) for e in expected]
    problems = []
    if len(weights) != len(expected):
        problems.append(f"expected {len(expected)} arrays, got {len(weights)}")
    arrays = []
    for i, ((label, shape, dtype), w) in enumerate(zip(expected, weights)):
        try:
            a = np.asarray(w)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{where}: array {i} ({label}) is not an array: {e}") from None
        if a.dtype.kind not in NUMERIC_KINDS:
            raise TypeError(f"{where}: array {i} ({label}) must hold numbers, got dtype {a.dtype}")
        if a.shape != tuple(shape):
            problems.append(f"array {i} ({label}): expected shape {tuple(shape)}, got {a.shape}")
        else:
            why = value_problem(a, dtype)
            if why:
                problems.append(f"array {i} ({label}): {why}")
        arrays.append(a)
    if len(weights) < len(expected):
        problems += [f"array {i} ({label}, shape {tuple(shape)}): missing"
                     for i, (label, shape, _) in enumerate(expected[len(weights):], start=len(weights))]
    if len(weights) > len(expected):
        problems += [f"array {i}: unexpected (shape {np.shape(w)}), the model has no weight for it"
                     for i, w in enumerate(weights[len(expected):], start=len(expected))]
    if problems:
        raise ValueError(f"{where}: weights do not match:\n  " + "\n  ".join(problems))
    return arrays


def weight_dict_problems(stored, entries, prefix="", shape_words="expected shape {expected}, got {got}"):
    """Problems of ``stored`` {name: array} as the values of ``entries`` [(name, array, trainable)].

    One line per problem, naming the weight: missing, unexpected, wrong shape, not numbers, NaN/Inf,
    beyond the target dtype's range. ``prefix`` starts each line's name (e.g. ``"weights "``);
    ``shape_words`` words a shape mismatch.
    """
    problems = []
    for name, p, _ in entries:
        if name not in stored:
            problems.append(f"missing {prefix}{name} (shape {p.shape})")
            continue
        a = stored[name]
        if np.shape(a) != p.shape:
            problems.append(f"{prefix}{name}: " + shape_words.format(expected=p.shape, got=np.shape(a)))
        elif np.asarray(a).dtype.kind not in NUMERIC_KINDS:
            problems.append(f"{prefix}{name}: expected numbers, got dtype {np.asarray(a).dtype}")
        else:
            why = value_problem(a, p.dtype)
            if why:
                problems.append(f"{prefix}{name}: {why}")
    names = {name for name, _, _ in entries}
    problems += [f"unexpected {prefix}{k} (shape {np.shape(v)})" for k, v in stored.items() if k not in names]
    return problems


# ------------------------------------------------------------------------------------- lists (layers)
def get_layer_weights(layer):
    """Copies of one layer's weights in Keras order (params, then buffers)."""
    return [a.copy() for _, a, _ in layer_weight_entries(layer)]


def set_layer_weights(layer, weights):
    """Copy ``weights`` (Keras order and layouts) into one built layer, all or nothing.

    Raises:
        ValueError: not built; or a wrong count, shapes, non-finite or out-of-range values (all listed).
        TypeError: ``weights`` is not a list of numeric arrays.
    """
    label = f"{type(layer).__name__} {layer.name!r}" if layer.name else type(layer).__name__
    if not layer.built:
        raise ValueError(f"{label}.set_weights: the layer is not built yet (its weights do not exist)")
    entries = layer_weight_entries(layer)
    expected = [(f"layer {layer.name!r} {key}", a.shape, a.dtype) for key, a, _ in entries]
    arrays = check_weight_list(weights, expected, f"{label}.set_weights")
    for (_, a, _), w in zip(entries, arrays):
        a[...] = w


# ------------------------------------------------------------------------------------- lists (models)
def get_weights(model):
    """Copies of every weight of ``model``, in Keras order and layouts (Conv2D (KH, KW, C, F), Dense (D, U))."""
    return [a.copy() for _, a, _ in weight_entries(model)]


def set_weights(model, weights):
    """Copy a list of arrays (Keras order and layouts, as :func:`get_weights` gives) into ``model``.

    Raises:
        NotBuiltError: the model is not built.
        ValueError: wrong count, shapes, NaN/Inf or out-of-range values; every mismatch is listed by
            layer, and nothing is changed.
        TypeError: not a list of numeric arrays.
    """
    model._require_built("set_weights")
    entries = []
    for layer in model.layers:
        entries += [(f"layer {layer.name!r} {key}", a) for key, a, _ in layer_weight_entries(layer)]
    arrays = check_weight_list(weights, [(label, a.shape, a.dtype) for label, a in entries], "set_weights")
    for (_, a), w in zip(entries, arrays):
        a[...] = w


def assign_weight_dict(model, stored, where):
    """Copy ``stored`` {"<layer>/<key>": array} into ``model``, all or nothing.

    Raises:
        ValueError: ``"{where}: weights do not match the model:"`` and one line per problem (missing,
            unexpected, shape, dtype, NaN/Inf, beyond float32's range); nothing is changed.
    """
    entries = weight_entries(model)
    problems = weight_dict_problems(stored, entries)
    if problems:
        raise ValueError(f"{where}: weights do not match the model:\n  " + "\n  ".join(problems))
    for name, a, _ in entries:
        a[...] = stored[name]


# -------------------------------------------------------------------------------------------- files
def save_weights(model, filepath):
    """Write every weight of ``model`` to an .npz file (no pickle), atomically: temporary file, then rename.

    Members are named ``"<layer>/<key>"``; buffers are saved too.

    Raises:
        ValueError: a Keras file name (``.h5``, ``.hdf5``, ``.keras``): npcnn writes only ``.npz``, and a zip
            under an HDF5 name could not be read back by npcnn or Keras.
    """
    model._require_built("save_weights")
    name = os.fspath(filepath)
    if name.lower().endswith((".h5", ".hdf5", ".keras")):
        raise ValueError(f"save_weights: {name!r} names a Keras file; npcnn writes its weights as .npz "
                         f"(e.g. {os.path.splitext(name)[0].removesuffix('.weights') + '.weights.npz'!r}); "
                         "load_weights reads Keras's .weights.h5 files")
    return write_npz(filepath, {name: a for name, a, _ in weight_entries(model)})


def load_weights(model, filepath):
    """Read weights written by :func:`save_weights` into ``model``; never unpickles; all or nothing.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, not an .npz archive, holds pickled objects, declares arrays
            larger than itself, or its arrays do not match the model (every mismatch listed by name).
            The file is named; nothing is changed.
    """
    model._require_built("load_weights")
    filepath = os.fspath(filepath)
    stored = read_npz(filepath, "load_weights", WEIGHTS_FILE)
    assign_weight_dict(model, stored, f"load_weights({filepath!r})")


def write_npz(filepath, arrays):
    """Write ``arrays`` {name: array} to the .npz ``filepath`` atomically (temporary file, fsync, rename).

    Returns:
        the path written (as a string).
    """
    filepath = os.fspath(filepath)
    with atomic_write(filepath) as f:
        np.savez(f, **arrays)
    return filepath


def read_npz(filepath, where, what, error=None):
    """Every array of the .npz ``filepath``, checked before it is read, then read with ``allow_pickle=False``.

    Before any array is allocated, each member's ``.npy`` header is read from the archive: a member
    that is not an ``.npy`` array, holds Python objects (pickle), or declares a shape whose size does
    not match the bytes the archive holds for it is refused.

    Args:
        filepath: the file.
        where: the caller, first in the messages (``"load_weights"``).
        what: what the file should be, for the messages (``"an npcnn weights file (...)"``).
        error: ``error(reason, exc)`` builds the exception to raise instead of the default ValueError
            (``reason``: why, without the file name; ``exc``: the text of the exception behind it, or None).
    Raises:
        FileNotFoundError: no such file (named).
        ValueError: truncated, not an .npz archive (e.g. a lone .npy, a pickle, a text file), holding
            object arrays or non-array members, or declaring more data than it holds; the message
            names the file and says what was expected.
    """
    filepath = os.fspath(filepath)
    if error is None:
        def error(reason, exc):
            return ValueError(f"{where}: {filepath!r} is not {what}: {reason}")

    try:
        return _read_npz(filepath, where)
    except _Refused as e:
        reason, exc = e.args
        raise error(reason, exc) from None


def _read_npz(filepath, where):
    if os.path.isdir(filepath):
        raise _Refused("it is a directory", None)
    try:
        f = open(filepath, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: no such file: {filepath!r}") from None
    with f:  # our own handle: NumPy leaks its file when a truncated archive fails to open
        magic = f.read(4)
        if magic != b"PK\x03\x04":
            raise _Refused("a .npy array" if magic.startswith(b"\x93NUM") else "an empty file" if not magic
                           else "not a zip archive", None)
        try:
            f.seek(0)
            problem = _scan_members(f, os.fstat(f.fileno()).st_size)
            if problem:
                raise _Refused(problem, None)
            f.seek(0)
            with np.load(f, allow_pickle=False) as data:
                stored = {k: data[k] for k in data.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zlib_error,
                NotImplementedError) as e:
            exc = f"{type(e).__name__}: {e}"
            if "pickle" in str(e):
                raise _Refused("it holds pickled objects, which npcnn never loads", exc) from None
            raise _Refused(f"truncated or corrupt ({exc})", exc) from None
    return stored


def _scan_members(f, file_size):
    """Why the zip archive ``f`` is not a plain .npz of sane arrays, or None; reads only headers."""
    with zipfile.ZipFile(f) as zf:
        infos = zf.infolist()
        foreign = [i.filename for i in infos if not i.filename.endswith(".npy")]
        if foreign:
            return f"the zip archive holds non-array members {foreign}"
        for info in infos:
            name = info.filename
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                return f"member {name!r} uses an unsupported compression (method {info.compress_type})"
            stored_ok = info.compress_type != zipfile.ZIP_STORED or info.compress_size == info.file_size
            if not stored_ok or info.compress_size > file_size \
                    or info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
                return (f"member {name!r} claims {info.file_size:,} bytes in {info.compress_size:,} stored "
                        f"bytes of a {file_size:,}-byte file: truncated or corrupt")
            with zf.open(info) as m:
                version = np.lib.format.read_magic(m)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(m)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(m)
                else:
                    return f"member {name!r} is an .npy array of format version {version}, which npcnn does not read"
                header = m.tell()
            if dtype.hasobject:
                return "it holds pickled objects, which npcnn never loads"
            if any(d < 0 for d in shape):
                return f"member {name!r} declares the shape {shape}: truncated or corrupt"
            declared = math.prod(shape) * dtype.itemsize
            held = info.file_size - header
            if declared != held:
                return (f"member {name!r} declares shape {shape} of {dtype} ({declared:,} bytes) but holds "
                        f"{held:,} bytes: truncated or corrupt")
    return None


# ------------------------------------------------------------------------------------------ history
def save_history(history, path):
    """Write a History (or a dict of per-epoch lists) to ``path`` as JSON, atomically:
    ``{'epoch': [...], 'history': {...}}``. Returns the path."""
    h = getattr(history, "history", history)
    epochs = list(getattr(history, "epoch", range(len(next(iter(h.values()), [])))))
    data = {"epoch": [int(e) for e in epochs],
            "history": {k: [float(v) for v in vals] for k, vals in h.items()}}
    path = os.fspath(path)
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1, allow_nan=True)
    return path


def load_history(path):
    """Read a history: JSON written by :func:`save_history` (or a plain {'loss': [...], ...} dict), or the
    history inside a training checkpoint ``.npz`` (:mod:`npcnn.checkpoint`).

    Returns:
        the dict of per-epoch lists, like ``History.history``.
    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no history (names it).
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        arrays = read_npz(path, "load_history", "an npcnn training checkpoint (.npz)")
        meta = arrays.get("meta")
        try:
            data = json.loads(str(meta)) if meta is not None and meta.dtype.kind == "U" else None
        except ValueError:
            data = None
        data = data.get("history") if isinstance(data, dict) else None
    else:
        with open(path) as f:
            try:
                data = json.load(f)
            except ValueError as e:
                raise ValueError(f"load_history: {path!r} is not JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("history"), dict):
            data = data["history"]
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"load_history: {path!r} does not hold a history (a dict of per-epoch lists)")
    return data



# ------------------------------------------------------------------------------ model files (.npcnn)
MODEL_FORMAT = "npcnn-model"
MODEL_VERSION = 1
MODEL_FILE = "an npcnn model file (written by model.save)"
MODEL_MEMBER = "npcnn_model"  # the JSON string member; the others are weights/... and optimizer/...


def save_model(model, filepath, include_optimizer=True):
    """Write ``model`` to one ``.npz`` file (any suffix, e.g. ``model.npcnn``), atomically, no pickle.

    Members: ``npcnn_model``, a JSON string ``{'format': 'npcnn-model', 'version': 1, 'model': {...},
    'weight_names': [...], 'compile': {...} or None, 'optimizer_state': bool}`` (the architecture as
    ``model.to_json()`` gives it; the compile settings as ``{'optimizer': {'class_name', 'config'},
    'loss': {...}, 'metrics': [names, or {'class_name', 'config'} of metric objects]}``);
    ``weights/<layer>/<key>`` for every weight (params and
    buffers); with ``include_optimizer`` and a compiled model, ``optimizer/iterations`` and
    ``optimizer/slot{i}_{name}`` (the optimizer's state, as in checkpoints).

    Raises:
        NotBuiltError: the model is not built.
        ValueError: a suffix of Keras's own formats (.keras, .h5), or a layer whose config cannot be
            saved (a custom initializer or regularizer).
    """
    from npcnn import serialization

    model._require_built("save")
    filepath = os.fspath(filepath)
    if filepath.endswith((".keras", ".h5", ".hdf5")):
        raise ValueError(f"save: {filepath!r}: npcnn writes its own model format (an .npz archive), not Keras's "
                         ".keras/.h5; use a name such as 'model.npcnn' or 'model.npz'")
    entries = weight_entries(model)
    arrays = {f"weights/{name}": a for name, a, _ in entries}
    compile_config = None
    if getattr(model, "compiled", False):
        compile_config = {
            "optimizer": serialization.serialize_object(model.optimizer, "optimizer"),
            "loss": serialization.serialize_object(model.loss, "loss"),
            "metrics": [m if isinstance(m, str) else serialization.serialize_object(m, "metric")
                        for m in model.metrics],
        }
        if include_optimizer:
            for key, arr in model.optimizer.get_state(model.params).items():
                arrays[f"optimizer/{key}"] = arr
    meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "model": json.loads(model.to_json()),
            "weight_names": [name for name, _, _ in entries], "compile": compile_config,
            "optimizer_state": bool(compile_config is not None and include_optimizer)}
    arrays[MODEL_MEMBER] = np.array(json.dumps(meta))
    return write_npz(filepath, arrays)


def read_model_file(filepath, where="load_model"):
    """(meta, weights {"<layer>/<key>": array}, optimizer state {key: array}) of a file written by
    :func:`save_model`, checked: read with :func:`read_npz` (no pickle), a JSON ``npcnn_model`` member
    of the right format and version, only ``weights/...`` and ``optimizer/...`` members besides, the
    weights named by ``weight_names``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not such a file (an npcnn weights file, a checkpoint, a Keras file, anything else):
            the message names the file and says what it seems to be.
    """
    filepath = os.fspath(filepath)

    def refuse(reason):
        return ValueError(f"{where}: {filepath!r} is not {MODEL_FILE}: {reason}")

    if filepath.endswith((".keras", ".h5", ".hdf5")):
        raise refuse("a Keras file; npcnn reads Keras's weights with model.load_weights('x.weights.h5') "
                     "into a model built with the same layers")
    arrays = read_npz(filepath, where, MODEL_FILE)
    raw = arrays.pop(MODEL_MEMBER, None)
    if raw is None:
        if "meta" in arrays:
            raise refuse("it is a training checkpoint; use npcnn.checkpoint.restore_checkpoint")
        raise refuse("it has no 'npcnn_model' member (a weights file written by save_weights? build the model "
                     "and call load_weights)")
    try:
        meta = json.loads(str(raw)) if raw.dtype.kind == "U" and raw.ndim == 0 else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise refuse("its 'npcnn_model' member is not the JSON of an npcnn model")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MODEL_VERSION:
        raise refuse(f"format version {version!r}; this npcnn reads versions 1..{MODEL_VERSION}")
    problems = []
    if not isinstance(meta.get("model"), dict):
        problems.append("no 'model' architecture")
    names = meta.get("weight_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append("no 'weight_names' list")
        names = []
    if meta.get("compile") is not None and not isinstance(meta.get("compile"), dict):
        problems.append("'compile' is neither null nor an object")
    weights, opt = {}, {}
    for key, a in arrays.items():
        if key.startswith("weights/"):
            weights[key[len("weights/"):]] = a
        elif key.startswith("optimizer/"):
            opt[key[len("optimizer/"):]] = a
        else:
            problems.append(f"unexpected member {key!r}")
    missing = [n for n in names if n not in weights]
    extra = [n for n in weights if n not in names]
    if missing:
        problems.append(f"the weights {missing} are listed but missing")
    if extra:
        problems.append(f"the weights {extra} are not listed in weight_names")
    if meta.get("optimizer_state") and "iterations" not in opt:
        problems.append("it says it holds the optimizer's state, but 'optimizer/iterations' is missing")
    if problems:
        raise refuse("; ".join(problems))
    return meta, weights, opt


# ---------------------------------------------------------------------------- Keras 3 .weights.h5
KERAS_INSTALL = 'pip install -e ".[keras]"'


def _h5py(where):
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{where}: reading Keras's .weights.h5 files needs h5py, an optional extra: "
                          f"{KERAS_INSTALL} (or pip install h5py)") from None
    return h5py


def read_keras_weights(filepath, where="load_weights"):
    """{group: (Keras layer name, [arrays in Keras's variable order])} of a ``.weights.h5`` written by
    Keras 3's ``save_weights``: groups ``layers/<group>/vars/<index>``, where ``<group>`` is the snake
    case of the layer's class numbered within the model (``conv2d``, ``conv2d_1``, ...: Keras's own
    address of the layer, whatever its name), and the ``vars`` group's attribute ``name`` holds the
    layer's name. Layers without weights are left out.

    Raises:
        ImportError: h5py is missing (the message names ``pip install -e ".[keras]"``).
        FileNotFoundError: no such file.
        ValueError: not an HDF5 file, or not Keras 3's layout (e.g. Keras 2's legacy .h5).
    """
    h5py = _h5py(where)
    filepath = os.fspath(filepath)
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"{where}: no such file: {filepath!r}")

    def refuse(reason):
        return ValueError(f"{where}: {filepath!r} is not a Keras 3 weights file (.weights.h5 written by "
                          f"save_weights): {reason}")

    try:
        f = h5py.File(filepath, "r")
    except OSError as e:
        raise refuse(f"not an HDF5 file ({e})") from None
    with f:
        if "layers" not in f or not isinstance(f["layers"], h5py.Group):
            if "layer_names" in f.attrs:
                raise refuse("it is a Keras 2 (legacy) HDF5 weights file; save the weights with Keras 3's "
                             "model.save_weights('x.weights.h5')")
            raise refuse("it has no 'layers' group")
        out = {}
        problems = []
        for name, group in f["layers"].items():
            if not isinstance(group, h5py.Group):
                problems.append(f"layers/{name} is not a group")
                continue
            if "layers" in group and len(group["layers"]):
                problems.append(f"layers/{name} holds nested layers, which npcnn does not map")
            vars_ = group.get("vars")
            if vars_ is None or len(vars_) == 0:
                continue
            keys = sorted(vars_.keys(), key=lambda k: int(k) if k.isdigit() else -1)
            if keys != [str(i) for i in range(len(keys))]:
                problems.append(f"layers/{name}/vars holds {keys}, not 0..{len(keys) - 1}")
                continue
            label = vars_.attrs.get("name", name)
            label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            out[name] = (label, [np.array(vars_[k]) for k in keys])
        if problems:
            raise refuse("; ".join(problems))
    return out


def _keras_kind(name):
    """(kind, position) of a Keras 3 group name: 'conv2d' -> ('conv2d', 0), 'conv2d_3' -> ('conv2d', 3)."""
    m = re.fullmatch(r"(.+?)(?:_(\d+))?", name)
    return m.group(1), int(m.group(2) or 0)


def _class_kind(layer):
    """Keras's default name for the layer's class ('Conv2D' -> 'conv2d', 'BatchNormalization' ->
    'batch_normalization'), as Keras and :class:`npcnn.models.Sequential` name layers."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", type(layer).__name__)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def match_keras_layers(model, keras_groups):
    """[(Keras group or None, npcnn layer)] for every npcnn layer with weights, and the groups left over.

    Keras 3 addresses a layer of a Sequential model by its class and its position among the layers of
    that class (``layers/conv2d``, ``layers/conv2d_1``, ... whatever the layers' names), and so does
    this pairing, as Keras's own ``load_weights`` does: the i-th Conv2D of the npcnn model takes group
    ``conv2d`` (i = 0) or ``conv2d_<i>``. npcnn's layer names play no part.
    """
    layers = [layer for layer in model.layers if layer_weight_entries(layer)]
    by_kind = {}
    for name in keras_groups:
        kind, index = _keras_kind(name)
        by_kind.setdefault(kind, []).append((index, name))
    queues = {kind: [n for _, n in sorted(v)] for kind, v in by_kind.items()}
    pairs = []
    for layer in layers:
        queue = queues.get(_class_kind(layer), [])
        pairs.append((queue.pop(0) if queue else None, layer))
    left = [n for q in queues.values() for n in q]
    return pairs, left


def load_keras_weights(model, filepath):
    """Copy the weights of a Keras 3 ``.weights.h5`` into ``model`` (built with the same layers), all
    or nothing; returns [(Keras group, npcnn layer name)] as paired.

    Keras's variable order is npcnn's (Conv2D kernel (KH, KW, C, F) then bias; Dense kernel (D, U)
    then bias; BatchNormalization gamma, beta, moving_mean, moving_variance), so each Keras layer's
    ``vars/0, 1, ...`` go to the npcnn layer's weights in order; the layers are paired by
    :func:`match_keras_layers` (Keras's rule: class, then position among the layers of that class).

    Raises:
        ImportError: h5py is missing (``pip install -e ".[keras]"``).
        ValueError: every mismatch in one message (an npcnn layer with no Keras layer, a Keras layer with
            no npcnn layer, a wrong number of variables, a wrong shape, NaN/Inf); nothing is changed.
    """
    model._require_built("load_weights")
    filepath = os.fspath(filepath)
    where = f"load_weights({filepath!r})"
    stored = read_keras_weights(filepath, "load_weights")
    pairs, left = match_keras_layers(model, sorted(stored))
    problems, assign = [], []
    for kname, layer in pairs:
        entries = layer_weight_entries(layer)
        label = f"npcnn layer {layer.name!r} ({type(layer).__name__}: {', '.join(k for k, _, _ in entries)})"
        if kname is None:
            problems.append(f"{label} has no Keras layer in the file")
            continue
        kept_name, arrays = stored[kname]
        head = f"Keras layer {kept_name!r} (layers/{kname}) -> {label}"
        if len(arrays) != len(entries):
            problems.append(f"{head}: the file has {len(arrays)} variables {[a.shape for a in arrays]}, npcnn "
                            f"expects {len(entries)} {[a.shape for _, a, _ in entries]}")
            continue
        for i, ((key, target, _), a) in enumerate(zip(entries, arrays)):
            if a.shape != target.shape:
                problems.append(f"{head}: vars/{i} has shape {a.shape}, npcnn's {key} is {target.shape}")
            elif a.dtype.kind not in NUMERIC_KINDS:
                problems.append(f"{head}: vars/{i} holds {a.dtype}, not numbers")
            else:
                why = value_problem(a, target.dtype)
                if why:
                    problems.append(f"{head}: vars/{i} ({key}) {why}")
                else:
                    assign.append((target, a))
    problems += [f"Keras layer {stored[n][0]!r} (layers/{n}, {len(stored[n][1])} variables "
                 f"{[a.shape for a in stored[n][1]]}) has no npcnn layer of its kind left in the model" for n in left]
    if problems:
        raise ValueError(f"{where}: the Keras weights do not match the model:\n  " + "\n  ".join(problems))
    for target, a in assign:
        target[...] = a
    return [(kname, layer.name) for kname, layer in pairs]

__all__ = ["weight_entries", "layer_weight_entries", "check_weight_list", "value_problem", "weight_dict_problems",
           "get_weights", "set_weights", "get_layer_weights", "set_layer_weights", "assign_weight_dict",
           "save_weights", "load_weights", "read_npz", "write_npz", "save_history",
           "load_history", "WEIGHTS_FILE", "save_model", "read_model_file", "read_keras_weights",
           "match_keras_layers", "load_keras_weights", "MODEL_FILE"]
