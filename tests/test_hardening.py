"""Issue 11: nothing a user does by mistake loses work or ends in a traceback.

``CASES`` below are the new errors and warnings (state files, callbacks, thread settings, the CIFAR-10
command line): ``test_case`` runs each one and checks its exception (or the command's exit status and
the one line it prints) and message; ``test_docs_table_is_current`` checks that the second table of
docs/errors.md shows exactly these rows. Regenerate it with ``python tests/test_hardening.py``.
The other tests here cover EarlyStopping (item 13), NPCNN_NUM_THREADS (item 5) and the benchmark
smoke run in CI (item 15).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass
from typing import Callable
from unittest import mock

import numpy as np
import pytest

import npcnn
from npcnn.callbacks import EarlyStopping
from npcnn.checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint, restore_checkpoint, save_checkpoint
from npcnn.examples import cifar10 as example
from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from npcnn.models import Sequential
from npcnn.threads import max_threads, threads_from_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "errors.md")
QUICK = ["--sample", "--limit", "48", "--batch-size", "16", "--seed", "3", "--verbose", "0"]


# ----------------------------------------------------------------------------- fixtures for the cases
def small():
    m = Sequential([Conv2D(4, 3, activation="relu", input_shape=(8, 8, 3)), MaxPooling2D(2), Flatten(),
                    Dense(5, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


X = np.random.default_rng(0).standard_normal((12, 8, 8, 3)).astype(np.float32)
Y = np.arange(12) % 5


def big_weights():
    w = [a.astype(np.float64) for a in small().get_weights()]
    w[3][2] = 1e300
    return w


def big_weights_file(tmp):
    m = small()
    names = [f"{layer.name}/{k}" for layer in m.layers for k in layer.params]
    path = os.path.join(tmp, "big.npz")
    np.savez(path, **dict(zip(names, big_weights())))
    return path


def forged(tmp, name="conv2d/kernel.npy", file="forged.npz"):
    """A ~300-byte .npz whose only member's header declares shape (10**11,) float64 (800 GB)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**11,)})
    path = os.path.join(tmp, file)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, buf.getvalue() + b"\0" * 64)
    return path


def checkpoint_with(tmp, meta=None, **arrays):
    """A checkpoint of small() after one step, with meta fields / arrays replaced (None: removed)."""
    m = small()
    m.train_on_batch(X, Y)
    path = save_checkpoint(os.path.join(tmp, "good.npz"), m, 1)
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    doc = json.loads(str(data["meta"]))
    for k, v in (meta or {}).items():
        if v is None:
            doc.pop(k)
        else:
            doc[k] = v
    data["meta"] = np.array(json.dumps(doc))
    data.update(arrays)
    out = os.path.join(tmp, "ck.npz")
    np.savez(out, **data)
    return out


def meta_not_object(tmp):
    path = checkpoint_with(tmp)
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["meta"] = np.array("[1, 2, 3]")
    np.savez(path, **data)
    return path


def early_stopping_checkpoint(tmp):
    m = small()
    m.fit(X, Y, epochs=1, batch_size=6, verbose=0,
          callbacks=[EarlyStopping("loss"), TrainingCheckpoint(os.path.join(tmp, "ck"))])
    return os.path.join(tmp, "ck", "checkpoint.npz")


def fit_with_missing_monitor():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small().fit(X, Y, epochs=2, batch_size=6, verbose=0, validation_data=(X, Y),
                    callbacks=[EarlyStopping(monitor="val_acc")])


def pickled_encode(tmp):
    import _codecs

    class Encode:
        def __reduce__(self):
            return (_codecs.encode, ("abc", "utf-8"))

    folder = os.path.join(tmp, "cifar-10-batches-py")
    os.makedirs(folder)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"batch_label": Encode()}, f, protocol=2)
    return tmp


class Exit(Exception):
    """What ``python -m npcnn.examples.cifar10`` did: its exit status and the last line it printed on stderr."""

    def __init__(self, status, line):
        super().__init__(line)
        self.status = status


