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

Command line: ``python -m npcnn.gradcheck`` checks the shrunk seed model (every layer, the fused softmax
cross-entropy, the whole model as ``fit`` runs it, fused steps included); ``--layer NAME`` checks one layer
(see :data:`LAYERS`: conv2d, maxpool, dense, relu, flatten, softmax_ce, batchnorm, dropout, avgpool,
global_avgpool, global_maxpool, zeropad, elu, gelu, leaky_relu, softmax, random_flip,
random_translation) or the fused step conv_relu_maxpool, with shape, stride and padding options
(``--rate`` for dropout, whose mask is frozen; an option that does not apply to the layer is refused);
``--backend numpy|numba``. It prints one row per tensor and ``N/M checks passed``, and exits with 0
only when every check passes. See ``--help`` and docs/studying_backprop.md.
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


def relative_error(analytic, numeric, floor=0.0) -> float:
    """max|a - n| / max(max|a|, max|n|, floor); 0 when that scale is 0 (both all zeros)."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(n).max(initial=0.0), float(floor))
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
    for store in (layer.params, layer.buffers):
        for key, a in store.items():
            store[key] = a.astype(np.float64)
    if getattr(layer, "activation", None) is not None:
        _to_float64(layer.activation)
    layer.dtype = np.dtype(np.float64)


def _has_op(layer):
    from npcnn.layers.base import Layer

    return type(layer).forward_op is not Layer.forward_op


def check_layer(layer, input_shape, batch_size=2, seed=0, eps=EPS, max_checks=None, x=None,
                threshold=THRESHOLD, verbose=False):
    """Check one layer's backward (input and every parameter) against central differences.

    Both sides evaluate the training-mode function with the same frozen context (one step seed, so
    a random layer draws the same mask every time); the declared buffer updates are never applied.

    Args:
        layer: an npcnn layer (built or not); a float64 deep copy is checked, ``layer`` is unchanged.
        input_shape: one sample's shape, e.g. (H, W, C).
        batch_size: N of the random input.
        max_checks: probe at most this many random entries per tensor (None: all).
        x: an explicit input of shape (N,) + input_shape (default: :func:`spread_input`).
    Returns:
        list of :class:`CheckResult`, one per tensor ('input', then each parameter).
    """
    from npcnn.layers.base import Context, LayerState

    rng = np.random.default_rng(seed)
    layer = copy.deepcopy(layer)
    if not layer.built:
        layer.build(tuple(input_shape))
    _to_float64(layer)
    if x is None:
        x = spread_input((batch_size,) + tuple(input_shape), rng)
    x = np.array(x, dtype=np.float64)
    ctx = Context(True, seed=seed, batch_size=len(x))
    act = layer.activation

    def run(op_st, act_st):
        y = layer.forward_op(x, op_st, ctx) if _has_op(layer) else x
        return act.forward_op(y, act_st, ctx) if act is not None else y

    op_st, act_st = LayerState(), LayerState()
    y = run(op_st, act_st)
    dy = rng.standard_normal(y.shape)
    dy_before = dy.copy()
    d = act.backward_op(dy, act_st, ctx) if act is not None else dy
    dx = layer.backward_op(d, op_st, ctx) if _has_op(layer) else d
    if not np.array_equal(dy, dy_before):
        raise AssertionError(f"{layer.name or type(layer).__name__}.backward wrote into its upstream gradient")
    analytic = {"input": dx}
    analytic.update({k: g.copy() for k, g in op_st.grads.items()})

    def f():
        return float(np.sum(run(LayerState(), LayerState()) * dy))

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


def check_step(step, input_shape, batch_size=2, seed=0, eps=EPS, max_checks=None, threshold=THRESHOLD,
               verbose=False):
    """Check one step of a model's plan (e.g. the fused :class:`npcnn.plan.ConvReLUMaxPool`) like
    :func:`check_layer`: its backward against central differences of sum(step(x) * dy), for the input
    and every parameter of its layer. The step's layers are converted to float64 in place (pass a
    step of a copied model: ``copy.deepcopy(model).plan.steps[i]``)."""
    from npcnn.layers.base import Context, LayerState

    rng = np.random.default_rng(seed)
    for layer in step.layers:
        _to_float64(layer)
    x = spread_input((batch_size,) + tuple(input_shape), rng)
    ctx = Context(True, seed=seed, batch_size=len(x))
    st = LayerState()
    y = step.forward(x, st, ctx)
    dy = rng.standard_normal(y.shape)
    dx = step.backward(dy, st, ctx)
    analytic = {"input": dx}
    analytic.update({k: g.copy() for k, g in st.grads.items()})

    def f():
        return float(np.sum(step.forward(x, LayerState(), ctx) * dy))

    name = "+".join(layer.name or type(layer).__name__ for layer in step.layers)  # one word, e.g. conv2d+max_pooling2d
    results = []
    for tensor, a in analytic.items():
        v = x if tensor == "input" else step.param_layer.params[tensor]
        idx = _sample(v.size, max_checks, rng)
        num = numerical_gradient(f, v, eps, idx)
        if idx is not None:
            a, num = a.reshape(-1)[idx], num.reshape(-1)[idx]
        results.append(CheckResult(name, tensor, tuple(v.shape), relative_error(a, num), threshold))
    if verbose:
        print_results(results)
    return results


def check_model(model, x, y, eps=EPS, max_checks=30, seed=0, threshold=THRESHOLD, verbose=False):
    """Check d loss / d params for every parameter of a compiled Sequential (float64 deep copy).

    The model runs its own plan (fused steps and the loss head included, as ``fit`` runs it), in
    training mode on both sides with one frozen context; buffer updates are not applied.

    Args:
        model: a compiled, built :class:`npcnn.models.Sequential` (left unchanged).
        x: (N,) + input_shape inputs. y: (N,) integer labels, or (N, K) label rows for a categorical loss.
        max_checks: random entries probed per parameter tensor (None: all).
    Returns:
        list of :class:`CheckResult`, one per parameter tensor.
    """
    from npcnn import losses as losses_mod
    from npcnn.layers.base import Context

    rng = np.random.default_rng(seed)
    model = copy.deepcopy(model)
    for layer in model.layers:
        _to_float64(layer)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    # (N, K) rows for a categorical loss (one-hot or soft), else (N,) class indices
    labels = y.astype(np.float64) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1).astype(np.int64)
    plan = model.plan
    ctx = Context(True, seed=seed, batch_size=len(x))
    states = plan.new_states(workspaces=False)
    plan.loss_and_grad(x, labels, states, ctx)
    grads = dict(zip(map(id, plan.param_layers), plan.grads(states)))

    def f():
        out = plan.forward(x, plan.new_states(workspaces=False), ctx, logits=plan.logits_loss)
        return float(losses_mod.unchecked_compute(model.loss)(out, labels, logits=plan.logits_loss)[0]) + plan.penalty()

    # A tensor whose true gradient is 0 (a bias right before BatchNormalization, which removes the mean)
    # would compare rounding noise with rounding noise; errors are measured against at least the model's
    # largest analytic gradient times 1e-2, so only disagreements above that level count.
    floor = 1e-2 * max((float(np.abs(g).max(initial=0)) for gs in grads.values() for g in gs), default=0.0)
    results = []
    for layer in model.layers:
        for j, (key, p) in enumerate(layer.params.items()):
            idx = _sample(p.size, max_checks, rng)
            num = numerical_gradient(f, p, eps, idx)
            a = grads[id(layer)][j]
            if idx is not None:
                a, num = a.reshape(-1)[idx], num.reshape(-1)[idx]
            results.append(CheckResult(layer.name, key, tuple(p.shape), relative_error(a, num, floor), threshold))
    if verbose:
        print_results(results)
    return results


def print_results(results, file=None, threshold=None, sections=None):
    """Print one row per checked tensor and a last line counting the passes.

    Args:
        results: list of :class:`CheckResult`.
        threshold: the threshold named in the header (default: the results' own, else :data:`THRESHOLD`).
        sections: optional list of ``(title, start_index)``; a ``-- title --`` line is printed
            before the row at ``start_index``.
    Returns:
        True when every check passed.
    """
    if threshold is None:
        threshold = results[0].threshold if results else THRESHOLD
    titles = dict((i, t) for t, i in (sections or []))
    print(f"{'layer':<18} {'tensor':<8} {'shape':<20} {'rel. error':>11}  result  "
          f"(threshold {threshold:.0e}, float64)", file=file)
    for i, r in enumerate(results):
        if i in titles:
            print(f"-- {titles[i]} --", file=file)
        print(f"{r.layer:<18} {r.tensor:<8} {str(r.shape):<20} {r.error:>11.2e}  {'pass' if r.passed else 'FAIL'}",
              file=file)
    ok = sum(r.passed for r in results)
    print(f"{ok}/{len(results)} checks passed", file=file)
    return ok == len(results)


def check_softmax_ce(batch_size=4, classes=10, seed=0, eps=EPS, threshold=THRESHOLD, scale=3.0):
    """Check the fused sparse softmax cross-entropy: its ``d loss / d logits`` against central differences.

    The kernel is :func:`npcnn.kernels.sparse_softmax_ce` (the active backend's), which returns
    ``(loss, (softmax(logits) - onehot(labels)) / N)``.

    Args:
        batch_size: N. classes: K. scale: standard deviation of the random float64 logits (N, K).
    Returns:
        a list with one :class:`CheckResult` (tensor 'logits').
    """
    from npcnn import kernels as K

    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((batch_size, classes)) * scale
    labels = rng.integers(0, classes, size=batch_size)
    _, dlogits = K.sparse_softmax_ce(logits.copy(), labels)

    def f():
        return float(K.sparse_softmax_ce(logits, labels)[0])

    num = numerical_gradient(f, logits, eps)
    return [CheckResult("softmax_ce", "logits", tuple(logits.shape), relative_error(dlogits, num), threshold)]


# --------------------------------------------------------------------------- command line

LAYERS = ("conv2d", "maxpool", "dense", "relu", "flatten", "softmax_ce", "batchnorm", "dropout",
          "conv_relu_maxpool", "avgpool", "global_avgpool", "global_maxpool", "zeropad", "elu", "gelu",
          "leaky_relu", "softmax", "random_flip", "random_translation")

# Which options apply to which --layer ("model": no --layer); any other option given is refused.
_OPTIONS = {
    "filters": {"conv2d", "conv_relu_maxpool", "model"},
    "kernel_size": {"conv2d", "conv_relu_maxpool"},
    "pool_size": {"maxpool", "avgpool", "conv_relu_maxpool"},
    "strides": {"conv2d", "maxpool", "avgpool"},
    "padding": {"conv2d", "maxpool", "avgpool", "conv_relu_maxpool"},
    "activation": {"conv2d", "dense"},
    "no_bias": {"conv2d", "dense", "conv_relu_maxpool"},
    "units": {"dense", "model"},
    "classes": {"softmax_ce", "model"},
    "rate": {"dropout"},
    "no_center": {"batchnorm"},
    "no_scale": {"batchnorm"},
    "axis": {"softmax"},
}

# Per-layer defaults: non-square shapes that the strides do not divide, to catch index bugs.
_DEFAULT_SHAPES = {
    "model": (18, 18, 3),
    "conv2d": (7, 6, 2),
    "maxpool": (7, 6, 2),
    "dense": (5,),
    "relu": (4, 5, 3),
    "flatten": (3, 4, 2),
    "batchnorm": (4, 5, 3),
    "dropout": (4, 5, 3),
    "conv_relu_maxpool": (9, 8, 2),
    "avgpool": (7, 6, 2),
    "global_avgpool": (5, 4, 3),
    "global_maxpool": (5, 4, 3),
    "zeropad": (4, 3, 2),
    "elu": (4, 5, 3),
    "gelu": (4, 5, 3),
    "leaky_relu": (4, 5, 3),
    "softmax": (4, 5, 3),
    "random_flip": (5, 6, 2),
    "random_translation": (5, 6, 2),
}


def seed_model(input_shape=(18, 18, 3), filters=(4, 6, 5), units=8, classes=10):
    """The Keras CIFAR-10 tutorial model, shrunk (see :func:`npcnn.models.cifar10_cnn`), compiled.

    The full-size model is ``seed_model((32, 32, 3), (32, 64, 64), 64, 10)``; the final softmax is
    fused with the sparse categorical cross-entropy.
    """
    from npcnn.models import cifar10_cnn

    return cifar10_cnn(input_shape, filters, units, classes)


def _int_tuple(text):
    """'7,6,2' or '7x6x2' or '3' -> a tuple of positive ints (an argparse type)."""
    import argparse

    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 7,6,2; got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, e.g. 7,6,2; got {text!r}")
    return values


def _pair(values, name, parser):
    if values is None:
        return None
    if len(values) == 1:
        return values * 2
    if len(values) != 2:
        parser.error(f"--{name} takes one or two integers (e.g. 3 or 3,2), got {','.join(map(str, values))}")
    return values


def _fallbacks(backend):
    """Names of the kernels that the ``backend`` does not implement (they run the NumPy twin)."""
    from npcnn import kernels as K

    if backend == "numpy":
        return []
    registry = getattr(K, "_REGISTRY", {})
    return [name for name in registry if K.get_kernel(name, backend) is K.get_kernel(name, "numpy")]


def _build_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m npcnn.gradcheck",
        description="Check npcnn's backward passes against float64 central differences.\n"
                    "Without --layer: every layer of the (shrunk) CIFAR-10 seed model, the fused softmax\n"
                    "cross-entropy, and d loss / d params of the whole model. Prints one row per tensor;\n"
                    "exit status 0 only when every check passes, 1 otherwise.",
        epilog="examples:\n"
               "  python -m npcnn.gradcheck\n"
               "  python -m npcnn.gradcheck --layer conv2d --input-shape 9,7,3 --kernel-size 3,2 "
               "--strides 2 --padding same\n"
               "  python -m npcnn.gradcheck --layer maxpool --pool-size 3 --strides 2 --backend numpy\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--layer", choices=LAYERS, default=None, help="check one layer instead of the seed model")
    p.add_argument("--backend", choices=("numpy", "numba"), default=None,
                   help="kernel backend to check (default: the active one, NPCNN_BACKEND or numba)")
    p.add_argument("--input-shape", type=_int_tuple, default=None, metavar="H,W,C",
                   help="one sample's shape (default depends on --layer; (D,) for dense)")
    p.add_argument("--batch-size", type=int, default=2, metavar="N", help="samples in the random batch (default 2)")
    p.add_argument("--filters", type=_int_tuple, default=None, metavar="F",
                   help="conv2d: number of filters (default 3); model: three counts (default 4,6,5)")
    p.add_argument("--kernel-size", type=_int_tuple, default=None, metavar="KH,KW", help="conv2d (default 3,2)")
    p.add_argument("--pool-size", type=_int_tuple, default=None, metavar="PH,PW",
                   help="maxpool, avgpool, conv_relu_maxpool (default 2,2)")
    p.add_argument("--strides", type=_int_tuple, default=None, metavar="SH,SW",
                   help="conv2d (default 1,1) or maxpool (default: the pool size)")
    p.add_argument("--padding", choices=("valid", "same"), default="valid", help="conv2d and maxpool")
    p.add_argument("--activation", default=None,
                   help="conv2d/dense activation: relu, softmax, tanh, ... (default none)")
    p.add_argument("--no-bias", action="store_true", help="conv2d/dense without a bias")
    p.add_argument("--units", type=int, default=None, help="dense: output units (default 4); model: hidden units (8)")
    p.add_argument("--classes", type=int, default=10, help="softmax_ce and model: number of classes (default 10)")
    p.add_argument("--rate", type=float, default=0.5, help="dropout: the drop rate, in [0, 1) (default 0.5); "
                   "the mask is drawn once and frozen for the check")
    p.add_argument("--axis", type=int, default=-1, help="softmax: the axis (default -1)")
    p.add_argument("--no-center", action="store_true", help="batchnorm: no beta (center=False)")
    p.add_argument("--no-scale", action="store_true", help="batchnorm: no gamma (scale=False)")
    p.add_argument("--max-checks", type=int, default=0, metavar="M",
                   help="probe at most M random entries per tensor (default 0: every entry)")
    p.add_argument("--eps", type=float, default=EPS, help=f"central-difference step (default {EPS:g})")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help=f"largest relative error that passes (default {THRESHOLD:g})")
    p.add_argument("--seed", type=int, default=0, help="random seed for inputs, weights and probes (default 0)")
    return p


def _around(center, spread):
    """An initializer drawing center + spread * N(0, 1) from npcnn's generator (seeded by --seed)."""
    def init(shape, dtype):
        from npcnn.utils import get_rng

        return (center + spread * get_rng().standard_normal(shape)).astype(dtype)

    return init


def _make_layer(args, parser):
    from npcnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, ReLU

    kind = args.layer
    bias = not args.no_bias
    if kind == "conv2d":
        filters = (args.filters or (3,))
        if len(filters) != 1:
            parser.error("--filters takes one integer with --layer conv2d")
        kernel = _pair(args.kernel_size, "kernel-size", parser) or (3, 2)
        strides = _pair(args.strides, "strides", parser) or (1, 1)
        return Conv2D(filters[0], kernel, strides=strides, padding=args.padding, activation=args.activation,
                      use_bias=bias, name="conv2d")
    if kind == "maxpool":
        pool = _pair(args.pool_size, "pool-size", parser) or (2, 2)
        return MaxPooling2D(pool, strides=_pair(args.strides, "strides", parser), padding=args.padding,
                            name="max_pooling2d")
    if kind == "dense":
        return Dense(args.units or 4, activation=args.activation, use_bias=bias, name="dense")
    if kind == "relu":
        return ReLU(name="re_lu")
    if kind == "batchnorm":  # random gamma and beta: the defaults 1 and 0 would hide a missing factor
        return BatchNormalization(center=not args.no_center, scale=not args.no_scale,
                                  gamma_initializer=_around(1.0, 0.5), beta_initializer=_around(0.0, 0.3),
                                  name="batch_normalization")
    if kind == "dropout":
        return Dropout(args.rate, name="dropout")
    if kind == "flatten":
        return Flatten(name="flatten")
    from npcnn import layers as L

    if kind == "avgpool":
        pool = _pair(args.pool_size, "pool-size", parser) or (2, 2)
        return L.AveragePooling2D(pool, strides=_pair(args.strides, "strides", parser), padding=args.padding,
                                  name="average_pooling2d")
    others = {
        "global_avgpool": lambda: L.GlobalAveragePooling2D(name="global_average_pooling2d"),
        "global_maxpool": lambda: L.GlobalMaxPooling2D(name="global_max_pooling2d"),
        "zeropad": lambda: L.ZeroPadding2D(((1, 2), (0, 1)), name="zero_padding2d"),
        "elu": lambda: L.ELU(alpha=1.0, name="elu"),
        "gelu": lambda: L.GELU(name="gelu"),
        "leaky_relu": lambda: L.LeakyReLU(negative_slope=0.3, name="leaky_re_lu"),
        "softmax": lambda: L.Softmax(axis=args.axis, name="softmax"),
        "random_flip": lambda: L.RandomFlip("horizontal_and_vertical", name="random_flip"),
        "random_translation": lambda: L.RandomTranslation(0.3, 0.3, name="random_translation"),
    }
    return others[kind]()


def _describe(layer):
    """'Conv2D(filters=3, kernel_size=(3, 2), strides=(1, 1), padding='valid')' and the like."""
    attrs = [f"{a}={getattr(layer, a)!r}" for a in ("filters", "units", "kernel_size", "pool_size", "strides",
                                                     "padding", "use_bias", "rate", "epsilon", "center", "scale")
             if hasattr(layer, a)]
    if getattr(layer, "activation", None) is not None:
        attrs.append(f"activation={layer.activation.activation_name!r}")
    return f"{type(layer).__name__}({', '.join(attrs)})"


def run_checks(args, parser=None):
    """Run the checks that parsed CLI ``args`` ask for.

    Returns:
        ``(description, results, sections)``: a phrase naming what was checked, the list of
        :class:`CheckResult` and the section titles for :func:`print_results`.
    """
    from npcnn.utils import set_random_seed

    parser = parser or _build_parser()
    if args.batch_size <= 0:
        parser.error("--batch-size must be positive")
    target = args.layer or "model"
    for option, applies in _OPTIONS.items():
        if getattr(args, option) != parser.get_default(option) and target not in applies:
            flag = "--" + option.replace("_", "-")
            where = "the seed model (no --layer)" if target == "model" else f"--layer {target}"
            parser.error(f"{flag} does not apply to {where}; it applies to "
                         + ", ".join(sorted("the seed model" if a == "model" else a for a in applies)))
    set_random_seed(args.seed)  # weight initialisation
    max_checks = args.max_checks or None
    common = dict(eps=args.eps, threshold=args.threshold, seed=args.seed)
    if args.layer == "softmax_ce":
        what = f"the fused softmax cross-entropy, logits ({args.batch_size}, {args.classes})"
        return what, check_softmax_ce(args.batch_size, args.classes, **common), []
    if args.layer == "conv_relu_maxpool":
        return _check_conv_relu_maxpool(args, parser, max_checks, common)
    if args.layer is not None:
        shape = args.input_shape or _DEFAULT_SHAPES[args.layer]
        try:
            layer = _make_layer(args, parser)
            layer.build(shape)
        except (ValueError, TypeError) as e:
            parser.error(str(e))
        what = f"{_describe(layer)} on input {(args.batch_size,) + tuple(shape)}"
        return what, check_layer(layer, shape, batch_size=args.batch_size, max_checks=max_checks, **common), []

    filters = args.filters or (4, 6, 5)
    if len(filters) != 3:
        parser.error("--filters takes three integers (e.g. 4,6,5) for the seed model")
    shape = args.input_shape or _DEFAULT_SHAPES["model"]
    units = args.units or 8
    try:
        model = seed_model(shape, filters, units, args.classes)
    except (ValueError, TypeError) as e:
        parser.error(f"the seed model does not fit --input-shape {','.join(map(str, shape))}: {e}")
    what = (f"the seed model shrunk to input {(args.batch_size,) + tuple(shape)}, filters "
            f"{','.join(map(str, filters))}, units {units}, classes {args.classes}")
    results, sections = [], [("each layer: d sum(y * dy) / d (input, params) for a random dy", 0)]
    for layer in model.layers:
        results += check_layer(layer, layer.built_input_shape, batch_size=args.batch_size,
                               max_checks=max_checks, **common)
    sections.append(("loss head: fused softmax cross-entropy, d loss / d logits", len(results)))
    results += check_softmax_ce(args.batch_size, args.classes, **common)
    fused = [repr(s) for s in model.plan.steps if type(s).__name__ != "OpStep"]
    sections.append(("whole model: d loss / d params, run as fit runs it (the plan's fused steps: "
                     + ", ".join(fused) + "; check one with --layer conv_relu_maxpool)", len(results)))
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch_size,) + tuple(shape))
    y = rng.integers(0, args.classes, size=args.batch_size)
    results += check_model(model, x, y, max_checks=max_checks, **common)
    return what, results, sections


