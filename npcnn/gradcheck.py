"""Gradient checking by central differences, in float64.

For a layer we check the vector-Jacobian product that ``backward`` computes:
pick a random upstream gradient ``dy`` and the scalar ``f(x, params) = sum(layer(x) * dy)``;
then ``backward(dy)`` must equal ``df/dx`` and ``layer.grads[k]`` must equal ``df/dparams[k]``.
Each is compared with the central difference ``(f(v + eps) - f(v - eps)) / (2 eps)``.

For a model we check ``d loss / d params`` of the whole stack plus its loss.

The error reported per tensor is ``max|analytic - numeric| / max(max|analytic|, max|numeric|)``:
the worst disagreement, relative to the tensor's largest gradient. In float64 a correct
backward gives about 1e-9 to 1e-11; :data:`THRESHOLD` is 1e-6. Inputs are spread apart
(no ties in a max-pool window, nothing at ReLU's kink at 0) so the function is smooth
where it is probed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

THRESHOLD = 1e-6
EPS = 1e-6


@dataclass
class CheckResult:
    """One checked tensor: which layer, which tensor ('input', 'kernel', 'bias'), its shape and error."""

    layer: str
    tensor: str
    shape: tuple
    error: float
    threshold: float = THRESHOLD

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error) and self.error <= self.threshold)


def relative_error(analytic, numeric) -> float:
    """max|a - n| / max(max|a|, max|n|); 0 when both are all zeros."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(n).max(initial=0.0))
    if scale == 0:
        return 0.0
    return float(np.abs(a - n).max() / scale)


def numerical_gradient(f, v, eps=EPS, indices=None):
    """Central-difference gradient of scalar ``f()`` w.r.t. array ``v`` (perturbed in place, restored).

    Args:
        f: callable with no arguments returning a float; it must read ``v``.
        v: float64 array.
        indices: flat indices to probe (default: all). Others are left at 0.
    Returns:
        grad: array shaped like v.
    """
    grad = np.zeros_like(v, dtype=np.float64)
    flat_v = v.reshape(-1)
    flat_g = grad.reshape(-1)
    for i in range(flat_v.size) if indices is None else indices:
        old = flat_v[i]
        flat_v[i] = old + eps
        fp = f()
        flat_v[i] = old - eps
        fm = f()
        flat_v[i] = old
        flat_g[i] = (fp - fm) / (2 * eps)
    return grad


def _sample(size, max_checks, rng):
    if max_checks is None or size <= max_checks:
        return None
    return rng.choice(size, size=max_checks, replace=False)


def spread_input(shape, rng, away_from_zero=True):
    """float64 values with distinct magnitudes at least 1/size apart, random signs and order.

    No two entries are within 2*eps of each other (no max-pool ties under perturbation) and
    none is near 0 (ReLU's kink).
    """
    n = int(np.prod(shape))
    mags = (np.arange(n) + (1.0 if away_from_zero else 0.5)) / n
    vals = mags * rng.choice([-1.0, 1.0], size=n)
    return rng.permutation(vals).reshape(shape) * 2.0


def _to_float64(layer):
    for key, p in layer.params.items():
        layer.params[key] = p.astype(np.float64)
    if getattr(layer, "activation", None) is not None:
        _to_float64(layer.activation)
    layer.dtype = np.dtype(np.float64)


def check_layer(layer, input_shape, batch_size=2, seed=0, eps=EPS, max_checks=None, x=None,
                threshold=THRESHOLD, verbose=False):
    """Check one layer's backward (input and every parameter) against central differences.

    Args:
        layer: an npcnn layer (built or not); a float64 deep copy is checked, ``layer`` is unchanged.
        input_shape: one sample's shape, e.g. (H, W, C).
        batch_size: N of the random input.
        max_checks: probe at most this many random entries per tensor (None: all).
        x: an explicit input of shape (N,) + input_shape (default: :func:`spread_input`).
    Returns:
        list of :class:`CheckResult`, one per tensor ('input', then each parameter).
    """
    rng = np.random.default_rng(seed)
    layer = copy.deepcopy(layer)
    if not layer.built:
        layer.build(tuple(input_shape))
    _to_float64(layer)
    layer.need_input_grad = True
    if x is None:
        x = spread_input((batch_size,) + tuple(input_shape), rng)
    x = np.array(x, dtype=np.float64)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dy_before = dy.copy()
    dx = layer.backward(dy)
    if not np.array_equal(dy, dy_before):
        raise AssertionError(f"{layer.name or type(layer).__name__}.backward wrote into its upstream gradient")
    analytic = {"input": dx}
    analytic.update({k: g.copy() for k, g in layer.grads.items()})

    def f():
        return float(np.sum(layer.forward(x, training=False) * dy))

    name = layer.name or type(layer).__name__
    results = []
    for tensor, a in analytic.items():
        v = x if tensor == "input" else layer.params[tensor]
        idx = _sample(v.size, max_checks, rng)
        num = numerical_gradient(f, v, eps, idx)
        if idx is not None:
            a = a.reshape(-1)[idx]
            num = num.reshape(-1)[idx]
        results.append(CheckResult(name, tensor, tuple(v.shape), relative_error(a, num), threshold))
    if verbose:
        print_results(results)
    return results


def check_model(model, x, y, eps=EPS, max_checks=30, seed=0, threshold=THRESHOLD, verbose=False):
    """Check d loss / d params for every parameter of a compiled Sequential (float64 deep copy).

    Args:
        model: a compiled, built :class:`npcnn.models.Sequential` (left unchanged).
        x: (N,) + input_shape inputs. y: (N,) integer labels.
        max_checks: random entries probed per parameter tensor (None: all).
    Returns:
        list of :class:`CheckResult`, one per parameter tensor.
    """
    rng = np.random.default_rng(seed)
    model = copy.deepcopy(model)
    for layer in model.layers:
        _to_float64(layer)
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(y).reshape(-1).astype(np.int64)
    fused = model._fused
    out = model.forward(x, training=True, logits=fused)
    _, dout = model.loss.compute(out, labels, logits=fused)
    model.backward(dout, logits=fused)

    def f():
        out = model.forward(x, training=False, logits=fused)
        return float(model.loss.compute(out, labels, logits=fused)[0])

    results = []
    for layer in model.layers:
        for key, p in layer.params.items():
            idx = _sample(p.size, max_checks, rng)
            num = numerical_gradient(f, p, eps, idx)
            a = layer.grads[key]
            if idx is not None:
                a, num = a.reshape(-1)[idx], num.reshape(-1)[idx]
            results.append(CheckResult(layer.name, key, tuple(p.shape), relative_error(a, num), threshold))
    if verbose:
        print_results(results)
    return results


def print_results(results, file=None):
    """Print one row per checked tensor and a last line counting the passes."""
    print(f"{'layer':<18} {'tensor':<8} {'shape':<20} {'rel. error':>11}  result  (threshold {THRESHOLD:.0e}, float64)",
          file=file)
    for r in results:
        print(f"{r.layer:<18} {r.tensor:<8} {str(r.shape):<20} {r.error:>11.2e}  {'pass' if r.passed else 'FAIL'}",
              file=file)
    ok = sum(r.passed for r in results)
    print(f"{ok}/{len(results)} checks passed", file=file)
    return ok == len(results)
