"""Training checkpoints: everything needed to resume a run bit for bit, in one atomic file.

One ``.npz`` (no pickle) holds every weight (``weights/<layer>/<key>``: the trained ``params`` and the
untrained ``buffers``, as :func:`npcnn.saving.weight_entries` lists them), the optimizer's state
(``optimizer/iterations``, ``optimizer/slot{i}_{m,v,...}``), the arrays of the callbacks' states
(``callbacks/<name>/...``) and a JSON string ``meta`` with the number of finished epochs, npcnn's RNG
state, the history so far, the callbacks' states and free-form ``extra`` data. It is written to a
temporary file and renamed over the old one (:func:`npcnn.saving.write_npz`), so a run killed at any
moment (SIGKILL included) leaves either the previous checkpoint or the new one, never a mix of epochs.

Reading goes through :func:`npcnn.saving.read_npz` (magic, zip structure, ``.npy`` headers checked
against the file's size, no pickle). :func:`load_checkpoint` then checks every field of the file and
:func:`restore_checkpoint` checks that it fits the model, before anything is changed: one
:class:`CheckpointError` names every bad field, and the model, optimizer, callbacks and RNG are
restored all together or not at all.

Example::

    from npcnn.callbacks import EarlyStopping
    from npcnn.checkpoint import TrainingCheckpoint, restore_checkpoint

    early = EarlyStopping(patience=2)
    ckpt = TrainingCheckpoint("runs/ckpt")              # saves after every epoch, early's state too
    initial_epoch = 0
    if ckpt.exists():
        state = restore_checkpoint(ckpt.path, model, callbacks=[early])   # weights, optimizer, RNG, early
        initial_epoch, ckpt.history = state.epoch, state.history
    model.fit(x, y, epochs=10, initial_epoch=initial_epoch, callbacks=[early, ckpt])
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from npcnn import distributed, saving
from npcnn.callbacks import Callback
from npcnn.utils import get_rng_state, set_rng_state

FORMAT = "npcnn-checkpoint"
VERSION = 1
DEFAULT_NAME = "checkpoint.npz"
_WHAT = "an npcnn training checkpoint (.npz)"


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model it is restored into."""


@dataclass
class CheckpointState:
    """What :func:`load_checkpoint` reads: arrays and metadata, not yet applied to a model."""

    path: str
    epoch: int  # epochs finished; training resumes with ``initial_epoch=epoch``
    weights: dict  # "layer/key" -> array
    optimizer_state: dict  # as Optimizer.get_state
    optimizer: str
    rng_state: dict
    history: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    callbacks: dict = field(default_factory=dict)  # callback name -> state (arrays included)


# ---------------------------------------------------------------------------------------------- write
def save_checkpoint(path, model, epoch, history=None, extra=None, callbacks=None):
    """Write ``model``'s weights (params and buffers), its optimizer's state, npcnn's RNG state,
    ``history``, ``epoch`` (epochs finished) and the callbacks' states to ``path`` atomically.

    Args:
        path: the ``.npz`` file to write (its folder is created).
        model: a compiled, built :class:`npcnn.models.Sequential`.
        epoch: number of finished epochs.
        history: {metric: [value per epoch]} (JSON-able).
        extra: any JSON-able dict (run settings to check on resume).
        callbacks: {name: state} (see :func:`callback_states`).
    Returns:
        the path written.
    """
    if model.optimizer is None:
        raise CheckpointError("save_checkpoint: the model has no optimizer; compile it first")
    entries = saving.weight_entries(model)
    arrays = {f"weights/{name}": a for name, a, _ in entries}
    for key, arr in model.optimizer.get_state(model.params).items():
        arrays[f"optimizer/{key}"] = arr
    cb_meta = {}
    for name, state in (callbacks or {}).items():
        cb_meta[name] = _split_arrays(state, f"callbacks/{name}", arrays)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(epoch),
        "optimizer": type(model.optimizer).__name__,
        "weight_names": [name for name, _, _ in entries],
        "rng_state": get_rng_state(),
        "history": _jsonable(history or {}),
        "extra": _jsonable(extra or {}),
        "callbacks": _jsonable(cb_meta),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    return saving.write_npz(path, arrays)


