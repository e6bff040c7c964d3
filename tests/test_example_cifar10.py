"""python -m npcnn.examples.cifar10: quick runs on the bundled sample, offline fallback, plots,
terminal/non-terminal output, and a run killed with SIGKILL then resumed bit for bit. No network."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from npcnn.checkpoint import CheckpointError, load_checkpoint
from npcnn.examples import cifar10 as example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--sample", "--limit", "48", "--batch-size", "16", "--seed", "3"]
UNREACHABLE = "http://127.0.0.1:9/cifar-10-python.tar.gz"


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["NPCNN_CIFAR10_URL"] = UNREACHABLE  # never the network
    env.update(extra)
    return env


def _weights(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_quick_run_outputs(tmp_path, capsys):
    result = example.main(QUICK + ["--epochs", "2", "--output-dir", str(tmp_path), "--save", str(tmp_path / "w.npz")])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1] == f"Test accuracy: {result['test_accuracy']:.4f}"
    assert "Total params: 122,570" in out  # the Keras tutorial model
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    # not a terminal: one line per epoch, with validation metrics, and no control characters
    # (the final evaluate(verbose=2) prints one more such line, Keras-style, without val_ metrics)
    step_lines = [ln for ln in lines if ln.startswith("3/3 ") and "ms/step" in ln]
    epoch_lines = [ln for ln in step_lines if "val_" in ln]
    assert len(epoch_lines) == 2 and all("val_accuracy" in ln and "loss" in ln for ln in epoch_lines)
    assert len(step_lines) == 3 and "accuracy" in step_lines[-1] and "val_" not in step_lines[-1]
    assert "\r" not in out and "\x1b" not in out
    assert "SAMPLE" in out  # plainly labelled
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist["data"] == "sample" and hist["epochs"] == 2 and hist["n_train"] == 48
    assert set(hist["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert hist["test_accuracy"] == result["test_accuracy"]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:  # matplotlib is an optional extra: the run says it skipped the plot
        assert not (tmp_path / "history.png").exists() and "matplotlib" in out
    assert set(_weights(tmp_path / "w.npz")) >= {"conv2d/kernel", "dense_1/bias"}


def test_verbose_2_and_0(tmp_path, capsys):
    example.main(QUICK + ["--epochs", "1", "--verbose", "2", "--output-dir", str(tmp_path)])
    out2 = capsys.readouterr().out
    assert "Epoch 1/1" in out2 and out2.strip().splitlines()[-1].startswith("Test accuracy: 0.")
    example.main(QUICK + ["--epochs", "1", "--verbose", "0", "--output-dir", str(tmp_path)])
    out0 = capsys.readouterr().out
    assert "Epoch 1/1" not in out0 and out0.strip().splitlines()[-1].startswith("Test accuracy: 0.")


def test_no_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    example.main(QUICK + ["--epochs", "1", "--verbose", "0", "--output-dir", str(tmp_path)])
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert (tmp_path / "history.json").exists() and not (tmp_path / "history.png").exists()


def test_offline_falls_back_to_the_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NPCNN_CIFAR10_URL", UNREACHABLE)
    empty = tmp_path / "empty"
    result = example.main(["--data-dir", str(empty), "--limit", "32", "--epochs", "1", "--verbose", "0",
                           "--output-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    offline = [ln for ln in out.splitlines() if ln.startswith("OFFLINE")]
    assert len(offline) == 1 and "cifar-10-python.tar.gz" in offline[0] and "SAMPLE" in offline[0]
    assert str(empty) in offline[0]
    assert result["data"] == "sample"
    assert out.strip().splitlines()[-1].startswith("Test accuracy: 0.")


def test_corrupt_data_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    from npcnn.datasets.cifar10 import CIFAR10FormatError

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (folder / name).write_bytes(b"\x80\x04garbage")
    with pytest.raises(CIFAR10FormatError, match="data_batch_1"):
        example.main(["--data-dir", str(tmp_path), "--epochs", "1", "--output-dir", str(tmp_path / "out")])


def test_bad_flags(capsys):
    for argv in (["--epochs", "0"], ["--resume"], ["--limit", "-1"], ["--verbose", "3"]):
        with pytest.raises(SystemExit):
            example.main(argv)
    capsys.readouterr()


def test_to_float32_has_no_float64_copy():
    x = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    y = example.to_float32(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, (x / 255.0).astype(np.float32))


def test_resume_refuses_other_settings(tmp_path, capsys):
    ck = str(tmp_path / "ck")
    example.main(QUICK + ["--epochs", "1", "--verbose", "0", "--checkpoint-dir", ck])
    with pytest.raises(CheckpointError, match="batch_size"):
        example.main(["--sample", "--limit", "48", "--batch-size", "8", "--epochs", "2", "--checkpoint-dir", ck,
                      "--resume"])
    out = capsys.readouterr().out
    assert "Test accuracy" in out


def _wait_for_epoch(path, epoch, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            try:
                if load_checkpoint(path).epoch >= epoch:
                    return True
            except (CheckpointError, OSError):
                pass  # being replaced right now: try again
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared in time")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_then_resume_is_bit_identical(tmp_path, capsys):
    """Reference: 4 uninterrupted epochs. Then the same run SIGKILLed twice (after epoch 1 and after
    epoch 2 landed on disk, i.e. in the middle of the next epoch) and resumed each time: the final
    weights, test accuracy and whole history are exactly the reference's."""
    args = QUICK + ["--epochs", "4", "--verbose", "0"]
    ref = example.main(args + ["--output-dir", str(tmp_path / "ref"), "--save", str(tmp_path / "ref.npz")])
    capsys.readouterr()

    ck = str(tmp_path / "ck")
    path = os.path.join(ck, "checkpoint.npz")
    killed = 0
    for i, epoch in enumerate((1, 2)):
        cmd = [sys.executable, "-m", "npcnn.examples.cifar10"] + args + ["--checkpoint-dir", ck]
        if i:
            cmd.append("--resume")
        proc = subprocess.Popen(cmd, env=_env(), cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            if _wait_for_epoch(path, epoch, proc):
                proc.send_signal(signal.SIGKILL)
        finally:
            _, err = proc.communicate(timeout=120)
        if proc.returncode == -signal.SIGKILL:
            killed += 1
        else:
            assert proc.returncode == 0, err.decode()
        assert [p for p in os.listdir(ck) if not p.startswith(".")] == ["checkpoint.npz"]

    res = example.main(args + ["--checkpoint-dir", ck, "--resume", "--save", str(tmp_path / "res.npz")])
    out = capsys.readouterr().out
    assert killed >= 1, "the run finished before it could be killed"
    if killed == 2:
        assert "Resuming from" in out and "2 epoch(s) done" in out
    ref_w, res_w = _weights(tmp_path / "ref.npz"), _weights(tmp_path / "res.npz")
    assert ref_w.keys() == res_w.keys()
    for k in ref_w:
        np.testing.assert_array_equal(ref_w[k], res_w[k], err_msg=k)
    assert res["test_accuracy"] == ref["test_accuracy"] and res["test_loss"] == ref["test_loss"]
    assert res["history"] == ref["history"]
    assert out.strip().splitlines()[-1] == f"Test accuracy: {ref['test_accuracy']:.4f}"


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_bar_on_a_terminal(tmp_path):
    """On a real terminal the bar is redrawn in place (carriage returns) and shows the ETA."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "npcnn.examples.cifar10"] + QUICK
                            + ["--epochs", "1", "--output-dir", str(tmp_path)],
                            env=_env(), cwd=str(tmp_path), stdout=slave, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    out = b"".join(chunks).decode(errors="replace")
    assert "\r" in out.replace("\r\n", "\n") and "ETA" in out and "3/3" in out
    assert "Test accuracy: 0." in out


REAL_DIR = os.environ.get("NPCNN_CIFAR10_DIR", "/tmp/cifar")


@pytest.mark.realdata
@pytest.mark.skipif(not os.path.isdir(os.path.join(REAL_DIR, "cifar-10-batches-py")),
                    reason=f"no local CIFAR-10 in {REAL_DIR} (set NPCNN_CIFAR10_DIR)")
def test_real_data_smoke(tmp_path, capsys):
    """Opt-in: the program on the real local copy (first 300 images, 1 epoch)."""
    result = example.main(["--data-dir", REAL_DIR, "--limit", "300", "--epochs", "1", "--seed", "0",
                           "--verbose", "0", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert result["data"] == "cifar10" and result["n_train"] == 300 and "SAMPLE" not in out
    assert out.strip().splitlines()[-1].startswith("Test accuracy: 0.")


# ------------------------------------------------------------------ issue 11 items 1-6: the CLI never loses work
def _cli(argv, capsys):
    """Run the command in-process: (exit status, stdout, stderr)."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as info:
            example._cli(argv)
            raise SystemExit(0)
    finally:
        signal.signal(signal.SIGINT, handler)  # _cli ignores a second Ctrl-C after an interrupt
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a run gets as far as building the model (i.e. past the checks of the paths)."""
    def build():
        raise AssertionError("the run started although an output path is unusable")

    monkeypatch.setattr(example, "build_model", build)


def test_existing_checkpoint_needs_resume_or_overwrite(tmp_path, capsys):
    """Item 1: re-running the command after a crash (no --resume) silently overwrote the checkpoint."""
    ck = tmp_path / "ck"
    example.main(QUICK + ["--epochs", "2", "--verbose", "0", "--checkpoint-dir", str(ck)])
    capsys.readouterr()
    before = (ck / "checkpoint.npz").read_bytes()
    status, out, err = _cli(QUICK + ["--epochs", "3", "--verbose", "0", "--checkpoint-dir", str(ck)], capsys)
    line = _one_error_line(err)
    assert status == 1 and line.startswith("cifar10: error: ") and "--resume" in line and "--overwrite" in line
    assert (ck / "checkpoint.npz").read_bytes() == before and "Epoch" not in out
    # --overwrite starts over: the new checkpoint counts from epoch 1 again
    example.main(QUICK + ["--epochs", "1", "--verbose", "0", "--checkpoint-dir", str(ck), "--overwrite"])
    assert load_checkpoint(ck / "checkpoint.npz").epoch == 1
    with pytest.raises(SystemExit):
        example.main(QUICK + ["--checkpoint-dir", str(ck), "--resume", "--overwrite"])
    with pytest.raises(SystemExit):
        example.main(QUICK + ["--overwrite"])
    capsys.readouterr()


@pytest.mark.parametrize("what", ["output-dir-is-a-file", "checkpoint-dir-is-a-file", "save-is-a-directory",
                                  "save-under-a-file", "history-json-is-a-directory", "read-only-output-dir"])
def test_output_paths_are_checked_before_training(tmp_path, capsys, no_training, monkeypatch, what):
    """Item 2: bad output paths were found only after training (or after epoch 1)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    args = QUICK + ["--epochs", "1", "--verbose", "0"]
    if what == "output-dir-is-a-file":
        args += ["--output-dir", str(a_file)]
        expect = "--output-dir"
    elif what == "checkpoint-dir-is-a-file":
        args += ["--checkpoint-dir", str(a_file)]
        expect = "--checkpoint-dir"
    elif what == "save-is-a-directory":
        args += ["--output-dir", str(tmp_path / "out"), "--save", str(tmp_path)]
        expect = "is a directory"
    elif what == "save-under-a-file":
        args += ["--output-dir", str(tmp_path / "out"), "--save", str(a_file / "w.npz")]
        expect = "--save"
    elif what == "history-json-is-a-directory":
        (tmp_path / "out" / "history.json").mkdir(parents=True)
        args += ["--output-dir", str(tmp_path / "out")]
        expect = "history.json is a directory"
    else:  # a read-only place (simulated: this test may run as root, which may write anywhere)
        import errno
        import tempfile

        real = tempfile.TemporaryFile
        ro = str(tmp_path / "ro")

        def temporary_file(*a, **k):
            if os.path.abspath(k.get("dir", "")) == ro:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real(*a, **k)

        monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
        args += ["--output-dir", ro]
        expect = "cannot write there (Read-only file system)"
    status, out, err = _cli(args, capsys)
    line = _one_error_line(err)
    assert status == 1 and line.startswith("cifar10: error: ") and expect in line, line


def test_weights_are_written_before_the_history_and_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """Item 2: history.json was written first, so --save was lost when it failed; any OSError was a traceback."""
    import errno

    import npcnn.utils

    real = npcnn.utils.atomic_write

    def atomic_write(path, mode="wb"):
        if os.path.basename(path) == "history.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, mode)

    monkeypatch.setattr(npcnn.utils, "atomic_write", atomic_write)
    status, out, err = _cli(QUICK + ["--epochs", "1", "--verbose", "0", "--output-dir", str(tmp_path / "out"),
                                     "--save", str(tmp_path / "w.npz")], capsys)
    line = _one_error_line(err)
    assert status == 1 and line == (f"cifar10: error: cannot write the history to {tmp_path / 'out' / 'history.json'}"
                                    ": No space left on device")
    assert set(_weights(tmp_path / "w.npz")) >= {"conv2d/kernel", "dense_1/bias"}  # the weights made it


def test_checkpoint_that_is_a_directory(tmp_path, capsys, no_training):
    """Item 3: --resume said 'no checkpoint, starting from scratch', trained an epoch, then crashed."""
    ck = tmp_path / "ck"
    (ck / "checkpoint.npz").mkdir(parents=True)
    for extra in (["--resume"], []):
        status, out, err = _cli(QUICK + ["--checkpoint-dir", str(ck)] + extra, capsys)
        line = _one_error_line(err)
        assert status == 1 and "checkpoint.npz is not a checkpoint file" in line and "starting" not in out


def test_interrupt_inside_a_numba_kernel_is_one_line(tmp_path, capsys, monkeypatch):
    """Item 4: Numba can turn Ctrl-C into 'SystemError: ... returned a result with an exception set'."""
    from npcnn.checkpoint import TrainingCheckpoint

    real = TrainingCheckpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        real(self, epoch, logs)
        if epoch == 1:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise SystemError("CPUDispatcher(<function _im2col_serial>) returned a result with an exception "
                                  "set") from None

    monkeypatch.setattr(TrainingCheckpoint, "on_epoch_end", on_epoch_end)
    ck = tmp_path / "ck"
    status, out, err = _cli(QUICK + ["--epochs", "5", "--verbose", "0", "--checkpoint-dir", str(ck)], capsys)
    assert status == 130
    assert _one_error_line(err) == "cifar10: interrupted after epoch 2; continue with --resume"
    assert load_checkpoint(ck / "checkpoint.npz").epoch == 2
    with pytest.raises(example.Interrupted) as info:  # in code: a KeyboardInterrupt saying how far it got
        example.main(QUICK + ["--epochs", "5", "--verbose", "0", "--checkpoint-dir", str(ck), "--overwrite"])
    assert isinstance(info.value, KeyboardInterrupt) and info.value.epochs_done == 2
    monkeypatch.undo()
    monkeypatch.setattr(example, "load", lambda args: (_ for _ in ()).throw(KeyboardInterrupt()))
    status, out, err = _cli(QUICK + ["--verbose", "0", "--output-dir", str(tmp_path / "o")], capsys)
    assert status == 130
    assert _one_error_line(err) == ("cifar10: interrupted before the first epoch ended (no --checkpoint-dir: "
                                    "nothing to resume from)")


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32", reason="needs SIGINT")
def test_ctrl_c_then_resume(tmp_path, capsys):
    """Item 4, for real: SIGINT at a few moments of a run (in fit, evaluate or a checkpoint write): always exit
    status 130 with one line on stderr and an intact checkpoint; resuming ends with exactly the weights of an
    uninterrupted run."""
    args = QUICK + ["--epochs", "6", "--verbose", "0"]
    ref = example.main(args + ["--output-dir", str(tmp_path / "ref"), "--save", str(tmp_path / "ref.npz")])
    capsys.readouterr()
    ck = str(tmp_path / "ck")
    path = os.path.join(ck, "checkpoint.npz")
    interrupted = 0
    for i, delay in enumerate((0.0, 0.003, 0.01)):
        before = load_checkpoint(path).epoch if i else 0
        cmd = [sys.executable, "-m", "npcnn.examples.cifar10"] + args + ["--checkpoint-dir", ck]
        if i:
            cmd.append("--resume")
        proc = subprocess.Popen(cmd, env=_env(), cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            if before < 6 and _wait_for_epoch(path, before + 1, proc):  # this process is training: interrupt it
                time.sleep(delay)
                proc.send_signal(signal.SIGINT)
        finally:
            _, err = proc.communicate(timeout=120)
        err = err.decode()
        if proc.returncode == 0:  # finished before the signal
            continue
        interrupted += 1
        assert proc.returncode == 130, err
        line = _one_error_line(err)
        done = load_checkpoint(path).epoch  # intact, readable
        assert line == f"cifar10: interrupted after epoch {done}; continue with --resume"
        assert [p for p in os.listdir(ck) if not p.startswith(".")] == ["checkpoint.npz"]
    res = example.main(args + ["--checkpoint-dir", ck, "--resume", "--save", str(tmp_path / "res.npz")])
    capsys.readouterr()
    assert interrupted >= 1, "every run finished before it could be interrupted"
    ref_w, res_w = _weights(tmp_path / "ref.npz"), _weights(tmp_path / "res.npz")
    for k in ref_w:
        np.testing.assert_array_equal(ref_w[k], res_w[k], err_msg=k)
    assert res["history"] == ref["history"]


def test_threads_flag_out_of_range_is_a_parser_error(capsys):
    """Item 5: --threads 1000 was a raw ValueError from set_num_threads."""
    from npcnn.threads import max_threads

    with pytest.raises(SystemExit) as info:
        example.main(QUICK + ["--threads", "1000"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--threads must be between 1 and {max_threads()} (the cores Numba can use), got 1000" in err


def test_resume_records_and_checks_seed_threads_backend(tmp_path, capsys):
    """Item 6: another --seed, thread count or backend on resume went unnoticed."""
    import npcnn

    ck = str(tmp_path / "ck")
    example.main(QUICK + ["--epochs", "1", "--verbose", "0", "--checkpoint-dir", ck])
    extra = load_checkpoint(os.path.join(ck, "checkpoint.npz")).extra
    assert extra["config"]["seed"] == 3
    assert extra["runtime"]["threads"] == npcnn.get_num_threads() and extra["runtime"]["backend"] == npcnn.get_backend()
    capsys.readouterr()
    other_seed = [a if a != "3" else "4" for a in QUICK]
    with pytest.raises(CheckpointError, match=r"seed: checkpoint 3, now 4"):
        example.main(other_seed + ["--epochs", "2", "--verbose", "0", "--checkpoint-dir", ck, "--resume"])
    other = "numpy" if npcnn.get_backend() == "numba" else "numba"
    with npcnn.use_backend(other):
        example.main(QUICK + ["--epochs", "2", "--verbose", "0", "--checkpoint-dir", ck, "--resume"])
    err = capsys.readouterr().err
    assert f"cifar10: warning: resuming with backend={other!r}" in err and "not be bit-identical" in err
    no_seed = [a for i, a in enumerate(QUICK) if a != "--seed" and QUICK[i - 1] != "--seed"]
    with npcnn.use_backend(other):  # the checkpoint now records the backend of its last epochs
        example.main(no_seed + ["--epochs", "3", "--verbose", "0", "--checkpoint-dir", ck, "--resume"])
    assert capsys.readouterr().err == ""  # the checkpoint's seed, same settings: no warning
    assert load_checkpoint(os.path.join(ck, "checkpoint.npz")).extra["config"]["seed"] == 3


# ------------------------------------------------------------------ issue 14: --model deep
DEEP_QUICK = ["--model", "deep", "--sample", "--limit", "48", "--batch-size", "16", "--seed", "3"]


def test_model_defaults():
    seed, deep = example.parse_args([]), example.parse_args(["--model", "deep"])
    assert (seed.model, seed.epochs, seed.batch_size) == ("seed", 10, 32)  # unchanged
    assert (deep.model, deep.epochs, deep.batch_size, deep.weight_decay) == ("deep", 30, 64, 0.05)
    assert seed.weight_decay is None
    mine = example.parse_args(["--model", "deep", "--epochs", "3", "--batch-size", "128"])
    assert (mine.epochs, mine.batch_size) == (3, 128)
    with pytest.raises(SystemExit):
        example.parse_args(["--model", "resnet"])


def test_deep_model_cli_one_short_epoch(tmp_path):
    """The real command, one short epoch of the deep model on the bundled sample: its summary's parameter
    counts are Keras's for the same stack (computed by hand in tests/test_deep_model.py)."""
    proc = subprocess.run([sys.executable, "-m", "npcnn.examples.cifar10", "--model", "deep", "--sample",
                           "--limit", "64", "--batch-size", "32", "--epochs", "1", "--seed", "0",
                           "--output-dir", str(tmp_path)],
                          env=_env(), cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Total params: 552,874 (" in out
    assert "Trainable params: 551,722 (" in out
    assert "Non-trainable params: 1,152 (" in out
    assert "Model: cifar10_deep, AdamW (weight decay 0.05) with a cosine decay from 1e-3 to 0 over 2 updates" in out
    assert "Epoch 1/1" in out and "val_accuracy" in out and "SAMPLE" in out
    assert out.strip().splitlines()[-1].startswith("Test accuracy: ")
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist["model"] == "deep" and hist["data"] == "sample" and hist["epochs"] == 1 and hist["n_train"] == 64
    assert hist["config"]["batch_size"] == 32 and hist["config"]["model"] == "deep"


def test_deep_model_interrupted_then_resumed_is_exact(tmp_path, capsys, monkeypatch):
    """Two epochs uninterrupted against one epoch, Ctrl-C, --resume: same weights (BatchNormalization's
    moving statistics included), history and test accuracy; the cosine schedule continues where it was."""
    args = DEEP_QUICK + ["--epochs", "2", "--verbose", "0"]
    ref = example.main(args + ["--output-dir", str(tmp_path / "ref"), "--save", str(tmp_path / "ref.npz")])

    real_counter = example.epoch_counter

    def stop_after_first_epoch(progress):
        from npcnn.callbacks import Callback

        counter = real_counter(progress)

        class Stop(Callback):
            def on_epoch_end(self, epoch, logs=None):
                counter.on_epoch_end(epoch, logs)
                raise KeyboardInterrupt

        return Stop()

    ck = str(tmp_path / "ck")
    monkeypatch.setattr(example, "epoch_counter", stop_after_first_epoch)
    with pytest.raises(example.Interrupted) as info:
        example.main(args + ["--checkpoint-dir", ck])
    assert info.value.epochs_done == 1 and load_checkpoint(os.path.join(ck, "checkpoint.npz")).epoch == 1
    monkeypatch.setattr(example, "epoch_counter", real_counter)
    capsys.readouterr()
    res = example.main(args + ["--checkpoint-dir", ck, "--resume", "--save", str(tmp_path / "res.npz")])
    assert "Resuming from" in capsys.readouterr().out
    ref_w, res_w = _weights(tmp_path / "ref.npz"), _weights(tmp_path / "res.npz")
    assert ref_w.keys() == res_w.keys() and "batch_normalization/moving_mean" in ref_w
    for k in ref_w:
        np.testing.assert_array_equal(ref_w[k], res_w[k], err_msg=k)
    assert res["history"] == ref["history"] and res["test_accuracy"] == ref["test_accuracy"]


def test_deep_resume_refuses_another_model_or_schedule(tmp_path, capsys):
    ck = str(tmp_path / "ck")
    example.main(DEEP_QUICK + ["--epochs", "1", "--verbose", "0", "--checkpoint-dir", ck])
    seed_args = [a for a in DEEP_QUICK if a not in ("--model", "deep")]
    with pytest.raises(CheckpointError, match=r"model: checkpoint 'deep', now 'seed'"):
        example.main(seed_args + ["--epochs", "2", "--verbose", "0", "--checkpoint-dir", ck, "--resume"])
    # --epochs sets the deep model's schedule (3 updates per epoch here): another total is another schedule
    with pytest.raises(CheckpointError, match=r"schedule: checkpoint .*over 3 updates', now .*over 6 updates'"):
        example.main(DEEP_QUICK + ["--epochs", "2", "--verbose", "0", "--checkpoint-dir", ck, "--resume"])
    capsys.readouterr()


def test_weight_decay_option_is_checked():
    assert example.parse_args(["--model", "deep", "--weight-decay", "0.1"]).weight_decay == 0.1
    assert example.parse_args(["--model", "deep", "--weight-decay", "0"]).weight_decay == 0
    for bad in (["--weight-decay", "0.05"],  # the seed model is the tutorial's, Adam alone
                ["--model", "deep", "--weight-decay", "-1"], ["--model", "deep", "--weight-decay", "nan"],
                ["--model", "deep", "--weight-decay", "lots"]):
        with pytest.raises(SystemExit):
            example.parse_args(bad)


def test_deep_weight_decay_trains_with_adamw_and_resume_must_match(tmp_path, capsys):
    from npcnn.optimizers import Adam, AdamW

    model = example.build_deep_model(10, weight_decay=0.05)
    assert type(model.optimizer) is AdamW and model.optimizer.weight_decay == 0.05
    assert type(example.build_deep_model(10, weight_decay=0).optimizer) is Adam

    ck = str(tmp_path / "ck")
    example.main(DEEP_QUICK + ["--epochs", "1", "--verbose", "0", "--checkpoint-dir", ck, "--weight-decay", "0.1"])
    assert "Model: cifar10_deep, AdamW (weight decay 0.1) with a cosine decay" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match=r"schedule: checkpoint 'AdamW \(weight decay 0.1\), cosine.*now "
                                              r"'AdamW \(weight decay 0.05\), cosine"):
        example.main(DEEP_QUICK + ["--epochs", "1", "--verbose", "0", "--checkpoint-dir", ck, "--resume"])
    with pytest.raises(CheckpointError, match=r"weight decay 0.1\), cosine.*now 'cosine decay from"):
        example.main(DEEP_QUICK + ["--epochs", "1", "--verbose", "0", "--checkpoint-dir", ck, "--resume",
                                   "--weight-decay", "0"])


def test_plain_adam_recipe_keeps_its_schedule_text(tmp_path, capsys):
    """--weight-decay 0 is the recipe before AdamW became the default, with the same text in the checkpoint's
    config, so a checkpoint of that recipe resumes with --weight-decay 0."""
    ck = str(tmp_path / "ck")
    args = DEEP_QUICK + ["--verbose", "0", "--checkpoint-dir", ck, "--weight-decay", "0"]
    example.main(args + ["--epochs", "1"])
    assert "Model: cifar10_deep, Adam with a cosine decay from 1e-3 to 0 over 3 updates" in capsys.readouterr().out
    saved = load_checkpoint(os.path.join(ck, "checkpoint.npz")).extra["config"]["schedule"]
    assert saved == "cosine decay from 1e-3 to 0 over 3 updates"
    with pytest.raises(CheckpointError, match=r"schedule: checkpoint 'cosine decay.*now 'AdamW"):
        example.main(DEEP_QUICK + ["--verbose", "0", "--checkpoint-dir", ck, "--epochs", "1", "--resume"])