def cli(argv, *patches):
    """Run the command in this process; raise :class:`Exit` with its status and last stderr line."""
    err = io.StringIO()
    handler = signal.getsignal(signal.SIGINT)
    status = 0
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        stack.enter_context(contextlib.redirect_stderr(err))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        try:
            example._cli(argv)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
        finally:
            signal.signal(signal.SIGINT, handler)  # _cli ignores a second Ctrl-C after the first
    lines = err.getvalue().strip().splitlines()
    raise Exit(status, lines[-1] if lines else "")


def cli_after_a_run(tmp, epochs=1):
    ck = os.path.join(tmp, "ck")
    with contextlib.redirect_stdout(io.StringIO()):
        example.main(QUICK + ["--epochs", str(epochs), "--checkpoint-dir", ck])
    return ck


def interrupt_in_a_kernel():
    """Ctrl-C inside a Numba kernel, as Numba reports it: a SystemError whose context is the KeyboardInterrupt."""
    real = TrainingCheckpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        real(self, epoch, logs)
        if epoch == 1:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise SystemError("CPUDispatcher(<function _im2col_serial>) returned a result with an "
                                  "exception set") from None

    return mock.patch.object(TrainingCheckpoint, "on_epoch_end", on_epoch_end)


def history_disk_full():
    import errno

    import npcnn.utils

    real = npcnn.utils.atomic_write

    def atomic_write(path, mode="wb"):
        if os.path.basename(path) == "history.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, mode)

    return mock.patch.object(npcnn.utils, "atomic_write", atomic_write)


def other_backend():
    return npcnn.use_backend("numpy" if npcnn.get_backend() == "numba" else "numba")


def file_at(tmp, name="a_file"):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write("x")
    return path


# ----------------------------------------------------------------------------- the cases
@dataclass
class Case:
    id: str
    where: str  # the public boundary
    what: str  # the mistake, in words
    exc: type
    match: str  # regex the message must match
    act: Callable  # act(state, tmp) -> must raise
    setup: Callable | None = None  # setup(tmp) -> state


