"""The learner's kit (issue 16): the naive loop kernels agree with the im2col twins, the Adam page's worked
example is what npcnn's Adam computes, and every exercise of docs/exercises.md fails (or passes) as documented."""

import re
from pathlib import Path

import numpy as np
import pytest

from npcnn.kernels import conv_geometry
from npcnn.kernels.conv import conv2d_backward_numpy, conv2d_forward_numpy
from npcnn.kernels.naive import (
    conv2d_backward_naive,
    conv2d_forward_naive,
    maxpool2d_backward_naive,
    maxpool2d_forward_naive,
)
from npcnn.kernels.pool import maxpool2d_backward_numpy, maxpool2d_forward_numpy

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# --------------------------------------------------------------------------- item 13: loops first

# (H, W, C, F, (KH, KW), (SH, SW), padding or explicit pads): non-square, strides that do not divide.
CONV_CASES = [
    (7, 6, 2, 3, (3, 2), (2, 1), "valid"),
    (7, 6, 2, 3, (3, 2), (2, 3), "same"),
    (5, 9, 3, 2, (2, 4), (3, 2), "same"),
    (6, 5, 1, 4, (1, 3), (1, 2), (1, 2, 0, 1)),
    (4, 4, 2, 2, (2, 2), (2, 2), "valid"),
]


def _geometry(shape, window, strides, padding):
    if isinstance(padding, tuple):
        pt, pb, pl, pr = padding
        _, H, W, _ = shape
        return ((H + pt + pb - window[0]) // strides[0] + 1, (W + pl + pr - window[1]) // strides[1] + 1), padding
    oh, ow, pads = conv_geometry(shape, window, strides, padding)
    return (oh, ow), pads


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H, W, C, F, k, s, padding", CONV_CASES)
def test_naive_conv_agrees_with_im2col_twin(H, W, C, F, k, s, padding, dtype):
    rng = np.random.default_rng(H * 100 + W * 10 + C)
    x = rng.standard_normal((2, H, W, C)).astype(dtype)
    kernel = rng.standard_normal(k + (C, F)).astype(dtype)
    bias = rng.standard_normal(F).astype(dtype)
    out_hw, pads = _geometry(x.shape, k, s, padding)
    y_ref, cache = conv2d_forward_numpy(x, kernel, bias, s, pads, out_hw)
    y, naive_cache = conv2d_forward_naive(x, kernel, bias, s, pads)
    assert y.shape == y_ref.shape == (2,) + out_hw + (F,) and y.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol * 10)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy_before = dy.copy()
    got = conv2d_backward_naive(dy, naive_cache)
    ref = conv2d_backward_numpy(dy, cache)
    np.testing.assert_array_equal(dy, dy_before)
    for name, a, b in zip(("dx", "dkernel", "dbias"), got, ref):
        assert a.shape == b.shape and a.dtype == dtype, name
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * 10 * np.abs(b).max(), err_msg=name)


def test_naive_conv_without_bias():
    rng = np.random.default_rng(1)
    x, kernel = rng.standard_normal((1, 5, 4, 2)), rng.standard_normal((2, 3, 2, 3))
    y, _ = conv2d_forward_naive(x, kernel, None, (2, 1))
    y_ref, _ = conv2d_forward_numpy(x, kernel, None, (2, 1), (0, 0, 0, 0), (2, 2))
    np.testing.assert_allclose(y, y_ref, atol=1e-12)


def test_naive_conv_passes_its_own_gradcheck():
    """The loops are a correct backward by themselves, not only equal to the twin."""
    from npcnn.gradcheck import numerical_gradient, relative_error

    rng = np.random.default_rng(2)
    x, kernel, bias = rng.standard_normal((2, 5, 4, 2)), rng.standard_normal((3, 2, 2, 3)), rng.standard_normal(3)
    strides, pads = (2, 1), (1, 1, 0, 1)
    y, cache = conv2d_forward_naive(x, kernel, bias, strides, pads)
    dy = rng.standard_normal(y.shape)
    dx, dk, db = conv2d_backward_naive(dy, cache)

    def f():
        return float(np.sum(conv2d_forward_naive(x, kernel, bias, strides, pads)[0] * dy))

    for a, v in ((dx, x), (dk, kernel), (db, bias)):
        assert relative_error(a, numerical_gradient(f, v)) < 1e-8


POOL_CASES = [
    (7, 6, 2, (2, 2), (2, 2), "valid"),
    (7, 6, 3, (3, 2), (2, 1), "valid"),   # overlapping windows
    (5, 3, 2, (2, 2), (2, 2), "same"),    # -inf padding
    (6, 7, 1, (3, 3), (2, 2), "same"),
    (5, 6, 2, (2, 3), (1, 2), (1, 0, 2, 1)),
]


