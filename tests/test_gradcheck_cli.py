"""`python -m npcnn.gradcheck`: passes on every layer and the seed model, fails (exit 1) on a broken backward."""

import subprocess
import sys

import pytest

from npcnn import gradcheck
from npcnn.layers import Conv2D, Dense, MaxPooling2D

LAYER_ARGS = [
    ["--layer", "conv2d"],
    ["--layer", "conv2d", "--input-shape", "9,7,3", "--kernel-size", "3,2", "--strides", "2", "--padding", "same",
     "--activation", "relu", "--filters", "4"],
    ["--layer", "conv2d", "--kernel-size", "1", "--no-bias"],
    ["--layer", "maxpool"],
    ["--layer", "maxpool", "--pool-size", "3", "--strides", "2"],
    ["--layer", "maxpool", "--padding", "same", "--input-shape", "5x3x2", "--batch-size", "3"],
    ["--layer", "dense"],
    ["--layer", "dense", "--units", "3", "--activation", "softmax", "--input-shape", "6"],
    ["--layer", "relu"],
    ["--layer", "flatten"],
    ["--layer", "softmax_ce", "--batch-size", "5", "--classes", "7"],
    ["--max-checks", "8"],
]


def rows(out):
    """The table rows: (layer, tensor, result)."""
    found = []
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[-1] in ("pass", "FAIL"):
            found.append((parts[0], parts[1], parts[-1]))
    return found


