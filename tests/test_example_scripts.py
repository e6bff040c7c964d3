"""The tutorial scripts in examples/ run (tiny sizes), write their PNGs, and skip plotting without matplotlib;
the docs/ pages point at functions that exist."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

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
    out = run("conv_by_hand.py", "--height", 5, "--width", 4, "--channels", 2, "--kernel", 3, 2, "--stride", 2,
              "--padding", "same", cwd=tmp_path)
    assert out.rstrip().endswith("3/3 checks passed")


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
    out = run("plot_filters.py", "--epochs", 1, "--samples", 32, "--out", png, hide_matplotlib=hide, cwd=tmp_path)
    assert "mean filter norm" in out
    if hide:
        assert SKIP_MESSAGE in out and not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_filters_from_saved_weights(tmp_path):
    from npcnn.gradcheck import seed_model

    model = seed_model((32, 32, 3), (32, 64, 64), 64, 10)
    model.save_weights(tmp_path / "w.npz")
    out = run("plot_filters.py", "--weights", tmp_path / "w.npz", "--out", tmp_path / "f.png", hide_matplotlib=True,
              cwd=tmp_path)
    assert "loaded from w.npz" in out and SKIP_MESSAGE in out


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
    png = tmp_path / "k.png"
    out = run("kernel_timings.py", "--batch", 2, "--repeat", 1, "--threads", 1, "--out", png, hide_matplotlib=hide,
              cwd=tmp_path, backend="numba", timeout=600)
    for op in ("conv1 forward", "conv3 backward", "im2col", "col2im", "pool2 backward", "relu backward",
               "softmax-CE"):
        assert op in out
    if hide:
        assert SKIP_MESSAGE in out and not png.exists()
    else:
        assert png.exists()


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
