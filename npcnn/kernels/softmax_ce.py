"""Sparse softmax cross-entropy, fused and numerically stable.

For logits z (N, K) and integer labels y (N,)::

    log p[n, k] = z[n, k] - m[n] - log sum_k' exp(z[n, k'] - m[n])     m[n] = max_k z[n, k]
    loss        = -(1/N) sum_n log p[n, y[n]]
    dz          = (p - onehot(y)) / N

Subtracting the per-row maximum keeps every exp() in (0, 1], so logits of 1e4
give a finite loss; the gradient never goes through the softmax Jacobian.
"""

from __future__ import annotations

import numpy as np


def sparse_softmax_ce_numpy(logits, labels, ws=None):
    """Fused softmax + sparse cross-entropy (readable twin).

    Args:
        logits: (N, K) float. labels: (N,) integer in [0, K). ws: ignored by the twin.
    Returns:
        loss: scalar mean over the batch (same float type as logits),
        dlogits: (N, K) = (softmax(logits) - onehot(labels)) / N.
    """
    N = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logp = shifted - logsum
    rows = np.arange(N)
    loss = -logp[rows, labels].mean(dtype=np.float64)
    dlogits = np.exp(logp)
    dlogits[rows, labels] -= 1
    dlogits /= N
    return logits.dtype.type(loss), dlogits


def sparse_ce_from_probs_numpy(probs, labels, epsilon=1e-7, ws=None):
    """Sparse cross-entropy on probabilities (from_logits=False without a fused softmax), as Keras
    computes it: each row is divided by its sum S, then the label's share q = p[y] / S is clipped to
    [epsilon, 1 - epsilon]; the gradient is 0 where the clip is active.

    loss = -(1/N) sum_n log clip(q_n);   d loss / d p[n, k] = (1 - [k = y_n] / q_n) / (N S_n)

    (for softmax outputs S = 1 and the constant 1 / (N S) is invisible through the softmax's backward).

    Args:
        probs: (N, K) float (positive rows). labels: (N,) integer in [0, K). epsilon: the clip.
        ws: ignored by the twin.
    Returns:
        loss: scalar mean over the batch (same float type as probs), dprobs: (N, K).
    """
    N = probs.shape[0]
    rows = np.arange(N)
    s = probs[:, :1].copy()  # the row sums, left to right (the Numba version's order, to the bit)
    for k in range(1, probs.shape[1]):
        s += probs[:, k:k + 1]
    q = probs[rows, labels] / s[:, 0]
    clipped = np.clip(q, epsilon, 1 - epsilon)
    loss = -np.log(clipped).mean(dtype=np.float64)
    inside = ((q > epsilon) & (q < 1 - epsilon))[:, None]
    one = probs.dtype.type(1)
    inv = one / (probs.dtype.type(N) * s)                      # 1 / (N S), per row
    dprobs = np.empty_like(probs)
    dprobs[...] = np.where(inside, inv, 0)                      # every class: 1 / (N S) ...
    dprobs[rows, labels] = np.where(inside[:, 0], inv[:, 0] * (one - one / clipped), 0)  # ... the label's: - 1 / q
    return probs.dtype.type(loss), dprobs


# --------------------------------------------------------------------------- Numba versions
# One pass per row (rows are independent; K is small, N at most a few hundred, so the
# loop is serial: thread start-up would cost more than the work, and the loss is one
# sequential float64 sum, the same for every thread count). The gradients are ``ws`` buffers
# "sparse_softmax_ce.dlogits" and "sparse_ce_from_probs.dprobs".

from numba import njit  # noqa: E402

from npcnn.kernels.workspace import buffer  # noqa: E402


@njit(cache=True, nogil=True)
def _softmax_ce_nb(z, labels, dz):
    N, K = z.shape
    total = 0.0
    for n in range(N):
        m = z[n, 0]
        for k in range(1, K):
            if z[n, k] > m:
                m = z[n, k]
        s = 0.0
        for k in range(K):
            e = np.exp(z[n, k] - m)
            dz[n, k] = e
            s += e
        total += np.log(s) - (z[n, labels[n]] - m)  # -log p[n, y_n] by log-sum-exp
        inv = 1.0 / (s * N)
        for k in range(K):
            dz[n, k] = dz[n, k] * inv
        dz[n, labels[n]] -= 1.0 / N
    return total / N


@njit(cache=True, nogil=True, error_model="numpy")  # an empty batch gives NaN, as the twin's mean
def _ce_from_probs_nb(probs, labels, lo, hi, nf, one, dprobs):
    """Loss and dprobs of :func:`sparse_ce_from_probs_numpy`, row by row (S the row sum, q = p[y] / S):
    dprobs[n] = (1 - [k = y] / q) / (N S) where the clip is inactive, else 0."""
    N, K = probs.shape
    total = 0.0
    for n in range(N):
        s = probs[n, 0]  # the row sum in the arrays' precision, left to right as the twin
        for k in range(1, K):
            s += probs[n, k]
        q = probs[n, labels[n]] / s
        c = q
        if c < lo:
            c = lo
        if c > hi:
            c = hi
        total += np.log(c)
        inside = q > lo and q < hi
        inv = one / (nf * s)
        for k in range(K):
            dprobs[n, k] = inv if inside else one - one
        if inside:
            dprobs[n, labels[n]] = inv * (one - one / c)
    return -(total / N)


def sparse_softmax_ce_numba(logits, labels, ws=None):
    """Fused softmax + sparse cross-entropy (Numba); same arguments and results as the twin.

    With a ``ws``, dlogits (N, K) is its buffer "sparse_softmax_ce.dlogits".
    """
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    dlogits = buffer(ws, "sparse_softmax_ce.dlogits", logits.shape, logits.dtype)
    loss = _softmax_ce_nb(logits, labels, dlogits)
    return logits.dtype.type(loss), dlogits


def sparse_ce_from_probs_numba(probs, labels, epsilon=1e-7, ws=None):
    """Sparse cross-entropy on probabilities (Numba); same arguments and results as the twin.

    With a ``ws``, dprobs (N, K) is its buffer "sparse_ce_from_probs.dprobs".
    """
    probs = np.ascontiguousarray(probs)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    dprobs = buffer(ws, "sparse_ce_from_probs.dprobs", probs.shape, probs.dtype)
    t = probs.dtype.type
    loss = _ce_from_probs_nb(probs, labels, t(epsilon), t(1 - epsilon), t(probs.shape[0]), t(1), dprobs)
    return t(loss), dprobs


# name -> (NumPy twin, Numba version), registered by npcnn.kernels (see registry.py)
KERNELS = {
    "sparse_softmax_ce": (sparse_softmax_ce_numpy, sparse_softmax_ce_numba),
    "sparse_ce_from_probs": (sparse_ce_from_probs_numpy, sparse_ce_from_probs_numba),
}