@pytest.mark.parametrize("H, W, C, pool, s, padding", POOL_CASES)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_naive_maxpool_agrees_with_twin(H, W, C, pool, s, padding, ties):
    rng = np.random.default_rng(H * 10 + W)
    x = rng.standard_normal((2, H, W, C))
    if ties:  # after a ReLU, windows full of equal values: the first maximum wins in both
        x = np.maximum(np.round(x), 0)
    out_hw, pads = _geometry(x.shape, pool, s, padding)
    y_ref, cache = maxpool2d_forward_numpy(x, pool, s, pads, out_hw)
    y, naive_cache = maxpool2d_forward_naive(x, pool, s, pads)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(maxpool2d_backward_naive(dy, naive_cache), maxpool2d_backward_numpy(dy, cache),
                               rtol=1e-14, atol=1e-14)


def test_naive_maxpool_default_strides_are_the_pool_size():
    x = np.arange(2 * 4 * 6 * 1, dtype=np.float32).reshape(2, 4, 6, 1)
    y, cache = maxpool2d_forward_naive(x, (2, 3))
    assert y.shape == (2, 2, 2, 1) and y.dtype == np.float32
    assert y[0, :, :, 0].tolist() == [[8, 11], [20, 23]]
    dx = maxpool2d_backward_naive(np.ones_like(y), cache)
    assert dx.sum() == y.size and dx[0, 1, 2, 0] == 1


def test_docs_show_the_naive_loops():
    for page, names in (("conv2d.md", ("conv2d_forward_naive", "conv2d_backward_naive")),
                        ("maxpool2d.md", ("maxpool2d_forward_naive", "maxpool2d_backward_naive"))):
        text = (DOCS / page).read_text()
        for name in names:
            assert f"npcnn/kernels/naive.py::{name}" in text, (page, name)


def test_naive_is_not_a_registered_kernel():
    import npcnn.kernels as K

    assert "npcnn.kernels.naive" not in {m if isinstance(m, str) else m.__name__ for m in K.MODULES}
    assert not any("naive" in name for name in K.kernel_names())


# --------------------------------------------------------------------------- item 1: Adam's step size


def _adam_step_after_zeros(zeros, dtype=np.float64):
    """The step (in units of lr) that npcnn's Adam takes on a gradient of 1 after ``zeros`` zero gradients."""
    from npcnn.optimizers import Adam

    opt = Adam(learning_rate=1.0)
    p = np.zeros(3, dtype)
    for _ in range(zeros):
        opt.apply([p], [np.zeros(3, dtype)])
    assert not p.any()
    opt.apply([p], [np.ones(3, dtype)])
    return float(-p[0])


def test_adam_doc_worked_example():
    text = (DOCS / "adam.md").read_text()
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([0-9.]+) \|$", text, re.M))
    assert float(rows["999 zero gradients"]) == round(_adam_step_after_zeros(999), 2) == 2.51
    assert float(rows["9,999 zero gradients"]) == round(_adam_step_after_zeros(9999), 2) == 3.16
    bound = 0.1 / np.sqrt(1 - 0.999)
    assert float(rows["the paper's bound `(1 - beta_1) / sqrt(1 - beta_2)`"]) == round(bound, 2)
    # The same in float32 (training's precision), and the step never passes the paper's bound.
    assert round(_adam_step_after_zeros(999, np.float32), 2) == 2.51
    assert "2.51 lr" in text and "3.16 lr" in text and "<= 1`)" not in text
    for zeros in (0, 1, 10, 100, 2000, 20000):
        assert _adam_step_after_zeros(zeros) <= bound
    assert _adam_step_after_zeros(999) > 2.5     # the old claim, "at most about lr", is false


# --------------------------------------------------------------------------- item 11: break it, watch it fail

BLOCK = re.compile(r"```text\n\$ python -m npcnn\.exercises ([\w-]+)\n(.*?)```", re.S)
ROW = re.compile(r"^(\S+)\s+(\S+)\s+(\(.*?\))\s+(\S+)\s+(pass|FAIL)$", re.M)


def _documented_blocks():
    return dict(BLOCK.findall((DOCS / "exercises.md").read_text()))


def test_every_exercise_is_documented_with_its_output():
    from npcnn import exercises

    blocks = _documented_blocks()
    assert set(blocks) == set(exercises.EXERCISES)
    text = (DOCS / "exercises.md").read_text()
    for ex in exercises.EXERCISES.values():
        assert ex.snippet.split("exercises.")[1].split("(")[0] in text
        assert ex.snippet in text, f"docs/exercises.md lacks the snippet of {ex.name}"


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", ["col2im", "col2im-stride-equals-kernel", "softmax-ce-mean", "maxpool-average",
                                  "conv-flip"])