@pytest.mark.parametrize("args", LAYER_ARGS, ids=lambda a: " ".join(a))
def test_cli_passes(backend, args, capsys):
    assert gradcheck.main(args + ["--backend", backend]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert table and all(r[2] == "pass" for r in table)
    assert out.splitlines()[-1] == f"{len(table)}/{len(table)} checks passed"
    assert "float64" in out and "threshold 1e-06" in out and f"backend {backend}" in out


def test_cli_layer_rows(capsys):
    assert gradcheck.main(["--layer", "conv2d", "--backend", "numpy"]) == 0
    table = rows(capsys.readouterr().out)
    assert [(t, r) for _, t, r in table] == [("input", "pass"), ("kernel", "pass"), ("bias", "pass")]


def test_cli_seed_model_covers_every_layer_and_the_loss(capsys):
    assert gradcheck.main(["--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    layers = {r[0] for r in table}
    assert {"conv2d", "conv2d_1", "conv2d_2", "max_pooling2d", "max_pooling2d_1", "flatten", "dense", "dense_1",
            "softmax_ce"} <= layers
    assert "whole model: d loss / d params" in out
    assert out.splitlines()[-1] == f"{len(table)}/{len(table)} checks passed"


def _break_kernel_grad(monkeypatch, cls, factor=1.01):
    orig = cls.backward_op

    def broken(self, dz, state, ctx):
        dx = orig(self, dz, state, ctx)
        state.grads["kernel"] = state.grads["kernel"] * factor
        return dx

    monkeypatch.setattr(cls, "backward_op", broken)


@pytest.mark.parametrize("cls,args", [(Dense, ["--layer", "dense"]), (Conv2D, ["--layer", "conv2d"]),
                                      (Dense, [])], ids=["dense", "conv2d", "seed-model"])
def test_cli_fails_on_a_broken_kernel_gradient(monkeypatch, capsys, cls, args):
    _break_kernel_grad(monkeypatch, cls)
    assert gradcheck.main(args + ["--backend", "numpy"]) == 1
    out = capsys.readouterr().out
    failing = [r for r in rows(out) if r[2] == "FAIL"]
    assert failing and all(r[1] == "kernel" for r in failing)
    passed, total = out.splitlines()[-1].split()[0].split("/")
    assert int(passed) < int(total)


def test_cli_fails_on_a_broken_input_gradient(monkeypatch, capsys):
    orig = MaxPooling2D.backward_op
    monkeypatch.setattr(MaxPooling2D, "backward_op", lambda self, dy, state, ctx: orig(self, dy, state, ctx) * 0.5)
    assert gradcheck.main(["--layer", "maxpool", "--backend", "numpy"]) == 1
    assert rows(capsys.readouterr().out) == [("max_pooling2d", "input", "FAIL")]


def test_cli_fails_on_a_broken_softmax_ce(monkeypatch, capsys):
    from npcnn import kernels as K

    orig = K.sparse_softmax_ce

    def broken(logits, labels):
        loss, d = orig(logits, labels)
        return loss, d * len(logits)  # forgot the 1/N

    monkeypatch.setattr(K, "sparse_softmax_ce", broken)
    assert gradcheck.main(["--layer", "softmax_ce", "--backend", "numpy"]) == 1
    assert rows(capsys.readouterr().out) == [("softmax_ce", "logits", "FAIL")]


def test_cli_threshold_is_applied(capsys):
    assert gradcheck.main(["--layer", "dense", "--threshold", "1e-30", "--backend", "numpy"]) == 1
    out = capsys.readouterr().out
    assert "threshold 1e-30" in out and "FAIL" in out


@pytest.mark.parametrize("args", [["--layer", "conv2d", "--kernel-size", "9"], ["--layer", "nope"],
                                  ["--layer", "maxpool", "--strides", "1,2,3"], ["--input-shape", "0,3"],
                                  ["--layer", "dense", "--activation", "relux"], ["--filters", "3,4"]])
def test_cli_rejects_bad_arguments(args, capsys):
    with pytest.raises(SystemExit) as e:
        gradcheck.main(args)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_check_softmax_ce_matches_the_formula():
    (r,) = gradcheck.check_softmax_ce(batch_size=3, classes=4)
    assert r.passed and r.shape == (3, 4) and r.error < 1e-7


def test_seed_model_full_size_has_the_tutorial_parameter_count():
    assert gradcheck.seed_model((32, 32, 3), (32, 64, 64), 64, 10).count_params() == 122_570


def test_python_dash_m_exit_status():
    proc = subprocess.run([sys.executable, "-m", "npcnn.gradcheck", "--layer", "dense", "--backend", "numpy"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "3/3 checks passed"
    assert len(rows(proc.stdout)) == 3


@pytest.mark.parametrize("layer", ["conv_relu_maxpool", "avgpool", "global_avgpool", "global_maxpool", "zeropad",
                                   "elu", "gelu", "leaky_relu", "softmax", "random_flip", "random_translation"])
def test_cli_checks_the_toolbox_layers_and_the_fused_step(capsys, layer):
    assert gradcheck.main(["--layer", layer, "--backend", "numba"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].endswith("checks passed") and "FAIL" not in out


def test_cli_fused_step_fails_with_a_broken_kernel(capsys):
    from npcnn import kernels as K

    broken_col2im = K.get_kernel("col2im", "numba")
    with K.override("col2im", lambda *a, **k: broken_col2im(*a, **k) * 0.5):
        assert gradcheck.main(["--layer", "conv_relu_maxpool", "--backend", "numba"]) == 1
    assert rows(capsys.readouterr().out) == [("conv2d+max_pooling2d", "input", "FAIL"),
                                             ("conv2d+max_pooling2d", "kernel", "pass"),
                                             ("conv2d+max_pooling2d", "bias", "pass")]


@pytest.mark.parametrize("argv,flag", [(["--layer", "maxpool", "--filters", "3"], "--filters"),
                                       (["--layer", "maxpool", "--units", "4"], "--units"),
                                       (["--layer", "relu", "--rate", "0.2"], "--rate"),
                                       (["--kernel-size", "3"], "--kernel-size"),
                                       (["--layer", "dense", "--padding", "same"], "--padding")])
def test_cli_refuses_options_that_do_not_apply(capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        gradcheck.main(argv)
    assert e.value.code == 2
    assert f"{flag} does not apply" in capsys.readouterr().err


def test_cli_whole_model_section_names_the_fused_steps(capsys):
    assert gradcheck.main(["--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "ConvReLUMaxPool(conv2d, max_pooling2d)" in out and "--layer conv_relu_maxpool" in out