C = Case
ST = "python -m npcnn.examples.cifar10"
CASES = [
    # --- item 7: values beyond float32
    C("set-weights-beyond-float32", "set_weights", "float64 weights holding 1e300", ValueError,
      r"set_weights: weights do not match:\n  array 3 \(layer 'dense' bias\): holds values beyond float32's range",
      lambda s, t: small().set_weights(big_weights())),
    C("load-weights-beyond-float32", "load_weights", "a weights file holding 1e300 (float64)", ValueError,
      r"load_weights\('<tmp>/big.npz'\): weights do not match the model:\n  dense/bias: holds values beyond",
      lambda s, t: small().load_weights(s), setup=big_weights_file),
    # --- item 8: sizes declared beyond the file
    C("load-weights-forged-size", "load_weights", "a 300-byte .npz whose header claims shape (10**11,)", ValueError,
      r"is not an npcnn weights file .*: member 'conv2d/kernel.npy' declares shape \(100000000000,\)",
      lambda s, t: small().load_weights(s), setup=forged),
    C("checkpoint-forged-size", "load_checkpoint", "a 300-byte checkpoint whose header claims shape (10**11,)",
      CheckpointError, r"<tmp>/forged.npz: not a readable npcnn checkpoint \(member 'weights/conv2d/kernel.npy'",
      lambda s, t: load_checkpoint(s), setup=lambda t: forged(t, "weights/conv2d/kernel.npy")),
    # --- item 9: the whole checkpoint is checked before anything is applied
    C("checkpoint-nan-weights", "restore_checkpoint", "NaN weights in a checkpoint", CheckpointError,
      r"<tmp>/ck.npz: invalid checkpoint:\n  weights/dense/bias: contains NaN or Inf",
      lambda s, t: restore_checkpoint(s, small()),
      setup=lambda t: checkpoint_with(t, **{"weights/dense/bias": np.full(5, np.nan, np.float32)})),
    C("checkpoint-negative-adam-v", "restore_checkpoint", "a negative Adam second moment v", CheckpointError,
      r"optimizer/slot1_v: a second moment \(mean of squared gradients\) must be >= 0, found -1",
      lambda s, t: restore_checkpoint(s, small()),
      setup=lambda t: checkpoint_with(t, **{"optimizer/slot1_v": -np.ones(4, np.float32)})),
    C("checkpoint-negative-iterations", "restore_checkpoint", "optimizer iterations -3", CheckpointError,
      r"optimizer/iterations: must be a non-negative integer, got -3",
      lambda s, t: restore_checkpoint(s, small()),
      setup=lambda t: checkpoint_with(t, **{"optimizer/iterations": np.array(-3)})),
    C("checkpoint-negative-epoch", "load_checkpoint", "epoch -1 in the meta data", CheckpointError,
      r"invalid checkpoint:\n  epoch: must be a non-negative integer, got -1",
      lambda s, t: load_checkpoint(s), setup=lambda t: checkpoint_with(t, {"epoch": -1})),
    C("checkpoint-missing-epoch", "load_checkpoint", "no epoch in the meta data", CheckpointError,
      r"invalid checkpoint:\n  epoch: missing", lambda s, t: load_checkpoint(s),
      setup=lambda t: checkpoint_with(t, {"epoch": None})),
    C("checkpoint-bad-rng-state", "restore_checkpoint", "an rng_state naming no NumPy bit generator",
      CheckpointError, r"rng_state: unknown bit generator 'os'",
      lambda s, t: restore_checkpoint(s, small()),
      setup=lambda t: checkpoint_with(t, {"rng_state": {"bit_generator": "os"}})),
    C("checkpoint-meta-not-object", "load_checkpoint", "meta data that is a JSON list", CheckpointError,
      r"not an npcnn checkpoint \(meta: expected a JSON object, got list\)",
      lambda s, t: load_checkpoint(s), setup=meta_not_object),
    C("checkpoint-is-a-directory", "load_checkpoint", "a directory named checkpoint.npz", CheckpointError,
      r"<tmp>/checkpoint.npz: not a readable npcnn checkpoint \(it is a directory\)",
      lambda s, t: load_checkpoint(s), setup=lambda t: os.makedirs(os.path.join(t, "checkpoint.npz")) or
      os.path.join(t, "checkpoint.npz")),
    # --- item 10: callbacks' state
    C("checkpoint-before-early-stopping", "fit", "callbacks=[TrainingCheckpoint(...), EarlyStopping()]", ValueError,
      r"TrainingCheckpoint: put it after EarlyStopping in callbacks",
      lambda s, t: small().fit(X, Y, epochs=1, verbose=0, callbacks=[TrainingCheckpoint(t), EarlyStopping("loss")])),
    C("restore-without-the-callback", "restore_checkpoint", "callbacks=[] for a checkpoint holding EarlyStopping's "
      "state", CheckpointError, r"the checkpoint holds the state of EarlyStopping, but no such callback was given",
      lambda s, t: restore_checkpoint(s, small(), callbacks=[]), setup=early_stopping_checkpoint),
    C("early-stopping-bad-state", "EarlyStopping.set_state", "wait=-1", ValueError,
      r"EarlyStopping.set_state: wait must be a non-negative integer, got -1",
      lambda s, t: EarlyStopping().set_state({"wait": -1, "best": 1.0, "stopped_epoch": 0})),
    # --- item 13: EarlyStopping's arguments
    C("early-stopping-mode", "EarlyStopping", "mode='mni'", ValueError,
      r"EarlyStopping: unknown mode 'mni'. Did you mean 'min'\?", lambda s, t: EarlyStopping(mode="mni")),
    C("early-stopping-patience", "EarlyStopping", "patience=-1", ValueError,
      r"EarlyStopping: patience must be a non-negative integer, got -1", lambda s, t: EarlyStopping(patience=-1)),
    C("early-stopping-missing-monitor", "fit", "EarlyStopping(monitor='val_acc') (the key is 'val_accuracy'): a "
      "warning, once", UserWarning, r"Early stopping conditioned on metric `val_acc` which is not available. "
      r"Available metrics are: loss,accuracy,val_loss,val_accuracy", lambda s, t: fit_with_missing_monitor()),
    # --- item 5: thread settings
    C("threads-variable", "import npcnn", "NPCNN_NUM_THREADS=0 (or -1, 1000, 'two')", ValueError,
      r"NPCNN_NUM_THREADS='0': must be an integer between 1 and <cores> \(the cores Numba can use\)",
      lambda s, t: threads_from_env("0")),
    C("cli-threads-range", ST, "--threads 1000", Exit,
      r"error: --threads must be between 1 and <cores> \(the cores Numba can use\), got 1000",
      lambda s, t: cli(QUICK + ["--threads", "1000"])),
    # --- items 1-4, 6: the command line
    C("cli-existing-checkpoint", ST, "a second run on a --checkpoint-dir holding a checkpoint, without --resume",
      Exit, r"cifar10: error: <tmp>/ck/checkpoint.npz already holds a checkpoint: continue that run with --resume, "
      "or start over with --overwrite", lambda s, t: cli(QUICK + ["--checkpoint-dir", s]), setup=cli_after_a_run),
    C("cli-output-dir-is-a-file", ST, "--output-dir naming a file", Exit,
      r"cifar10: error: --output-dir <tmp>/a_file: exists and is not a directory",
      lambda s, t: cli(QUICK + ["--output-dir", s]), setup=file_at),
    C("cli-checkpoint-dir-is-a-file", ST, "--checkpoint-dir naming a file", Exit,
      r"cifar10: error: --checkpoint-dir <tmp>/a_file: exists and is not a directory",
      lambda s, t: cli(QUICK + ["--checkpoint-dir", s]), setup=file_at),
    C("cli-save-is-a-directory", ST, "--save naming a folder", Exit,
      r"cifar10: error: --save <tmp>: is a directory; give a file name, e.g. <tmp>/weights.npz",
      lambda s, t: cli(QUICK + ["--output-dir", os.path.join(t, "out"), "--save", t])),
    C("cli-checkpoint-is-a-directory", ST, "--resume where checkpoint.npz is a directory", Exit,
      r"cifar10: error: <tmp>/ck/checkpoint.npz is not a checkpoint file \(it is a directory or something else\)",
      lambda s, t: cli(QUICK + ["--checkpoint-dir", os.path.join(t, "ck"), "--resume"]),
      setup=lambda t: os.makedirs(os.path.join(t, "ck", "checkpoint.npz"))),
    C("cli-disk-full", ST, "history.json cannot be written (disk full): the weights (--save) are already written",
      Exit, r"cifar10: error: cannot write the history to <tmp>/out/history.json: No space left on device",
      lambda s, t: cli(QUICK + ["--epochs", "1", "--output-dir", os.path.join(t, "out"), "--save",
                                os.path.join(t, "w.npz")], history_disk_full())),
    C("cli-interrupted", ST, "Ctrl-C in epoch 3 (inside a Numba kernel: a SystemError caused by the "
      "KeyboardInterrupt)", Exit, r"cifar10: interrupted after epoch 2; continue with --resume",
      lambda s, t: cli(QUICK + ["--epochs", "4", "--checkpoint-dir", os.path.join(t, "ck")], interrupt_in_a_kernel())),
    C("cli-resume-other-seed", ST, "--resume with --seed 4 for a checkpoint of --seed 3", Exit,
      r"cifar10: error: <tmp>/ck/checkpoint.npz: cannot resume with other settings \(seed: checkpoint 3, now 4",
      lambda s, t: cli([a if a != "3" else "4" for a in QUICK] + ["--epochs", "2", "--checkpoint-dir", s,
                                                                 "--resume"]), setup=cli_after_a_run),
    C("cli-resume-other-backend", ST, "--resume on another backend (a warning; the run goes on)", Exit,
      r"cifar10: warning: resuming with backend='(numpy|numba)' \(checkpoint: '(numba|numpy)'\): the result will not "
      "be bit-identical", lambda s, t: cli(QUICK + ["--epochs", "2", "--checkpoint-dir", s, "--resume"],
                                           other_backend()), setup=cli_after_a_run),
    # --- item 14: the restricted unpickler
    C("cifar10-codecs-encode", "cifar10.load_data", "_codecs.encode('abc', 'utf-8') in a batch file",
      ValueError, r"data_batch_1: not a valid CIFAR-10 batch file \(refused or malformed pickle: refusing "
      r"_codecs.encode\(str, 'utf-8'\): only latin-1 byte strings are allowed\)",
      lambda s, t: __import__("npcnn.datasets.cifar10", fromlist=["x"]).load_data(s), setup=pickled_encode),
]