def test_exercise_fails_as_documented(name, backend):
    """Each broken kernel fails (the stride == kernel size col2im passes) tensor by tensor as the page shows;
    a failing row's error is the page's to the printed digits."""
    import npcnn
    from npcnn import exercises

    with npcnn.use_backend(backend):
        results = exercises.run(name)
    assert exercises.as_documented(name, results)
    rows = ROW.findall(_documented_blocks()[name])
    assert [(r.layer, r.tensor, str(r.shape), "pass" if r.passed else "FAIL") for r in results] == \
        [(layer, tensor, shape, status) for layer, tensor, shape, _, status in rows]
    for r, (_, _, _, err, status) in zip(results, rows):
        if status == "FAIL":
            assert f"{r.error:.2e}" == err
    if name == "col2im-stride-equals-kernel":
        assert all(r.passed for r in results)
    else:
        assert not all(r.passed for r in results)
    # the override is gone: the real kernels pass again
    assert all(r.passed for r in exercises.EXERCISES[name].check())


def test_exercise_softmax_ce_bug_hides_at_batch_size_one():
    import npcnn
    from npcnn import exercises, gradcheck

    with npcnn.kernels.override("sparse_softmax_ce", exercises.softmax_ce_without_mean()):
        assert gradcheck.check_softmax_ce(batch_size=1)[0].passed
        assert gradcheck.check_softmax_ce(batch_size=5)[0].error == pytest.approx(0.8, rel=1e-6)


def test_exercise_flipped_forward_is_wrong_but_consistent():
    from npcnn import exercises

    assert "max |diff| = %.2f" % exercises.flipped_forward_difference() in (DOCS / "exercises.md").read_text()


def test_exercise_col2im_in_the_whole_model_fails_below_conv2d_1_only():
    """docs/exercises.md: only conv2d's parameters fail (conv2d_2 has one window, conv2d's dx is not computed)."""
    import npcnn
    from npcnn import exercises, gradcheck

    npcnn.set_random_seed(0)
    model = gradcheck.seed_model()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 18, 18, 3)), rng.integers(0, 10, 2)
    with npcnn.kernels.override("col2im", exercises.col2im_assign()):
        results = gradcheck.check_model(model, x, y)
    assert {(r.layer, r.tensor) for r in results if not r.passed} == {("conv2d", "kernel"), ("conv2d", "bias")}


def test_exercises_command_line(capsys):
    from npcnn import exercises

    assert exercises.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("as documented:") == len(exercises.EXERCISES) and "NOT as documented" not in out
    assert exercises.main(["--list"]) == 0
    assert "col2im-stride-equals-kernel" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        exercises.main(["col2lm"])
    assert e.value.code == 2 and "unknown exercise 'col2lm'" in capsys.readouterr().err


# --------------------------------------------------------------------------- item 10: README, Studying backprop


def _readme_section():
    text = (ROOT / "README.md").read_text()
    start = text.index("## Studying backprop\n")
    return text[start:text.index("\n## ", start + 5)]


def test_readme_studying_backprop_section():
    section = _readme_section()
    flat = " ".join(section.split())
    # the layer level, said plainly, and what it buys
    assert "layer level" in flat and "micrograd" in flat and "vector-Jacobian product of the whole layer" in flat
    for word in ("**speed**", "**shapes**", "**one kernel per op**", "npcnn.kernels.override"):
        assert word in flat
    # how to get the data from a clone, not a builder outside the repository
    assert "../shared" not in section and "make_cifar10" not in section
    assert "load_sample()" in section and "cifar-10-python.tar.gz" in section and "--data-dir" in section
    # every derivation and study page linked, and each link resolves
    links = re.findall(r"\]\((docs/[\w.]+\.md)\)", section)
    for page in ("conv2d.md", "maxpool2d.md", "conv_relu_maxpool.md", "dense.md", "relu.md", "flatten.md",
                 "softmax_cross_entropy.md", "batchnorm.md", "dropout.md", "adam.md", "studying_backprop.md",
                 "exercises.md", "kernels.md", "design.md"):
        assert f"docs/{page}" in links, page
    for link in links:
        assert (ROOT / link).exists(), link
    # the scripts and modules it names exist
    for script in re.findall(r"`(\w+\.py)`", section):
        assert (ROOT / "examples" / script).exists() or script == "naive.py", script
    for module, named in (("npcnn/kernels/naive.py", "npcnn/kernels/naive.py"),
                          ("npcnn/exercises.py", "python -m npcnn.exercises"),
                          ("examples/studying_backprop.py", "python examples/studying_backprop.py"),
                          ("examples/compare_with_pytorch.py", "python examples/compare_with_pytorch.py")):
        assert named in flat and (ROOT / module).exists(), module
