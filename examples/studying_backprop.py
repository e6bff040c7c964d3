"""Studying backprop with npcnn: from one convolution by hand to a full training step.

A walk-through in percent format (``# %%`` cells): open it in VS Code, Spyder or PyCharm and run it cell
by cell, convert it to a notebook with ``jupytext --to ipynb examples/studying_backprop.py``, or run it
whole as a script. Each cell checks what it shows (an ``assert``), and ``tests/test_example_scripts.py``
runs the script, so it cannot go stale. It uses only npcnn and the CIFAR-10 sample bundled with it: no
network, no GPU, a few seconds.

The steps: one convolution as plain loops, then as im2col + one matrix product; its backward pass both
ways; the gradient check; max pooling and the loss; a broken kernel swapped in and caught; the whole
model's activations and gradients for one batch (``model.trace``); one training step written out by hand
(forward, loss, backward, Adam) and checked against ``train_on_batch``; the whole model's gradient check.

Run:  python examples/studying_backprop.py
"""

# %% [markdown]
# # 1. One convolution, as loops
#
# Conv2D computes, for every image `n`, output pixel `(p, q)` and filter `f` (NHWC, as Keras):
# `out[n, p, q, f] = b[f] + sum_{i, j, c} x[n, p*SH + i, q*SW + j, c] * K[i, j, c, f]`.
# `npcnn/kernels/naive.py` writes exactly that with loops, one output element per iteration.

# %%
import copy

import numpy as np

import npcnn
from npcnn import exercises, gradcheck
from npcnn import kernels as K
from npcnn.kernels.conv import conv2d_backward_numpy, conv2d_forward_numpy
from npcnn.kernels.im2col import col2im_numpy, im2col_numpy
from npcnn.kernels.naive import (
    conv2d_backward_naive,
    conv2d_forward_naive,
    maxpool2d_backward_naive,
    maxpool2d_forward_naive,
)
from npcnn.layers import Conv2D, MaxPooling2D

np.set_printoptions(precision=3, suppress=True, linewidth=120)
rng = np.random.default_rng(0)

x = np.arange(1 * 4 * 5 * 1, dtype=np.float64).reshape(1, 4, 5, 1)       # (N, H, W, C): one 4x5 grey image
kernel = np.array([[1.0, 0.0], [0.0, -1.0]]).reshape(2, 2, 1, 1)          # (KH, KW, C, F): one 2x2 filter
bias = np.array([0.5])
strides, pads = (1, 1), (0, 0, 0, 0)                                      # pads: (top, bottom, left, right)
out, loop_cache = conv2d_forward_naive(x, kernel, bias, strides, pads)
print("x[0, :, :, 0] =\n", x[0, :, :, 0])
print("out[0, :, :, 0] = x[p, q] - x[p+1, q+1] + 0.5 =\n", out[0, :, :, 0])
assert out.shape == (1, 3, 4, 1) and np.all(out == -5.5)                  # x[p, q] - x[p+1, q+1] = -(5 + 1)

# %% [markdown]
# # 2. The same convolution as im2col + one matrix product
#
# im2col copies every receptive field into one row of `cols` (N*OH*OW, KH*KW*C); the convolution is then
# `cols @ K.reshape(KH*KW*C, F) + b`, one GEMM for the whole batch (docs/conv2d.md).

# %%
oh, ow, _ = K.conv_geometry(x.shape, (2, 2), strides, "valid")
cols = im2col_numpy(x, (2, 2), strides, pads, (oh, ow))
print("cols (one row per output pixel, one column per tap (i, j, c)):\n", cols)
gemm = (cols @ kernel.reshape(-1, 1) + bias).reshape(1, oh, ow, 1)
y_twin, conv_cache = conv2d_forward_numpy(x, kernel, bias, strides, pads, (oh, ow))
assert np.array_equal(gemm, out) and np.array_equal(y_twin, out)

# %% [markdown]
# # 3. Backward, both ways
#
# Each output element `out[n, p, q, f]` with upstream gradient `g` sends `g` to the bias, `g * window` to
# the kernel and `g * K[..., f]` back onto its window of `x`: overlapping windows **add up**. Batched:
# `dK = cols^T @ dout`, `db = sum(dout)`, `dx = col2im(dout @ K^T)`, col2im being the adjoint of im2col.

# %%
dout = rng.standard_normal(out.shape)
dx_loops, dk_loops, db_loops = conv2d_backward_naive(dout, loop_cache)
dx, dk, db = conv2d_backward_numpy(dout, conv_cache)
print("dx by loops:\n", dx_loops[0, :, :, 0], "\ndx by col2im:\n", dx[0, :, :, 0])
assert np.allclose(dx, dx_loops) and np.allclose(dk, dk_loops) and np.allclose(db, db_loops)
covers = col2im_numpy(np.ones_like(cols), x.shape, (2, 2), strides, pads, (oh, ow))
print("windows covering each pixel (col2im(ones)):\n", covers[0, :, :, 0])   # why col2im is not an inverse

# %% [markdown]
# # 4. Is it right? The gradient check
#
# For a random upstream gradient `dy`, `f = sum(layer(x) * dy)` has `df/dx = backward(dy)`: compare every
# entry with a central difference in float64 (`python -m npcnn.gradcheck --layer conv2d` does the same).

# %%
npcnn.set_random_seed(0)
results = gradcheck.check_layer(Conv2D(3, (3, 2), strides=(2, 1), padding="same"), (7, 6, 2))
gradcheck.print_results(results)
assert all(r.passed for r in results)

# %% [markdown]
# # 5. Max pooling and the loss
#
# Max pooling sends each gradient to its window's maximum (the first one on ties). The loss is softmax
# cross-entropy fused in one kernel, whose gradient is `(softmax(z) - onehot(y)) / N`.

