"""Break a kernel and watch the gradient check fail (docs/exercises.md).

Each exercise is a deliberately wrong version of one registered kernel, swapped in everywhere with
``npcnn.kernels.override(name, broken)``, and the float64 gradient check that judges it. One function per
exercise returns the broken kernel (same signature as the real one, ``ws=None`` included):

* :func:`col2im_assign`: col2im with ``=`` instead of ``+=`` (overlapping windows overwrite each other);
* :func:`softmax_ce_without_mean`: the fused softmax cross-entropy whose gradient forgets the ``1/N``;
* :func:`maxpool_backward_average`: max-pool backward that spreads the gradient over the window (average
  pooling's backward) instead of sending it to the argmax;
* :func:`conv_forward_flipped`: a convolution forward that flips the kernel taps (a true convolution
  instead of Keras's cross-correlation).

:data:`EXERCISES` pairs each with its check and the outcome docs/exercises.md documents;
``tests/test_learners_kit.py`` runs them all and asserts exactly that outcome.

Command line::

    python -m npcnn.exercises              # every exercise
    python -m npcnn.exercises col2im       # one (names: python -m npcnn.exercises --list)

It prints the gradient-check table of each broken kernel and exits with 0 when every exercise came out
as documented (the broken ones fail, the stride == kernel size one passes).

In your own code::

    import npcnn
    from npcnn import exercises, gradcheck
    from npcnn.layers import Conv2D

    with npcnn.kernels.override("col2im", exercises.col2im_assign()):
        gradcheck.print_results(gradcheck.check_layer(Conv2D(3, (3, 2)), (7, 6, 2)))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from npcnn import gradcheck
from npcnn.kernels.conv import conv2d_forward_numpy
from npcnn.kernels.softmax_ce import sparse_softmax_ce_numpy

# --------------------------------------------------------------------------- the broken kernels


def col2im_assign():
    """col2im with ``=`` where it needs ``+=``: a pixel covered by several windows keeps only the last one's share.

    Returns:
        ``col2im(cols, x_shape, kernel_size, strides, pads, out_hw, ws=None) -> dx (N, H, W, C)``, wrong
        wherever windows overlap (stride smaller than the kernel), right where they do not.
    """
    def col2im(cols, x_shape, kernel_size, strides, pads, out_hw, ws=None):
        N, H, W, C = x_shape
        KH, KW = kernel_size
        SH, SW = strides
        OH, OW = out_hw
        pt, pb, pl, pr = pads
        cols6 = cols.reshape(N, OH, OW, KH, KW, C)
        dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), dtype=cols.dtype)
        for i in range(KH):
            for j in range(KW):
                dxp[:, i:i + SH * OH:SH, j:j + SW * OW:SW, :] = cols6[:, :, :, i, j, :]   # BUG: should be +=
        return dxp[:, pt:pt + H, pl:pl + W, :]

    return col2im


def softmax_ce_without_mean():
    """Fused softmax cross-entropy whose loss is the batch mean but whose gradient is ``p - onehot``
    (the ``/ N`` dropped): every gradient comes out N times too large.

    Returns:
        ``sparse_softmax_ce(logits, labels, ws=None) -> (loss, dlogits (N, K))``.
    """
    def sparse_softmax_ce(logits, labels, ws=None):
        loss, dlogits = sparse_softmax_ce_numpy(logits, labels)
        return loss, dlogits * logits.shape[0]                      # BUG: (p - onehot) instead of / N

    return sparse_softmax_ce


def maxpool_backward_average():
    """Max-pool backward written as average pooling's: ``dy / (PH*PW)`` to every element of the window.

    Returns:
        ``maxpool2d_backward(dy, cache, ws=None) -> dx (N, H, W, C)`` (cache: a PoolCache).
    """
    def maxpool2d_backward(dy, cache, ws=None):
        x_shape, _, (PH, PW), (SH, SW), (pt, pb, pl, pr), (OH, OW) = cache
        N, H, W, C = x_shape
        dxp = np.zeros((N, H + pt + pb, W + pl + pr, C), dtype=dy.dtype)
        for i in range(PH):
            for j in range(PW):
                dxp[:, i:i + SH * OH:SH, j:j + SW * OW:SW, :] += dy / (PH * PW)   # BUG: not only to the argmax
        return dxp[:, pt:pt + H, pl:pl + W, :]

    return maxpool2d_backward


def conv_forward_flipped():
    """A convolution forward that flips the kernel taps (``kernel[::-1, ::-1]``): the textbook convolution
    instead of the cross-correlation Keras (and npcnn's backward) computes.

    Returns:
        ``conv2d_forward(x, kernel, bias, strides, pads, out_hw, relu=False, ws=None) -> (y, ConvCache)``;
        the cache holds the flipped kernel, as a real forward would hold the kernel it used.
    """
    def conv2d_forward(x, kernel, bias, strides, pads, out_hw, relu=False, ws=None):
        flipped = np.ascontiguousarray(kernel[::-1, ::-1])            # BUG: taps in reverse order
        return conv2d_forward_numpy(x, flipped, bias, strides, pads, out_hw, relu=relu)

    return conv2d_forward


# --------------------------------------------------------------------------- the exercises


@dataclass
class Exercise:
    """One exercise: override ``kernel`` with ``make()`` and run ``check()``.

    Attributes:
        name: the command-line name. kernel: the registered kernel replaced. title: one line.
        make: returns the broken kernel. check: runs the gradient check, returns CheckResults.
        expected: {tensor: passed} as docs/exercises.md documents it.
        snippet: the Python that runs it, as printed in the docs.
    """

    name: str
    kernel: str
    title: str
    make: Callable
    check: Callable
    expected: dict
    snippet: str


def _conv(strides=(1, 1)):
    from npcnn.layers import Conv2D
    from npcnn.utils import set_random_seed

    set_random_seed(0)  # the same weights every run (as python -m npcnn.gradcheck --seed 0)
    return gradcheck.check_layer(Conv2D(3, (3, 2), strides=strides, name="conv2d"), (7, 6, 2))


def _pool():
    from npcnn.layers import MaxPooling2D

    return gradcheck.check_layer(MaxPooling2D((2, 2), name="max_pooling2d"), (7, 6, 2))


EXERCISES = {
    e.name: e for e in (
        Exercise("col2im", "col2im", "col2im with = instead of +=, stride 1 (windows overlap)",
                 col2im_assign, lambda: _conv((1, 1)), {"input": False, "kernel": True, "bias": True},
                 'npcnn.set_random_seed(0)\n'
                 'with npcnn.kernels.override("col2im", exercises.col2im_assign()):\n'
                 '    gradcheck.print_results(gradcheck.check_layer(Conv2D(3, (3, 2)), (7, 6, 2)))'),
        Exercise("col2im-stride-equals-kernel", "col2im",
                 "the same broken col2im, stride = kernel size (3, 2): windows do not overlap",
                 col2im_assign, lambda: _conv((3, 2)), {"input": True, "kernel": True, "bias": True},
                 'npcnn.set_random_seed(0)\n'
                 'with npcnn.kernels.override("col2im", exercises.col2im_assign()):\n'
                 '    gradcheck.print_results(gradcheck.check_layer(Conv2D(3, (3, 2), strides=(3, 2)), (7, 6, 2)))'),
        Exercise("softmax-ce-mean", "sparse_softmax_ce", "the loss gradient without its 1/N",
                 softmax_ce_without_mean, lambda: gradcheck.check_softmax_ce(batch_size=4), {"logits": False},
                 'with npcnn.kernels.override("sparse_softmax_ce", exercises.softmax_ce_without_mean()):\n'
                 '    gradcheck.print_results(gradcheck.check_softmax_ce(batch_size=4))'),
        Exercise("maxpool-average", "maxpool2d_backward", "max-pool backward as an average over the window",
                 maxpool_backward_average, _pool, {"input": False},
                 'with npcnn.kernels.override("maxpool2d_backward", exercises.maxpool_backward_average()):\n'
                 '    gradcheck.print_results(gradcheck.check_layer(MaxPooling2D((2, 2)), (7, 6, 2)))'),
        Exercise("conv-flip", "conv2d_forward", "a forward that flips the kernel taps (convolution, not correlation)",
                 conv_forward_flipped, lambda: _conv((1, 1)), {"input": True, "kernel": False, "bias": True},
                 'npcnn.set_random_seed(0)\n'
                 'with npcnn.kernels.override("conv2d_forward", exercises.conv_forward_flipped()):\n'
                 '    gradcheck.print_results(gradcheck.check_layer(Conv2D(3, (3, 2)), (7, 6, 2)))'),
    )
}


def run(name):
    """Run exercise ``name`` with its broken kernel swapped in (both backends); returns its CheckResults."""
    import npcnn

    ex = EXERCISES[name]
    with npcnn.kernels.override(ex.kernel, ex.make()):
        return ex.check()


def as_documented(name, results):
    """True when ``results`` pass and fail tensor by tensor as :data:`EXERCISES` [name].expected says."""
    return {r.tensor: r.passed for r in results} == EXERCISES[name].expected


def flipped_forward_difference(seed=0):
    """max |flipped conv forward - the loop definition| on a random input: the forward is wrong too, but the
    gradient check (which compares backward with *this* forward) cannot see that."""
    from npcnn.kernels import conv_geometry
    from npcnn.kernels.naive import conv2d_forward_naive

    rng = np.random.default_rng(seed)
    x, k, b = rng.standard_normal((2, 7, 6, 2)), rng.standard_normal((3, 2, 2, 3)), rng.standard_normal(3)
    oh, ow, pads = conv_geometry(x.shape, (3, 2), (1, 1), "valid")
    y, _ = conv_forward_flipped()(x, k, b, (1, 1), pads, (oh, ow))
    return float(np.abs(y - conv2d_forward_naive(x, k, b, (1, 1), pads)[0]).max())


def main(argv=None):
    """``python -m npcnn.exercises [NAME ...]``: run exercises; 0 when each came out as documented."""
    import argparse

    import npcnn

    p = argparse.ArgumentParser(prog="python -m npcnn.exercises",
                                description="Swap in a broken kernel and watch the gradient check fail "
                                            "(docs/exercises.md).")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"exercises to run (default all): {', '.join(EXERCISES)}")
    p.add_argument("--list", action="store_true", help="list the exercises and exit")
    p.add_argument("--backend", choices=("numpy", "numba"), default=None,
                   help="kernel backend (default: the active one)")
    args = p.parse_args(argv)
    if args.list:
        for ex in EXERCISES.values():
            print(f"{ex.name:<28} {ex.title}")
        return 0
    unknown = [n for n in args.names if n not in EXERCISES]
    if unknown:
        p.error(f"unknown exercise {unknown[0]!r}; choose from {', '.join(EXERCISES)}")
    ok = True
    with npcnn.use_backend(args.backend or npcnn.get_backend()):
        for i, name in enumerate(args.names or list(EXERCISES)):
            ex = EXERCISES[name]
            print(("\n" if i else "") + f"== {ex.name}: {ex.title}")
            print(ex.snippet)
            results = run(name)
            gradcheck.print_results(results)
            if name == "conv-flip":
                print(f"forward vs the loop definition (npcnn.kernels.naive): max |diff| = "
                      f"{flipped_forward_difference():.2f}")
            good = as_documented(name, results)
            ok &= good
            expect = ", ".join(f"{t} {'pass' if v else 'FAIL'}" for t, v in ex.expected.items())
            print(f"{'as documented' if good else 'NOT as documented'}: {expect}")
    return 0 if ok else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
