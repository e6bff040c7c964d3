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


def sparse_softmax_ce_numpy(logits, labels):
    """Fused softmax + sparse cross-entropy (readable twin).

    Args:
        logits: (N, K) float. labels: (N,) integer in [0, K).
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


def sparse_ce_from_probs_numpy(probs, labels, epsilon=1e-7):
    """Sparse cross-entropy on probabilities (from_logits=False without a fused softmax).

    Keras clips probabilities to [epsilon, 1 - epsilon] before the log.
    Args: probs (N, K), labels (N,). Returns: loss (scalar), dprobs (N, K).
    """
    N = probs.shape[0]
    rows = np.arange(N)
    picked = probs[rows, labels]
    clipped = np.clip(picked, epsilon, 1 - epsilon)
    loss = -np.log(clipped).mean(dtype=np.float64)
    dprobs = np.zeros_like(probs)
    inside = (picked > epsilon) & (picked < 1 - epsilon)
    dprobs[rows, labels] = np.where(inside, -1.0 / (N * clipped), 0.0)
    return probs.dtype.type(loss), dprobs


# --------------------------------------------------------------------------- Numba version
# One pass per row (rows are independent; K is small, N at most a few hundred, so the
# loop is serial: thread start-up would cost more than the work).

from numba import njit  # noqa: E402


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


def sparse_softmax_ce_numba(logits, labels):
    """Fused softmax + sparse cross-entropy (Numba); same arguments and results as the twin."""
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    dlogits = np.empty_like(logits)
    loss = _softmax_ce_nb(logits, labels, dlogits)
    return logits.dtype.type(loss), dlogits