# %%
xp = rng.standard_normal((2, 5, 4, 3))
y_loops, pool_cache = maxpool2d_forward_naive(xp, (2, 2), (2, 2))
y_pool, pool_twin_cache = K.get_kernel("maxpool2d_forward", "numpy")(xp, (2, 2), (2, 2), (0, 0, 0, 0), (2, 2))
dpool = rng.standard_normal(y_pool.shape)
assert np.array_equal(y_loops, y_pool)
assert np.array_equal(maxpool2d_backward_naive(dpool, pool_cache),
                      K.get_kernel("maxpool2d_backward", "numpy")(dpool, pool_twin_cache))
assert all(r.passed for r in gradcheck.check_layer(MaxPooling2D((3, 3), strides=(2, 2)), (7, 6, 2)))

logits, labels = rng.standard_normal((4, 10)), np.array([3, 1, 4, 1])
loss, dlogits = K.sparse_softmax_ce(logits, labels)
p = np.exp(logits - logits.max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
assert np.isclose(loss, -np.mean(np.log(p[np.arange(4), labels])))
assert np.allclose(dlogits, (p - np.eye(10)[labels]) / 4)
assert gradcheck.check_softmax_ce(batch_size=4)[0].passed
print(f"softmax cross-entropy: loss {loss:.4f}; dlogits = (p - onehot) / N checked")

# %% [markdown]
# # 6. Break it and watch it fail
#
# Every kernel is looked up at call time, so `npcnn.kernels.override(name, fn)` swaps in a broken one
# everywhere. col2im with `=` instead of `+=` fails where windows overlap, and passes when the stride equals
# the kernel size (no pixel lies under two windows). More in docs/exercises.md and `python -m npcnn.exercises`.

# %%
npcnn.set_random_seed(0)
with npcnn.kernels.override("col2im", exercises.col2im_assign()):
    overlapping = gradcheck.check_layer(Conv2D(3, (3, 2)), (7, 6, 2))
    tiling = gradcheck.check_layer(Conv2D(3, (3, 2), strides=(3, 2)), (7, 6, 2))
gradcheck.print_results(overlapping)
assert [r.passed for r in overlapping] == [False, True, True]             # input FAIL, kernel and bias pass
assert all(r.passed for r in tiling)

# %% [markdown]
# # 7. The whole model, one batch: `model.trace`
#
# The Keras CIFAR-10 tutorial model on 16 images of the bundled sample. `trace` runs one forward and one
# backward pass and keeps, per layer, the activations and the gradients (it changes nothing). At
# initialisation the prediction is about uniform, so the loss is about ln 10 = 2.30.

# %%
from npcnn.datasets import cifar10  # noqa: E402
from npcnn.introspect import format_trace  # noqa: E402

npcnn.set_random_seed(0)
model = gradcheck.seed_model((32, 32, 3), (32, 64, 64), 64, 10)
(x_train, y_train), _ = cifar10.load_sample()
xb, yb = x_train[:16] / np.float32(255), y_train[:16].reshape(-1)
records = model.trace(xb, yb)
print(format_trace(records))
probs = records[-1].output
initial_loss = -np.mean(np.log(probs[np.arange(len(yb)), yb]))
print(f"loss at initialisation {initial_loss:.3f}, ln 10 = {np.log(10):.3f}")
assert abs(initial_loss - np.log(10)) < 0.3
assert records[0].grad_input.shape == xb.shape                             # d loss / d image: a saliency map

# %% [markdown]
# # 8. One training step, written out
#
# `fit` repeats four steps: forward to the logits, the fused loss, backward (every layer's `grads`), and
# the optimizer, the only code that changes weights. Here they are by hand, next to `train_on_batch` on a
# copy of the same model: the weights come out the same.

# %%
twin = copy.deepcopy(model)
z = model.forward(xb, training=True, logits=True)          # forward through the plan, stop at the logits
loss, dz = K.sparse_softmax_ce(z, yb)                      # the loss head: (softmax(z) - onehot) / N
model.backward(dz, logits=True)                            # every layer's .grads
model.optimizer.apply(model.params, model.grads)           # Adam, in place (docs/adam.md)
twin_loss = twin.train_on_batch(xb, yb)[0]
print(f"by hand: loss {loss:.5f}; train_on_batch: loss {twin_loss:.5f}")
assert np.isclose(loss, twin_loss, rtol=1e-5)
for mine, theirs in zip(model.get_weights(), twin.get_weights()):
    assert np.allclose(mine, theirs, rtol=1e-4, atol=1e-6)

# %% [markdown]
# # 9. The whole model's gradient check
#
# `check_model` differentiates the loss through every layer (its fused conv + ReLU + pool blocks included)
# in float64 and compares a sample of each parameter's gradient with central differences.

# %%
npcnn.set_random_seed(0)
small = gradcheck.seed_model()                             # 18x18 inputs, 4/6/5 filters, 8 units
xs, ys = rng.standard_normal((2, 18, 18, 3)), rng.integers(0, 10, 2)
results = gradcheck.check_model(small, xs, ys, max_checks=10)
gradcheck.print_results(results)
assert all(r.passed for r in results)

# %% [markdown]
# # Where next
#
# * `python examples/conv_by_hand.py`: every intermediate of one convolution printed.
# * `python examples/compare_with_pytorch.py`: npcnn against PyTorch autograd, tensor by tensor.
# * `python examples/plot_feature_maps.py`, `python examples/plot_saliency.py`,
#   `python examples/plot_history.py`: activations, input gradients, gradient norms over training (PNGs).
# * docs/conv2d.md, docs/maxpool2d.md, docs/softmax_cross_entropy.md, docs/adam.md, docs/exercises.md.

# %%
print("all checks passed")