def _check_conv_relu_maxpool(args, parser, max_checks, common):
    """--layer conv_relu_maxpool: the fused Conv2D + ReLU + MaxPooling2D step of a model's plan."""
    from npcnn.layers import Conv2D, Flatten, MaxPooling2D
    from npcnn.models import Sequential
    from npcnn.plan import ConvReLUMaxPool

    shape = args.input_shape or _DEFAULT_SHAPES["conv_relu_maxpool"]
    filters = args.filters or (3,)
    if len(filters) != 1:
        parser.error("--filters takes one integer with --layer conv_relu_maxpool")
    kernel = _pair(args.kernel_size, "kernel-size", parser) or (3, 2)
    pool = _pair(args.pool_size, "pool-size", parser) or (2, 2)
    try:
        model = Sequential([Conv2D(filters[0], kernel, padding=args.padding, activation="relu",
                                   use_bias=not args.no_bias, input_shape=tuple(shape)),
                            MaxPooling2D(pool, padding=args.padding), Flatten()])
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    step = copy.deepcopy(model).plan.steps[0]
    if not isinstance(step, ConvReLUMaxPool):
        parser.error("the conv + ReLU + max-pool fusion is switched off (NPCNN_FUSE=0)")
    what = (f"the fused step Conv2D(filters={filters[0]}, kernel_size={kernel}, activation='relu') + "
            f"MaxPooling2D({pool}), padding {args.padding!r}, on input {(args.batch_size,) + tuple(shape)}")
    return what, check_step(step, shape, batch_size=args.batch_size, max_checks=max_checks, **common), []


def main(argv=None) -> int:
    """``python -m npcnn.gradcheck``: print one row per checked tensor; return 0 when all pass, else 1."""
    import sys

    import npcnn

    parser = _build_parser()
    args = parser.parse_args(argv)
    backend = args.backend or npcnn.get_backend()
    with npcnn.use_backend(backend):
        what, results, sections = run_checks(args, parser)
        fallbacks = _fallbacks(backend)
    probes = "every entry probed" if not args.max_checks else f"at most {args.max_checks} random entries per tensor"
    print(f"gradcheck: {what}")
    print(f"backend {backend}, float64, central differences (eps {args.eps:g}), {probes}, seed {args.seed}")
    if fallbacks:
        print(f"note: backend {backend} has no compiled version of {', '.join(fallbacks)}; "
              "their NumPy twins ran")
    ok = print_results(results, threshold=args.threshold, sections=sections)
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