STATUS = {"cli-threads-range": 2, "cli-interrupted": 130, "cli-resume-other-backend": 0}


def normalise(message, tmp):
    message = message.replace(os.fspath(tmp), "<tmp>")
    return message.replace(f"between 1 and {max_threads()} ", "between 1 and <cores> ")


def run_case(case, tmp):
    state = case.setup(tmp) if case.setup else None
    try:
        case.act(state, tmp)
    except Exception as e:  # noqa: BLE001 - the point is to see what comes out
        return e
    return None


@pytest.fixture(autouse=True)
def _seed():
    npcnn.set_random_seed(0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, tmp_path):
    err = run_case(case, str(tmp_path))
    assert isinstance(err, case.exc), f"{case.id}: got {err!r}"
    message = normalise(str(err), tmp_path)
    assert re.search(case.match, message), f"{case.id}: {message!r} does not match {case.match!r}"
    if isinstance(err, Exit):
        assert err.status == STATUS.get(case.id, 1), (case.id, err.status)


def test_case_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)


BEGIN = "<!-- BEGIN HARDENING TABLE (generated by `python tests/test_hardening.py`) -->"
END = "<!-- END HARDENING TABLE -->"


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def render_table(tmp):
    rows = ["| id | where | mistake | error | message |", "|---|---|---|---|---|"]
    for case in CASES:
        sub = os.path.join(tmp, case.id)
        os.makedirs(sub)
        npcnn.set_random_seed(0)
        err = run_case(case, sub)
        message = normalise(str(err), sub) if err is not None else "(no error)"
        name = f"exit status {err.status}" if isinstance(err, Exit) else type(err).__name__ if err else "-"
        message = re.sub(r"resuming with backend='\w+' \(checkpoint: '\w+'\)",
                         "resuming with backend='numpy' (checkpoint: 'numba')", message)
        rows.append(f"| `{case.id}` | `{case.where}` | {_cell(case.what)} | `{name}` | {_cell(message)} |")
    return "\n".join(rows)


