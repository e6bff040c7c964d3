"""Element-wise activations and their backward passes.

ReLU:     y = max(x, 0);     dx = dy * [x > 0]   (gradient at exactly 0 is 0, as in PyTorch)
Softmax:  p = exp(z - max z) / sum exp(z - max z) per row (the per-row max keeps exp finite)
          dz = p * (dp - sum(dp * p))   (the Jacobian-vector product; the model never uses it
          when softmax feeds the cross-entropy: see :mod:`npcnn.kernels.softmax_ce`)
"""

from __future__ import annotations

import numpy as np


def relu_forward_numpy(x):
    """ReLU forward. x: any shape. Returns (y, cache) with y = max(x, 0), same shape/dtype."""
    y = np.maximum(x, 0)
    return y, y


def relu_backward_numpy(dy, cache):
    """ReLU backward. dy, cache: same shape. Returns dx = dy where the output was > 0, else 0."""
    return np.where(cache > 0, dy, 0).astype(dy.dtype, copy=False)


def softmax_numpy(z):
    """Row-wise stable softmax. z: (N, K). Returns p: (N, K), rows sum to 1."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward_numpy(dp, p):
    """Softmax Jacobian-vector product. dp, p: (N, K). Returns dz: (N, K)."""
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))
