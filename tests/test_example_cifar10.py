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