def _jsonable(obj):
    """Plain Python types (NumPy scalars and arrays become floats, ints and lists)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


_ARRAY_REF = "__array__"


def _split_arrays(obj, prefix, arrays):
    """``obj`` with each NumPy array (at any depth of dicts) replaced by {'__array__': member name},
    the array itself going into ``arrays`` under that name."""
    if isinstance(obj, np.ndarray):
        arrays[prefix] = obj
        return {_ARRAY_REF: prefix}
    if isinstance(obj, dict):
        return {str(k): _split_arrays(v, f"{prefix}/{k}", arrays) for k, v in obj.items()}
    return obj


def _join_arrays(obj, arrays, problems, where):
    """Inverse of :func:`_split_arrays`; a reference to a missing member is a problem."""
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY_REF}:
            name = obj[_ARRAY_REF]
            if name not in arrays:
                problems.append(f"{where}: the array {name!r} is missing from the file")
                return None
            return arrays[name]
        return {k: _join_arrays(v, arrays, problems, f"{where}/{k}") for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------- read
def load_checkpoint(path):
    """Read and check a checkpoint written by :func:`save_checkpoint` (never unpickles).

    Every field is checked before this returns: the meta data (a JSON object with ``epoch`` a
    non-negative integer, a valid ``rng_state``, ``history``/``extra``/``callbacks`` objects), the
    weights and optimizer state (finite numbers; ``iterations`` a non-negative integer; Adam's second
    moments ``v`` non-negative).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a readable npcnn checkpoint, or a field is invalid; the message names the
            file and every bad field.
    """
    path = os.fspath(path)
    def unreadable(reason, exc):
        return CheckpointError(f"{path}: not a readable npcnn checkpoint ({exc or reason})")

    try:
        data = saving.read_npz(path, "load_checkpoint", _WHAT, error=unreadable)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path!r}") from None
    raw = data.pop("meta", None)
    try:
        if raw is None:
            raise KeyError("meta")
        if raw.dtype.kind != "U" or raw.ndim != 0:
            raise ValueError(f"a {raw.dtype} array of shape {raw.shape}, not a JSON string")
        meta = json.loads(str(raw))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: not an npcnn checkpoint (no valid 'meta' entry: {e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not an npcnn checkpoint (meta: expected a JSON object, got "
                              f"{type(meta).__name__})")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an npcnn checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')!r}, this npcnn reads {VERSION}")
    problems = []
    epoch = meta.get("epoch")
    if "epoch" not in meta:
        problems.append("epoch: missing")
    elif not _is_count(epoch):
        problems.append(f"epoch: must be a non-negative integer, got {epoch!r}")
    optimizer = meta.get("optimizer", "")
    if not isinstance(optimizer, str):
        problems.append(f"optimizer: must be a class name, got {optimizer!r}")
    rng_problem = _rng_state_problem(meta.get("rng_state"), "rng_state" in meta)
    if rng_problem:
        problems.append(f"rng_state: {rng_problem}")
    history = meta.get("history") or {}
    if not isinstance(history, dict) or not all(isinstance(v, list) for v in history.values()):
        problems.append("history: must be an object {metric: [one value per epoch]}")
    for key in ("extra", "callbacks"):
        if not isinstance(meta.get(key) or {}, dict):
            problems.append(f"{key}: must be an object, got {type(meta.get(key)).__name__}")
    weights = {k[len("weights/"):]: v for k, v in data.items() if k.startswith("weights/")}
    opt = {k[len("optimizer/"):]: v for k, v in data.items() if k.startswith("optimizer/")}
    cb_arrays = {k: v for k, v in data.items() if k.startswith("callbacks/")}
    callbacks = {}
    if not problems:
        callbacks = {name: _join_arrays(s, cb_arrays, problems, f"callbacks/{name}")
                     for name, s in (meta.get("callbacks") or {}).items()}
    problems += _array_problems(weights, opt)
    if problems:
        raise CheckpointError(f"{path}: invalid checkpoint:\n  " + "\n  ".join(problems))
    return CheckpointState(path=path, epoch=int(epoch), weights=weights, optimizer_state=opt,
                           optimizer=optimizer, rng_state=meta["rng_state"], history=history,
                           extra=meta.get("extra") or {}, callbacks=callbacks)


def _is_count(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0


def _rng_state_problem(state, present=True):
    """Why ``state`` cannot be passed to :func:`npcnn.utils.set_rng_state`, or None (tried on a copy)."""
    if not present:
        return "missing"
    if not isinstance(state, dict) or not isinstance(state.get("bit_generator"), str):
        return f"expected a NumPy bit-generator state (a dict with 'bit_generator'), got {type(state).__name__}"
    cls = getattr(np.random, state["bit_generator"], None)
    if not (isinstance(cls, type) and issubclass(cls, np.random.BitGenerator)):
        return f"unknown bit generator {state['bit_generator']!r}"
    try:
        cls().state = copy.deepcopy(state)
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        return f"not a valid {state['bit_generator']} state ({type(e).__name__}: {e})"
    return None


def _array_problems(weights, opt):
    """Value problems of the stored arrays alone (the model is checked by restore_checkpoint)."""
    problems = []
    for name, a in weights.items():
        if a.dtype.kind not in saving.NUMERIC_KINDS:
            problems.append(f"weights/{name}: expected numbers, got dtype {a.dtype}")
        elif saving.value_problem(a):
            problems.append(f"weights/{name}: {saving.value_problem(a)}")
    for key, a in opt.items():
        if key == "iterations":
            if a.ndim != 0 or a.dtype.kind not in "iu" or int(a) < 0:
                problems.append(f"optimizer/iterations: must be a non-negative integer, got {a.tolist()!r}")
        elif a.dtype.kind not in saving.NUMERIC_KINDS:
            problems.append(f"optimizer/{key}: expected numbers, got dtype {a.dtype}")
        elif saving.value_problem(a):
            problems.append(f"optimizer/{key}: {saving.value_problem(a)}")
        elif key.endswith("_v") and a.size and a.min() < 0:
            problems.append(f"optimizer/{key}: a second moment (mean of squared gradients) must be >= 0, "
                            f"found {float(a.min()):.3g}")
    if "iterations" not in opt:
        problems.append("optimizer/iterations: missing")
    return problems


# ---------------------------------------------------------------------------------------------- apply
def callback_states(callbacks):
    """{name: callback} for the stateful callbacks in ``callbacks``, named by class, numbered from the
    second of a class on (``EarlyStopping``, ``EarlyStopping_1``): the names a checkpoint stores their
    states under. The same list of callbacks gives the same names in the resumed run."""
    named, seen = {}, {}
    for cb in callbacks:
        if not cb.is_stateful():
            continue
        cls = type(cb).__name__
        n = seen.get(cls, 0)
        seen[cls] = n + 1
        named[cls if n == 0 else f"{cls}_{n}"] = cb
    return named


def restore_checkpoint(path_or_state, model, restore_rng=True, callbacks=None):
    """Load a checkpoint into ``model`` (weights, buffers, optimizer state), npcnn's RNG and ``callbacks``.

    Everything is checked before anything is changed: a mismatch (layer names, shapes, optimizer kind,
    values, callbacks) raises :class:`CheckpointError` listing every problem and leaves the model, its
    optimizer, the callbacks and the RNG untouched.

    Args:
        path_or_state: a checkpoint file, or what :func:`load_checkpoint` returned.
        model: the compiled model (same layers and optimizer as the run that wrote the checkpoint).
        restore_rng: also restore npcnn's random generator (needed for an exact resume).
        callbacks: the stateful callbacks of the resumed ``fit`` (e.g. ``[early_stopping]``), matched to
            the saved states by :func:`callback_states`' names; they must be the same ones. ``None``:
            leave callbacks alone (a warning says so when the checkpoint holds callback states).
    Returns:
        the :class:`CheckpointState` (``.epoch`` to pass as ``initial_epoch``, ``.history``, ``.extra``).
    """
    state = path_or_state if isinstance(path_or_state, CheckpointState) else load_checkpoint(path_or_state)
    if model.optimizer is None:
        raise CheckpointError("restore_checkpoint: compile the model (with the same optimizer) first")
    problems = []
    if isinstance(path_or_state, CheckpointState):  # not checked by load_checkpoint
        if not _is_count(state.epoch):
            problems.append(f"epoch: must be a non-negative integer, got {state.epoch!r}")
        if restore_rng and _rng_state_problem(state.rng_state):
            problems.append(f"rng_state: {_rng_state_problem(state.rng_state)}")
        problems += _array_problems(state.weights, state.optimizer_state)
    entries = saving.weight_entries(model)
    problems += saving.weight_dict_problems(state.weights, entries, prefix="weights ",
                                            shape_words="model has shape {expected}, checkpoint {got}")
    opt_name = type(model.optimizer).__name__
    if state.optimizer and state.optimizer != opt_name:
        problems.append(f"optimizer: model uses {opt_name}, checkpoint holds {state.optimizer} state")
    for key, arr in model.optimizer.get_state(model.params).items():
        if key not in state.optimizer_state:
            problems.append(f"missing optimizer state {key}")
        elif np.shape(state.optimizer_state[key]) != np.shape(arr):
            problems.append(f"optimizer state {key}: expected shape {np.shape(arr)}, "
                            f"got {np.shape(state.optimizer_state[key])}")
        elif key != "iterations" and saving.value_problem(state.optimizer_state[key], arr.dtype):
            problems.append(f"optimizer state {key}: {saving.value_problem(state.optimizer_state[key], arr.dtype)}")
    named = {}
    if callbacks is None:
        if state.callbacks:
            warnings.warn(f"restore_checkpoint: {state.path} holds the state of {', '.join(state.callbacks)}; "
                          "pass callbacks=[...] to restore it (without it a resumed run may stop elsewhere)",
                          UserWarning, stacklevel=2)
    else:
        named = callback_states(callbacks)
        problems += [f"callbacks: the checkpoint holds no state for {name} (was it in the interrupted run?)"
                     for name in named if name not in state.callbacks]
        problems += [f"callbacks: the checkpoint holds the state of {name}, but no such callback was given"
                     for name in state.callbacks if name not in named]
    if problems:
        raise CheckpointError(f"{state.path}: checkpoint does not fit this model:\n  " + "\n  ".join(problems))
    _apply_callback_states(named, state, model)  # the only step that can still refuse: first, undone on error
    for name, a, _ in entries:
        a[...] = state.weights[name]
    model.optimizer.set_state(model.params, state.optimizer_state)
    if restore_rng:
        set_rng_state(state.rng_state)
    return state


def _apply_callback_states(named, state, model):
    done = []
    try:
        for name, cb in named.items():
            before = cb.get_state()
            cb.set_model(model)
            cb.set_state(state.callbacks[name])
            done.append((cb, before))
    except (ValueError, TypeError) as e:
        for cb, before in reversed(done):
            cb.set_state(before)
        raise CheckpointError(f"{state.path}: checkpoint does not fit this model:\n  callbacks/{name}: {e}") from None


class TrainingCheckpoint(Callback):
    """Save a full checkpoint (weights, optimizer, RNG, history, callbacks' states) after every epoch, atomically.

    The states of the fit's stateful callbacks (e.g. :class:`npcnn.callbacks.EarlyStopping`) are saved
    too; such callbacks must come *before* the checkpoint in ``callbacks`` (so that it saves their state
    after they have seen the epoch), else ``fit`` raises ``ValueError`` before the first step.

    Args:
        directory: folder for ``checkpoint.npz`` (created if needed).
        history: the history of epochs finished before this ``fit`` (when resuming); the logs of
            each new epoch are appended to it, so the checkpoint always holds the whole run.
        extra: JSON-able dict stored with every checkpoint (e.g. the run's settings).
        callbacks: the callbacks whose state to save; default: every stateful callback of the ``fit``.
    """

    def __init__(self, directory, history=None, extra=None, filename=DEFAULT_NAME, callbacks=None):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, filename)
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.extra = dict(extra or {})
        self.callbacks = None if callbacks is None else list(callbacks)
        self.saved_epoch = None  # epochs finished in the last checkpoint this callback wrote
        self._fit_callbacks = ()

    def exists(self):
        return os.path.isfile(self.path)

    def set_callbacks(self, callbacks):
        self._fit_callbacks = tuple(callbacks)

    def _stateful(self):
        if self.callbacks is not None:
            return callback_states(self.callbacks)
        fit = [cb for cb in self._fit_callbacks if cb is not self]
        return callback_states(fit)

    def on_train_begin(self, logs=None):
        if self.callbacks is None and self in self._fit_callbacks:
            after = self._fit_callbacks[self._fit_callbacks.index(self) + 1:]
            late = [type(cb).__name__ for cb in after if cb.is_stateful()]
            if late:
                raise ValueError(f"TrainingCheckpoint: put it after {', '.join(late)} in callbacks: it saves "
                                 "their state at the end of each epoch, so it must run after them")

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            if np.ndim(v) == 0:
                self.history.setdefault(k, []).append(float(v))
        states = {name: cb.get_state() for name, cb in self._stateful().items()}
        # under MPI rank 0 writes (every rank holds the same weights), the others wait for the file
        distributed.root_writes(lambda: save_checkpoint(self.path, self.model, epoch + 1, self.history, self.extra,
                                                        callbacks=states))
        self.saved_epoch = epoch + 1


__all__ = ["save_checkpoint", "load_checkpoint", "restore_checkpoint", "TrainingCheckpoint", "CheckpointState",
           "CheckpointError", "callback_states"]
