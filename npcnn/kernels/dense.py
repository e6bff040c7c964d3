"""Fully connected layer: one GEMM.

Forward:  y = x @ W + b                      x (N, D), W (D, U), b (U,), y (N, U)
Backward: dx = dy @ W^T,  dW = x^T @ dy,  db = sum_n dy[n]
"""

from __future__ import annotations


def dense_forward(x, kernel, bias):
    """x: (N, D), kernel: (D, U), bias: (U,) or None. Returns y (N, U) and the cache (x, kernel)."""
    y = x @ kernel
    if bias is not None:
        y += bias
    return y, (x, kernel)


def dense_backward(dy, cache, need_dx=True):
    """dy: (N, U). Returns dx (N, D) or None, dkernel (D, U), dbias (U,)."""
    x, kernel = cache
    dx = dy @ kernel.T if need_dx else None
    return dx, x.T @ dy, dy.sum(axis=0)
