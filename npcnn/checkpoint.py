"""Training checkpoints: everything needed to resume a run bit for bit, in one atomic file.

One ``.npz`` (no pickle) holds the weights (``weights/<layer>/<key>``), the optimizer's state
(``optimizer/iterations``, ``optimizer/slot{i}_{m,v,...}``) and a JSON string ``meta`` with the
number of finished epochs, npcnn's RNG state, the history so far and free-form ``extra`` data.
It is written to a temporary file and renamed over the old one, so a run killed at any moment
(SIGKILL included) leaves either the previous checkpoint or the new one, never a mix of epochs.

Example::

    from npcnn.checkpoint import TrainingCheckpoint, restore_checkpoint

    ckpt = TrainingCheckpoint("runs/ckpt")              # saves after every epoch
    initial_epoch, history = 0, {}
    if ckpt.exists():
        state = restore_checkpoint(ckpt.path, model)    # weights, optimizer, RNG
        initial_epoch, history = state.epoch, state.history
        ckpt.history = history
    model.fit(x, y, epochs=10, initial_epoch=initial_epoch, callbacks=[ckpt])
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from npcnn.callbacks import Callback
from npcnn.utils import atomic_write, get_rng_state, set_rng_state

FORMAT = "npcnn-checkpoint"
VERSION = 1
DEFAULT_NAME = "checkpoint.npz"


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


def _weight_items(model):
    return [(f"{layer.name}/{key}", p) for layer in model.layers for key, p in layer.params.items()]


def save_checkpoint(path, model, epoch, history=None, extra=None):
    """Write ``model``'s weights, its optimizer's state, npcnn's RNG state, ``history`` and ``epoch``
    (epochs finished) to ``path`` atomically.

    Args:
        path: the ``.npz`` file to write (its folder is created).
        model: a compiled, built :class:`npcnn.models.Sequential`.
        epoch: number of finished epochs.
        history: {metric: [value per epoch]} (JSON-able).
        extra: any JSON-able dict (run settings to check on resume).
    Returns:
        the path written.
    """
    if model.optimizer is None:
        raise CheckpointError("save_checkpoint: the model has no optimizer; compile it first")
    items = _weight_items(model)
    arrays = {f"weights/{name}": p for name, p in items}
    for key, arr in model.optimizer.get_state(model.params).items():
        arrays[f"optimizer/{key}"] = arr
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(epoch),
        "optimizer": type(model.optimizer).__name__,
        "weight_names": [name for name, _ in items],
        "rng_state": get_rng_state(),
        "history": _jsonable(history or {}),
        "extra": _jsonable(extra or {}),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    path = os.fspath(path)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def _jsonable(obj):
    """Plain Python types (NumPy scalars and arrays become floats, ints and lists)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a readable npcnn checkpoint (names the file).
    """
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path!r}") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable npcnn checkpoint ({type(e).__name__}: {e})") from None
    try:
        meta = json.loads(str(data.pop("meta")))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: not an npcnn checkpoint (no valid 'meta' entry: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an npcnn checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')!r}, this npcnn reads {VERSION}")
    weights = {k[len("weights/"):]: v for k, v in data.items() if k.startswith("weights/")}
    opt = {k[len("optimizer/"):]: v for k, v in data.items() if k.startswith("optimizer/")}
    return CheckpointState(path=path, epoch=int(meta["epoch"]), weights=weights, optimizer_state=opt,
                           optimizer=meta.get("optimizer", ""), rng_state=meta["rng_state"],
                           history=meta.get("history") or {}, extra=meta.get("extra") or {})


def restore_checkpoint(path_or_state, model, restore_rng=True):
    """Load a checkpoint into ``model`` (weights and optimizer state) and npcnn's RNG.

    Everything is checked before anything is changed: a mismatch (layer names, shapes, optimizer
    kind) raises :class:`CheckpointError` listing every problem and leaves the model untouched.

    Returns:
        the :class:`CheckpointState` (``.epoch`` to pass as ``initial_epoch``, ``.history``, ``.extra``).
    """
    state = path_or_state if isinstance(path_or_state, CheckpointState) else load_checkpoint(path_or_state)
    if model.optimizer is None:
        raise CheckpointError("restore_checkpoint: compile the model (with the same optimizer) first")
    problems = []
    items = _weight_items(model)
    for name, p in items:
        if name not in state.weights:
            problems.append(f"missing weights {name} (shape {p.shape})")
        elif state.weights[name].shape != p.shape:
            problems.append(f"weights {name}: model has shape {p.shape}, checkpoint {state.weights[name].shape}")
    names = {name for name, _ in items}
    problems += [f"unexpected weights {k} (shape {v.shape})" for k, v in state.weights.items() if k not in names]
    opt_name = type(model.optimizer).__name__
    if state.optimizer and state.optimizer != opt_name:
        problems.append(f"optimizer: model uses {opt_name}, checkpoint holds {state.optimizer} state")
    expected_opt = model.optimizer.get_state(model.params)
    for key, arr in expected_opt.items():
        if key not in state.optimizer_state:
            problems.append(f"missing optimizer state {key}")
        elif np.shape(state.optimizer_state[key]) != np.shape(arr):
            problems.append(f"optimizer state {key}: expected shape {np.shape(arr)}, "
                            f"got {np.shape(state.optimizer_state[key])}")
    if problems:
        raise CheckpointError(f"{state.path}: checkpoint does not fit this model:\n  " + "\n  ".join(problems))
    for name, p in items:
        p[...] = state.weights[name]
    model.optimizer.set_state(model.params, state.optimizer_state)
    if restore_rng:
        set_rng_state(state.rng_state)
    return state


class TrainingCheckpoint(Callback):
    """Save a full checkpoint (weights, optimizer, RNG, history) after every epoch, atomically.

    Args:
        directory: folder for ``checkpoint.npz`` (created if needed).
        history: the history of epochs finished before this ``fit`` (when resuming); the logs of
            each new epoch are appended to it, so the checkpoint always holds the whole run.
        extra: JSON-able dict stored with every checkpoint (e.g. the run's settings).
    """

    def __init__(self, directory, history=None, extra=None, filename=DEFAULT_NAME):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, filename)
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.extra = dict(extra or {})

    def exists(self):
        return os.path.isfile(self.path)

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            if np.ndim(v) == 0:
                self.history.setdefault(k, []).append(float(v))
        save_checkpoint(self.path, self.model, epoch + 1, self.history, self.extra)


__all__ = ["save_checkpoint", "load_checkpoint", "restore_checkpoint", "TrainingCheckpoint", "CheckpointState",
           "CheckpointError"]