def test_docs_table_is_current(tmp_path):
    table = render_table(str(tmp_path))
    with open(DOC, encoding="utf8") as f:
        text = f.read()
    assert BEGIN in text and END in text, "docs/errors.md has no hardening table"
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == table, "docs/errors.md is out of date: run `python tests/test_hardening.py`"


# ----------------------------------------------------------------------------- item 13: EarlyStopping
def test_early_stopping_rejects_unknown_modes():
    for mode in ("mni", "MIN", "", None):
        with pytest.raises(ValueError, match="EarlyStopping: unknown mode"):
            EarlyStopping(mode=mode)
    assert EarlyStopping(mode="max").sign == -1 and EarlyStopping(mode="min").sign == 1
    assert EarlyStopping("val_accuracy").mode == "max" and EarlyStopping("val_loss").mode == "min"


def test_early_stopping_warns_once_per_fit_on_a_missing_key():
    model = small()
    early = EarlyStopping(monitor="val_acc", patience=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(X, Y, epochs=3, batch_size=6, verbose=0, validation_data=(X, Y), callbacks=[early])
    mine = [w for w in caught if "Early stopping conditioned" in str(w.message)]
    assert len(mine) == 1 and issubclass(mine[0].category, UserWarning)
    assert str(mine[0].message) == ("Early stopping conditioned on metric `val_acc` which is not available. "
                                    "Available metrics are: loss,accuracy,val_loss,val_accuracy")
    assert len(history.epoch) == 3  # it cannot stop on a key it never sees
    with warnings.catch_warnings(record=True) as caught:  # a new fit warns again, once
        warnings.simplefilter("always")
        model.fit(X, Y, epochs=2, batch_size=6, verbose=0, callbacks=[early])
    assert len([w for w in caught if "Early stopping conditioned" in str(w.message)]) == 1


def test_early_stopping_still_stops():
    model = small()
    early = EarlyStopping(monitor="loss", min_delta=100, patience=0)
    history = model.fit(X, Y, epochs=5, batch_size=6, verbose=0, callbacks=[early])
    assert history.epoch == [0, 1] and early.stopped_epoch == 1


# ----------------------------------------------------------------------------- item 5: NPCNN_NUM_THREADS
@pytest.mark.parametrize("value", ["0", "-1", "1000", "two", "1.5"])
def test_thread_variable_values(value):
    with pytest.raises(ValueError, match=rf"^NPCNN_NUM_THREADS='{re.escape(value)}': must be an integer between 1 "
                                         rf"and {max_threads()} \(the cores Numba can use\)"):
        threads_from_env(value)
    assert threads_from_env(" 1 ") == 1


def test_bad_thread_variable_fails_at_import_naming_it(tmp_path):
    env = dict(os.environ, NPCNN_NUM_THREADS="0", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", "import npcnn"], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: NPCNN_NUM_THREADS='0': must be an integer between 1 and ")
    assert "set_num_threads" not in last


# ----------------------------------------------------------------------------- item 15: benchmarks in CI
def test_benchmarks_pass_with_timing_disabled(tmp_path):
    """``pytest benchmarks --benchmark-disable`` (a smoke run) failed: record_throughput read benchmark.stats,
    which is None then. One model benchmark per engine kind, quickly."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
                           os.path.join(ROOT, "benchmarks", "test_model_bench.py"), "-k", "inference"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for python/pip/python3 in a copy of .ci/run: records its arguments, exits as told
echo "$(basename "$0") $*" >> "$CI_LOG"
case "$*" in
  "-m venv .ci-venv") mkdir -p .ci-venv/bin && : > .ci-venv/bin/activate ;;
  "-m pytest -q") exit "$TESTS_RC" ;;
  "-m pytest benchmarks --benchmark-disable -q") exit "$BENCH_RC" ;;
esac
exit 0
"""


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
@pytest.mark.parametrize("tests_rc,bench_rc,expected", [(0, 0, 0), (1, 0, 1), (0, 1, 1), (5, 0, 1), (0, 5, 1),
                                                        (2, 3, 1)])
def test_ci_runs_the_benchmark_smoke_test(tmp_path, tests_rc, bench_rc, expected):
    """.ci/run runs the tests, then the benchmarks with --benchmark-disable (even when the tests failed), and
    fails when either fails (pytest's 5, 'no tests collected', included)."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text(open(os.path.join(ROOT, ".ci", "run")).read())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "python3", "pip"):
        (bin_dir / name).write_text(FAKE_PYTHON)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", CI_LOG=str(log),
               TESTS_RC=str(tests_rc), BENCH_RC=str(bench_rc))
    proc = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == expected, proc.stderr
    calls = log.read_text().splitlines()
    assert "python -m pytest -q" in calls
    assert calls[-1] == "python -m pytest benchmarks --benchmark-disable -q"
    assert calls.index("python -m pytest -q") < len(calls) - 1


if __name__ == "__main__":  # regenerate the hardening table in docs/errors.md
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        table = render_table(d)
    with open(DOC, encoding="utf8") as f:
        text = f.read()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(DOC, "w", encoding="utf8") as f:
        f.write(head + BEGIN + "\n" + table + "\n" + END + tail)
    print(f"wrote {len(CASES)} rows to {DOC}")
