"""The tutorial scripts in examples/ run (tiny sizes), write their PNGs, and skip plotting without matplotlib;
the docs/ pages point at functions that exist."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"
SKIP_MESSAGE = "matplotlib is not installed"

HIDE_MATPLOTLIB = (
    "import runpy, sys; sys.modules['matplotlib'] = None; path = sys.argv[1]; sys.argv = sys.argv[1:]; "
    "runpy.run_path(path, run_name='__main__')"
)


def run(script, *args, hide_matplotlib=False, cwd=None, backend="numpy", timeout=300):
    path = str(EXAMPLES / script)
    cmd = [sys.executable] + (["-c", HIDE_MATPLOTLIB] if hide_matplotlib else []) + [path, *map(str, args)]
    env = dict(os.environ, NPCNN_BACKEND=backend, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert proc.returncode == 0, f"{script} {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def run_refused(script, *args, cwd=None):
    """Run a script that must refuse its arguments: exit status 2, an argparse error, no traceback."""
    env = dict(os.environ, NPCNN_BACKEND="numpy", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)
    assert proc.returncode == 2, f"{script} {args}: exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr, proc.stderr
    return proc.stderr


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_every_script_states_what_it_shows():
    scripts = sorted(EXAMPLES.glob("*.py"))
    assert len(scripts) >= 5
    for path in scripts:
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.splitlines()) >= 3, f"{path.name} needs a docstring saying what it shows"
        assert "Run:" in doc, f"{path.name}: the docstring should say how to run it"


def test_conv_by_hand(tmp_path):
    out = run("conv_by_hand.py", cwd=tmp_path)
    assert "im2col: one row per output pixel" in out and "col2im(ones)" in out
    assert "max |out - loop convolution| = 0.0e+00" in out
    assert out.rstrip().endswith("3/3 checks passed")
    # labels: x is (N, H, W, C); out and dout are (N, OH, OW, F), one plane per (n, f); the kernel (KH, KW, C, F)
    assert "x  shape (1, 4, 4, 1) = (N, H, W, C), one plane per (n, c)" in out
    assert "kernel  shape (2, 2, 1, 2) = (KH, KW, C, F), one KH x KW plane kernel[:, :, c, f] per (f, c)" in out
    assert "out reshaped  shape (1, 3, 3, 2) = (N, OH, OW, F), one plane per (n, f)" in out
    assert "(an arbitrary upstream gradient)  shape (1, 3, 3, 2) = (N, OH, OW, F), one plane per (n, f)" in out
    assert "[n=0, f=1]" in out and "[f=1, c=0]" in out
    loops = re.search(r"max \|dx - loops\| = (\S+), max \|dK - loops\| = (\S+), max \|db - loops\| = (\S+)", out)
    assert loops and all(float(v) < 1e-12 for v in loops.groups())
    out = run("conv_by_hand.py", "--height", 5, "--width", 4, "--channels", 2, "--kernel", 3, 2, "--stride", 2,
              "--padding", "same", "--filters", 3, cwd=tmp_path)
    assert "kernel  shape (3, 2, 2, 3) = (KH, KW, C, F)" in out
    assert "out reshaped  shape (1, 3, 2, 3) = (N, OH, OW, F)" in out
    assert out.rstrip().endswith("3/3 checks passed")


@pytest.mark.parametrize("args, message", [
    (("--stride", 0), "--stride: expected a positive integer, got 0"),
    (("--stride", 1, 2, 3), "--stride takes one or two integers (SH [SW]), got 3"),
    (("--kernel", 2, 3, 4), "--kernel takes one or two integers (KH [KW]), got 3"),
    (("--kernel", -1), "--kernel: expected a positive integer, got -1"),
    (("--height", 0), "--height: expected a positive integer, got 0"),
    (("--filters", "two"), "--filters: expected a positive integer, got 'two'"),
    (("--kernel", 5), "does not fit a 4x4 input"),
])
def test_conv_by_hand_refuses_bad_arguments(tmp_path, args, message):
    assert message in run_refused("conv_by_hand.py", *args, cwd=tmp_path)


def test_trace_one_batch(tmp_path):
    out = run("trace_one_batch.py", "--small", "--batch-size", 4, "--weight-scale", 0.5, cwd=tmp_path)
    for name in ("conv2d (Conv2D)", "max_pooling2d (MaxPooling2D)", "flatten (Flatten)", "dense_1 (Dense)"):
        assert name in out
    assert "|d loss / d input image|" in out


@pytest.mark.parametrize("hide", [False, True], ids=["matplotlib", "no-matplotlib"])
def test_plot_filters(tmp_path, hide):
    if not hide and not has_matplotlib():
        pytest.skip("matplotlib is not installed")
    png = tmp_path / "filters.png"
    out = run("plot_filters.py", "--epochs", 1, "--samples", 32, "--out", png, "--save-dir", tmp_path / "w",
              hide_matplotlib=hide, cwd=tmp_path)
    assert "mean filter norm" in out and "mean norm of the change" in out
    if hide:
        assert SKIP_MESSAGE in out and not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"wrote {png}" in out
    # The training path saves the run's initial and trained weights, so it can be replotted like with like.
    from npcnn.gradcheck import seed_model
    from npcnn.utils import set_random_seed

    set_random_seed(0)
    fresh = seed_model((32, 32, 3), (32, 64, 64), 64, 10)
    start, trained = seed_model((32, 32, 3), (32, 64, 64), 64, 10), seed_model((32, 32, 3), (32, 64, 64), 64, 10)
    start.load_weights(tmp_path / "w" / "initial_weights.npz")
    trained.load_weights(tmp_path / "w" / "trained_weights.npz")
    for a, b in zip(start.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(trained.get_weights()[0], start.get_weights()[0])
    assert "--initial" in out and str(tmp_path / "w" / "initial_weights.npz") in out


def test_plot_filters_from_saved_weights(tmp_path):
    from npcnn.gradcheck import seed_model

    model = seed_model((32, 32, 3), (32, 64, 64), 64, 10)
    model.save_weights(tmp_path / "w.npz")
    out = run("plot_filters.py", "--weights", tmp_path / "w.npz", "--out", tmp_path / "f.png", hide_matplotlib=True,
              cwd=tmp_path)
    assert "loaded from w.npz" in out and SKIP_MESSAGE in out
    # Without --initial there is no honest 'before': only the file's filters, and it says so.
    assert "no --initial" in out and "at initialisation" not in out and "change" not in out.split("no --initial")[0]


@pytest.mark.parametrize("hide", [False, True], ids=["matplotlib", "no-matplotlib"])
def test_plot_filters_compares_like_with_like(tmp_path, hide):
    """--weights with --initial: the 'before' and the change are the files' (not the script's own seed-0 init)."""
    if not hide and not has_matplotlib():
        pytest.skip("matplotlib is not installed")
    from npcnn.gradcheck import seed_model
    from npcnn.utils import set_random_seed

    set_random_seed(7)
    model = seed_model((32, 32, 3), (32, 64, 64), 64, 10)
    model.save_weights(tmp_path / "start.npz")
    kernel = model.layers[0].params["kernel"]
    delta = np.random.default_rng(0).standard_normal(kernel.shape).astype(np.float32) * 0.05
    kernel += delta
    model.save_weights(tmp_path / "end.npz")
    png = tmp_path / "f.png"
    out = run("plot_filters.py", "--weights", tmp_path / "end.npz", "--initial", tmp_path / "start.npz", "--out", png,
              hide_matplotlib=hide, cwd=tmp_path)

    def mean_norm(k):
        return np.linalg.norm(k.reshape(-1, k.shape[-1]), axis=0).mean()

    assert "at initialisation: loaded from start.npz" in out and "loaded from end.npz" in out
    assert f"mean filter norm {mean_norm(kernel - delta):.3f} at initialisation" in out
    assert f"mean norm of the change {mean_norm(delta):.3f}" in out
    if hide:
        assert SKIP_MESSAGE in out and not png.exists()
    else:
        assert png.stat().st_size > 1000


def test_plot_filters_initial_needs_weights(tmp_path):
    assert "--initial goes with --weights" in run_refused("plot_filters.py", "--initial", tmp_path / "a.npz",
                                                          cwd=tmp_path)


def test_scripts_write_into_runs_by_default(tmp_path):
    """Item 8: without --out the files land in ./runs/ (ignored by git), and the script prints where."""
    (tmp_path / "h.json").write_text('{"loss": [2.3, 2.0], "accuracy": [0.1, 0.2]}')
    out = run("plot_history.py", "--history", tmp_path / "h.json", cwd=tmp_path, hide_matplotlib=not has_matplotlib())
    if has_matplotlib():
        png = tmp_path / "runs" / "training_curves.png"
        assert png.stat().st_size > 0 and f"wrote {png}" in out
    out = run("plot_history.py", "--epochs", 1, "--samples", 10, "--batch-size", 10, cwd=tmp_path, hide_matplotlib=True)
    assert (tmp_path / "runs" / "history.json").exists() and str(tmp_path / "runs" / "history.json") in out
    out = run("plot_filters.py", "--epochs", 1, "--samples", 16, cwd=tmp_path, hide_matplotlib=not has_matplotlib())
    assert (tmp_path / "runs" / "plot_filters" / "initial_weights.npz").exists()
    assert (tmp_path / "runs" / "plot_filters" / "trained_weights.npz").exists()
    if has_matplotlib():
        assert (tmp_path / "runs" / "first_layer_filters.png").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json", "runs"]
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert "/runs/" in gitignore or "runs/" in gitignore


@pytest.mark.parametrize("hide", [False, True], ids=["matplotlib", "no-matplotlib"])
def test_plot_history_trains_saves_and_plots(tmp_path, hide):
    if not hide and not has_matplotlib():
        pytest.skip("matplotlib is not installed")
    png, saved = tmp_path / "curves.png", tmp_path / "h.json"
    out = run("plot_history.py", "--epochs", 2, "--samples", 20, "--batch-size", 10, "--out", png,
              "--save-history", saved, hide_matplotlib=hide, cwd=tmp_path)
    from npcnn.introspect import load_history

    h = load_history(saved)
    assert len(h["loss"]) == 2 and len(h["grad_norm/conv2d/kernel"]) == 2
    assert "|d conv2d|" in out
    if hide:
        assert SKIP_MESSAGE in out and not png.exists()
    else:
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_plot_history_from_a_saved_file(tmp_path):
    (tmp_path / "h.json").write_text('{"loss": [2.3, 2.0, 1.8], "accuracy": [0.1, 0.2, 0.3]}')
    out = run("plot_history.py", "--history", tmp_path / "h.json", "--out", tmp_path / "c.png", cwd=tmp_path,
              hide_matplotlib=not has_matplotlib())
    assert "1.8000" in out
    if has_matplotlib():
        assert (tmp_path / "c.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("hide", [False, True], ids=["matplotlib", "no-matplotlib"])
def test_kernel_timings(tmp_path, hide):
    if not hide and not has_matplotlib():
        pytest.skip("matplotlib is not installed")
    png = tmp_path / "runs" / "kernel_timings.png"  # the default --out
    out = run("kernel_timings.py", "--batch", 2, "--repeat", 3, "--threads", 1, hide_matplotlib=hide,
              cwd=tmp_path, backend="numba", timeout=600)
    for op in ("conv1 forward", "conv3 backward", "im2col", "col2im", "pool2 backward", "relu backward",
               "softmax-CE", "dense forward", "dense backward", "conv1+relu+pool1 fwd", "conv1+relu+pool1 bwd",
               "conv2+relu+pool2 fwd", "conv2+relu+pool2 bwd", "adam"):
        assert op in out
    assert "3 timed runs" in out and "numpy ms [IQR]" in out and "widest swing" in out
    rows = [line for line in out.splitlines() if re.search(r"\d\.\d{3} \[\d+\.\d{3}-\d+\.\d{3}\]", line)]
    assert len(rows) == 23
    for line in rows:  # each median lies inside its quartiles; the backends agree
        for med, q1, q3 in re.findall(r"(\d+\.\d{3}) \[(\d+\.\d{3})-(\d+\.\d{3})\]", line):
            assert float(q1) <= float(med) <= float(q3)
        assert float(line.split()[-1] if "twin" not in line else line.split()[-3]) < 1e-4
    if hide:
        assert SKIP_MESSAGE in out and not png.exists()
    else:
        assert png.stat().st_size > 0 and f"wrote {png}" in out


# --------------------------------------------------------------------------- see inside: feature maps, saliency


def assert_png(path, out):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, f"{path}: {len(data)} bytes"
    assert f"wrote {path}" in out


@pytest.mark.parametrize("hide", [False, True], ids=["matplotlib", "no-matplotlib"])
def test_plot_feature_maps(tmp_path, hide):
    if not hide and not has_matplotlib():
        pytest.skip("matplotlib is not installed")
    out = run("plot_feature_maps.py", "--epochs", 1, "--samples", 32, "--max-maps", 6, "--index", 2,
              hide_matplotlib=hide, cwd=tmp_path)
    assert "test image 2 (label: " in out and "trained 1 epoch(s) on 32 sample images" in out
    for name in ("conv2d (Conv2D)", "max_pooling2d_1 (MaxPooling2D)", "conv2d_2 (Conv2D)", "(1, 30, 30, 32)",
                 "(1, 4, 4, 64)", "flatten (Flatten)", "dense_1 (Dense)"):
        assert name in out
    png = tmp_path / "runs" / "feature_maps.png"                  # the default --out
    if hide:
        assert SKIP_MESSAGE in out and not png.exists()
    else:
        assert_png(png, out)


def test_plot_feature_maps_from_saved_weights(tmp_path):
    from npcnn.gradcheck import seed_model

    seed_model((32, 32, 3), (32, 64, 64), 64, 10).save_weights(tmp_path / "w.npz")
    png = tmp_path / "maps.png"
    out = run("plot_feature_maps.py", "--weights", tmp_path / "w.npz", "--out", png, cwd=tmp_path,
              hide_matplotlib=not has_matplotlib())
    assert "weights loaded from w.npz" in out and "Epoch" not in out
    if has_matplotlib():
        assert_png(png, out)
    assert "--index must be in [0, 200)" in run_refused("plot_feature_maps.py", "--weights", tmp_path / "w.npz",
                                                        "--index", 200, cwd=tmp_path)


@pytest.mark.parametrize("hide", [False, True], ids=["matplotlib", "no-matplotlib"])
def test_plot_saliency(tmp_path, hide):
    if not hide and not has_matplotlib():
        pytest.skip("matplotlib is not installed")
    out = run("plot_saliency.py", "--epochs", 1, "--samples", 32, "--images", 3, "--first", 5,
              hide_matplotlib=hide, cwd=tmp_path)
    norms = re.findall(r"image (\d+): label .* \|d loss / d image\| (\S+)", out)
    assert [int(i) for i, _ in norms] == [5, 6, 7] and all(float(v) > 0 for _, v in norms)
    assert "the first layer's grad_input" in out
    png = tmp_path / "runs" / "saliency.png"
    if hide:
        assert SKIP_MESSAGE in out and not png.exists()
    else:
        assert_png(png, out)


def test_plot_saliency_is_the_first_layers_input_gradient(tmp_path):
    """The map is max over channels of |records[0].grad_input| of model.trace (d loss / d input)."""
    import runpy

    from npcnn.gradcheck import seed_model
    from npcnn.utils import set_random_seed

    module = runpy.run_path(str(EXAMPLES / "plot_saliency.py"), run_name="saliency")
    set_random_seed(0)  # a tiny random model may have every ReLU dead for an image (a zero gradient): fix the draw
    model = seed_model((18, 18, 3), (8, 8, 8), 16, 10)
    rng = np.random.default_rng(0)
    x, y = rng.random((2, 18, 18, 3), dtype=np.float32), np.array([3, 7])
    grad = model.trace(x, y)[0].grad_input
    maps = module["saliency"](grad)
    assert maps.shape == (2, 18, 18) and np.array_equal(maps, np.abs(grad).max(axis=-1))
    assert maps[0].max() > 0 and maps[1].max() > 0


# --------------------------------------------------------------------------- the walk-through (percent format)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_studying_backprop_walkthrough_runs(tmp_path, backend):
    """examples/studying_backprop.py asserts what each cell shows; run whole, it must reach its last line."""
    out = run("studying_backprop.py", cwd=tmp_path, backend=backend)
    assert out.rstrip().endswith("all checks passed")
    assert "by hand: loss" in out and "FAIL" in out and "10/10 checks passed" in out
    assert list(tmp_path.iterdir()) == []                           # it writes nothing


def test_studying_backprop_is_in_percent_format():
    text = (EXAMPLES / "studying_backprop.py").read_text()
    cells = re.findall(r"^# %%( \[markdown\])?$", text, re.M)
    assert len(cells) >= 18 and cells.count(" [markdown]") >= 9
    for step in ("as loops", "im2col", "Backward", "gradient check", "Break it", "model.trace", "training step"):
        assert step in text


# --------------------------------------------------------------------------- compare with PyTorch

COMPARE_ROW = re.compile(r"^(.+?)\s+(\([\d, ]*\))\s+(\S+)\s+(\S+)\s+(yes|NO)$", re.M)


@pytest.mark.parametrize("args, tensors", [
    (("--layer", "conv2d", "--strides", 2, "--padding", "same", "--input-shape", "9,7,3"),
     ["forward output y", "d/d input", "d/d kernel", "d/d bias"]),
    (("--layer", "conv2d", "--activation", "relu", "--kernel-size", "2,3"),
     ["forward output y", "d/d input", "d/d kernel", "d/d bias"]),
    (("--layer", "maxpool", "--pool-size", 3, "--strides", 2, "--padding", "same"), ["forward output y", "d/d input"]),
    (("--layer", "dense", "--activation", "relu"), ["forward output y", "d/d input", "d/d kernel", "d/d bias"]),
    (("--layer", "relu"), ["forward output y", "d/d input"]),
    (("--layer", "softmax_ce", "--classes", 7), ["loss", "d loss / d logits"]),
    (("--small",), ["logits", "loss", "d loss / d input", "d loss / d conv2d/kernel", "d loss / d conv2d_2/bias",
                    "d loss / d dense_1/kernel"]),
], ids=["conv2d-same-stride2", "conv2d-relu", "maxpool-overlap-same", "dense", "relu", "softmax_ce", "model"])
def test_compare_with_pytorch(tmp_path, args, tensors):
    pytest.importorskip("torch")
    out = run("compare_with_pytorch.py", *args, cwd=tmp_path)
    rows = {name.strip(): (float(diff), float(scale), ok) for name, _, diff, scale, ok in COMPARE_ROW.findall(out)}
    for t in tensors:
        assert t in rows, f"{t} missing:\n{out}"
    for name, (diff, scale, ok) in rows.items():
        assert ok == "yes" and diff <= 1e-12 * max(scale, 1.0), (name, diff, scale)
    assert "every tensor agrees" in out


def test_compare_with_pytorch_whole_model_on_numba(tmp_path):
    pytest.importorskip("torch")
    out = run("compare_with_pytorch.py", "--small", "--batch-size", 3, cwd=tmp_path, backend="numba")
    assert "backend numba" in out and "every tensor agrees" in out
    assert len(COMPARE_ROW.findall(out)) == 3 + 10


def test_compare_with_pytorch_without_torch(tmp_path):
    """PyTorch hidden: one clear message with the pip command, exit status 2, no traceback."""
    hide = ("import runpy, sys; sys.modules['torch'] = None; path = sys.argv[1]; sys.argv = sys.argv[1:]; "
            "runpy.run_path(path, run_name='__main__')")
    env = dict(os.environ, NPCNN_BACKEND="numpy")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    for args in ([], ["--layer", "conv2d"]):
        proc = subprocess.run([sys.executable, "-c", hide, str(EXAMPLES / "compare_with_pytorch.py"), *args],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert proc.returncode == 2
        assert "pip install torch==2.13.0" in proc.stderr and "PyTorch is not installed" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
    # --help works without torch and says what it needs
    proc = subprocess.run([sys.executable, "-c", hide, str(EXAMPLES / "compare_with_pytorch.py"), "--help"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "pip install torch==2.13.0" in proc.stdout


def test_compare_with_pytorch_refuses_bad_arguments(tmp_path):
    assert "invalid choice" in run_refused("compare_with_pytorch.py", "--layer", "conv3d", cwd=tmp_path)
    assert "--kernel-size takes one or two" in run_refused("compare_with_pytorch.py", "--layer", "conv2d",
                                                           "--kernel-size", "3,2,1", cwd=tmp_path)


# --------------------------------------------------------------------------- docs

REF = re.compile(r"`(npcnn/[\w/]+\.py)::([\w.]+)`")


def defined_names(path):
    """'func', 'Class' and 'Class.method' defined at the top of a Python file."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{n.name}" for n in node.body if isinstance(n, ast.FunctionDef)}
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_docs_point_at_code_that_exists():
    pages = sorted(DOCS.glob("*.md"))
    layer_pages = [p for p in pages if p.name not in ("errors.md",)]
    assert len(layer_pages) >= 7
    checked = 0
    for page in layer_pages:
        for file, name in REF.findall(page.read_text()):
            path = ROOT / file
            assert path.exists(), f"{page.name}: {file} does not exist"
            assert name in defined_names(path), f"{page.name}: {file} defines no {name}"
            checked += 1
    assert checked >= 20
