"""npcnn against PyTorch's autograd on the same tensors, in float64: one layer, or the whole seed model.

For one layer (``--layer conv2d|maxpool|dense|relu|softmax_ce``) it builds the npcnn layer in float64, draws
an input x and a random upstream gradient dy, and runs npcnn's forward and backward (``layer.forward``,
``layer.backward``: the kernels of the active backend). PyTorch computes the same function from the same
tensors (NHWC permuted to NCHW, the Keras kernel (KH, KW, C, F) permuted to (F, C, KH, KW), TensorFlow's
'same' padding applied with F.pad, -inf for max pooling) and autograd differentiates sum(y * dy). It prints,
per tensor, the largest absolute difference between the two: the forward output, d/d input and every
parameter gradient. ``softmax_ce`` compares npcnn's fused sparse softmax cross-entropy kernel (loss and
d loss / d logits) with ``F.cross_entropy``.

``--layer model`` (the default) runs the Keras CIFAR-10 tutorial model (``--small``: shrunk to 18x18 inputs)
on a batch of the bundled CIFAR-10 sample exactly as a training step does (the plan: fused conv + ReLU +
pool blocks, the softmax owned by the loss) and compares the logits, the loss, d loss / d input and the
gradient of every weight with the same network written in PyTorch.

In float64 the two agree to about 1e-15 relative to each tensor's size; the exit status is 0 when every
tensor agrees within ``--tolerance`` (relative, default 1e-9), 1 otherwise, and 2 when PyTorch is missing
(the message says how to install it: ``pip install torch==2.13.0``).

Run:  python examples/compare_with_pytorch.py [--layer model|conv2d|maxpool|dense|relu|softmax_ce] [--small]
      python examples/compare_with_pytorch.py --layer conv2d --input-shape 9,7,3 --kernel-size 3,2 --strides 2
                                              --padding same
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

TORCH_VERSION = "2.13.0"
LAYERS = ("model", "conv2d", "maxpool", "dense", "relu", "softmax_ce")


def import_torch():
    """torch, or a clear message and exit status 2 when it is not installed."""
    try:
        import torch
    except ImportError:
        print("This script compares npcnn with PyTorch's autograd, and PyTorch is not installed.\n"
              f"Install it with:  pip install torch=={TORCH_VERSION}   (or: pip install -e \".[torch]\")",
              file=sys.stderr)
        raise SystemExit(2) from None
    return torch


def int_tuple(text):
    """'7,6,2' (or '7x6x2') -> (7, 6, 2), positive integers (an argparse type)."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 7,6,2; got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, e.g. 7,6,2; got {text!r}")
    return values


# --------------------------------------------------------------------------- npcnn layers, in PyTorch (NHWC)


def torch_layer(torch, layer, t, params):
    """Apply npcnn ``layer`` to the NHWC torch tensor ``t`` with torch parameters ``params`` (Keras layouts).

    Returns the output before the layer's activation and after it.
    """
    from npcnn.kernels import conv_geometry
    from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, ReLU

    F = torch.nn.functional
    if isinstance(layer, (Conv2D, MaxPooling2D)):
        window = layer.kernel_size if isinstance(layer, Conv2D) else layer.pool_size
        _, _, (pt, pb, pl, pr) = conv_geometry(tuple(t.shape), window, layer.strides, layer.padding)
        u = t.permute(0, 3, 1, 2)                                        # NHWC -> NCHW
        if isinstance(layer, Conv2D):
            u = F.pad(u, (pl, pr, pt, pb))                               # TensorFlow's 'same': the extra one after
            u = F.conv2d(u, params["kernel"].permute(3, 2, 0, 1), params.get("bias"), stride=layer.strides)
        else:
            u = F.pad(u, (pl, pr, pt, pb), value=-float("inf"))
            u = F.max_pool2d(u, layer.pool_size, stride=layer.strides)
        z = u.permute(0, 2, 3, 1)                                        # back to NHWC
    elif isinstance(layer, Dense):
        z = t @ params["kernel"] + params["bias"] if "bias" in params else t @ params["kernel"]
    elif isinstance(layer, Flatten):
        z = t.reshape(t.shape[0], -1)                                    # Keras's (h, w, c) order
    elif isinstance(layer, ReLU):
        z = torch.relu(t)
    else:
        raise NotImplementedError(f"no PyTorch version of {type(layer).__name__} here")
    act = getattr(layer, "activation", None)
    name = getattr(act, "activation_name", None) if act is not None else None
    if name in (None, "linear"):
        return z, z
    if name == "relu":
        return z, torch.relu(z)
    if name == "softmax":
        return z, torch.softmax(z, dim=-1)
    raise NotImplementedError(f"no PyTorch version of the activation {name!r} here")


def to_torch(torch, a, grad=True):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# --------------------------------------------------------------------------- the comparisons


def compare_layer(torch, layer, x, seed):
    """npcnn's forward/backward of ``layer`` (float64, built) vs autograd. Returns [(tensor, npcnn, torch)]."""
    rng = np.random.default_rng(seed + 1)
    y = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    ours = [("forward output y", y), ("d/d input", dx)]
    ours += [(f"d/d {k}", layer.grads[k]) for k in layer.params]

    xt = to_torch(torch, x)
    pt = {k: to_torch(torch, v) for k, v in layer.params.items()}
    _, yt = torch_layer(torch, layer, xt, pt)
    (yt * torch.tensor(dy)).sum().backward()
    theirs = [yt.detach().numpy(), xt.grad.numpy()] + [pt[k].grad.numpy() for k in layer.params]
    return [(name, a, b) for (name, a), b in zip(ours, theirs)]


def compare_softmax_ce(torch, batch, classes, seed):
    from npcnn import kernels as K

    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((batch, classes)) * 3
    labels = rng.integers(0, classes, batch)
    loss, dlogits = K.sparse_softmax_ce(logits, labels)
    lt = to_torch(torch, logits)
    lt_loss = torch.nn.functional.cross_entropy(lt, torch.tensor(labels))
    lt_loss.backward()
    return [("loss", np.float64(loss), lt_loss.detach().numpy()), ("d loss / d logits", dlogits, lt.grad.numpy())]


def float64_seed_model(small):
    """The tutorial model (or its 18x18 shrink), every layer in float64, compiled like the tutorial's."""
    from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
    from npcnn.models import Sequential

    shape, (f1, f2, f3), units = ((18, 18, 3), (4, 6, 5), 8) if small else ((32, 32, 3), (32, 64, 64), 64)
    d = "float64"
    model = Sequential([
        Conv2D(f1, (3, 3), activation="relu", input_shape=shape, dtype=d), MaxPooling2D((2, 2), dtype=d),
        Conv2D(f2, (3, 3), activation="relu", dtype=d), MaxPooling2D((2, 2), dtype=d),
        Conv2D(f3, (3, 3), activation="relu", dtype=d), Flatten(dtype=d),
        Dense(units, activation="relu", dtype=d), Dense(10, activation="softmax", dtype=d),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def sample_batch(n, shape, seed):
    """n images of the bundled CIFAR-10 sample scaled to [0, 1] (cropped to ``shape``), and their labels."""
    from npcnn.datasets import cifar10

    try:
        (x, y), _ = cifar10.load_sample()
        h, w, _ = shape
        images, labels = x[:n, :h, :w].astype(np.float64) / 255.0, y[:n].reshape(-1).astype(np.int64)
        return images, labels, "the bundled CIFAR-10 sample"
    except FileNotFoundError:
        rng = np.random.default_rng(seed)
        return rng.random((n,) + tuple(shape)), rng.integers(0, 10, n), "random images"


def compare_model(torch, small, batch, seed):
    """One training step's forward and backward of the seed model, npcnn (its plan) vs autograd."""
    from npcnn import kernels as K

    model = float64_seed_model(small)
    x, labels, source = sample_batch(batch, model.input_shape, seed)
    logits = model.forward(x, training=True, logits=True)       # the plan, as fit runs it, stopping at the logits
    loss, dlogits = K.sparse_softmax_ce(logits, labels)         # the loss head: fused softmax cross-entropy
    dx = model.backward(dlogits, logits=True, input_grad=True)
    ours = [("logits", logits), ("loss", np.float64(loss)), ("d loss / d input", dx)]
    for layer in model.layers:
        ours += [(f"d loss / d {layer.name}/{k}", layer.grads[k]) for k in layer.params]

    xt = to_torch(torch, x)
    params = [{k: to_torch(torch, v) for k, v in layer.params.items()} for layer in model.layers]
    t = xt
    for i, (layer, p) in enumerate(zip(model.layers, params)):
        z, t = torch_layer(torch, layer, t, p)
        if i == len(model.layers) - 1:
            t = z                                                 # the softmax belongs to the loss
    lt = torch.nn.functional.cross_entropy(t, torch.tensor(labels))
    lt.backward()
    theirs = [t.detach().numpy(), lt.detach().numpy(), xt.grad.numpy()]
    theirs += [p[k].grad.numpy() for layer, p in zip(model.layers, params) for k in layer.params]
    what = (f"the {'shrunk ' if small else ''}Keras CIFAR-10 tutorial model, float64, on {batch} images of {source} "
            f"(one training step: the plan's fused blocks, softmax cross-entropy on the logits)")
    return what, [(name, a, b) for (name, a), b in zip(ours, theirs)]


def build_layer(args, parser):
    from npcnn.layers import Conv2D, Dense, MaxPooling2D, ReLU

    def pair(values, name, default):
        if values is None:
            return default
        if len(values) not in (1, 2):
            parser.error(f"--{name} takes one or two integers (e.g. 3 or 3,2), got {','.join(map(str, values))}")
        return tuple(values * 2)[:2]

    d = "float64"
    act = None if args.activation in (None, "none", "linear") else args.activation
    if args.layer == "conv2d":
        return Conv2D(args.filters, pair(args.kernel_size, "kernel-size", (3, 2)),
                      strides=pair(args.strides, "strides", (1, 1)), padding=args.padding, activation=act, dtype=d)
    if args.layer == "maxpool":
        return MaxPooling2D(pair(args.pool_size, "pool-size", (2, 2)), strides=pair(args.strides, "strides", None),
                            padding=args.padding, dtype=d)
    if args.layer == "dense":
        return Dense(args.units, activation=act, dtype=d)
    return ReLU(dtype=d)


def describe(layer):
    """'Conv2D(filters=3, kernel_size=(3, 2), strides=(2, 2), padding='same', activation='relu')' and the like."""
    names = ("filters", "units", "kernel_size", "pool_size", "strides", "padding")
    attrs = [f"{a}={getattr(layer, a)!r}" for a in names if hasattr(layer, a)]
    act = getattr(layer, "activation", None)
    if act is not None:
        attrs.append(f"activation={act.activation_name!r}")
    return f"{type(layer).__name__}({', '.join(attrs)})"


DEFAULT_SHAPES = {"conv2d": (7, 6, 2), "maxpool": (7, 6, 2), "dense": (5,), "relu": (4, 5, 3)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog=f"needs PyTorch: pip install torch=={TORCH_VERSION}")
    p.add_argument("--layer", choices=LAYERS, default="model", help="what to compare (default: the whole model)")
    p.add_argument("--small", action="store_true", help="model: the 18x18 shrink (4, 6, 5 filters, 8 units)")
    p.add_argument("--batch-size", type=int, default=4, help="samples (default 4)")
    p.add_argument("--input-shape", type=int_tuple, default=None, metavar="H,W,C",
                   help="one sample's shape for a layer ((D,) for dense); default 7,6,2 (dense 5, relu 4,5,3)")
    p.add_argument("--filters", type=int, default=3, help="conv2d: filters (default 3)")
    p.add_argument("--kernel-size", type=int_tuple, default=None, metavar="KH,KW", help="conv2d (default 3,2)")
    p.add_argument("--pool-size", type=int_tuple, default=None, metavar="PH,PW", help="maxpool (default 2,2)")
    p.add_argument("--strides", type=int_tuple, default=None, metavar="SH,SW",
                   help="conv2d (default 1,1), maxpool (default: the pool size)")
    p.add_argument("--padding", choices=("valid", "same"), default="valid")
    p.add_argument("--units", type=int, default=4, help="dense: output units (default 4)")
    p.add_argument("--activation", choices=("none", "relu"), default="none", help="conv2d and dense")
    p.add_argument("--classes", type=int, default=10, help="softmax_ce: classes (default 10)")
    p.add_argument("--tolerance", type=float, default=1e-9,
                   help="largest difference, relative to the tensor's largest value, that agrees (default 1e-9)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.batch_size <= 0:
        p.error("--batch-size must be positive")
    import npcnn
    from npcnn.utils import set_random_seed

    set_random_seed(args.seed)
    layer = None
    if args.layer not in ("model", "softmax_ce"):  # arguments checked before PyTorch is needed
        shape = args.input_shape or DEFAULT_SHAPES[args.layer]
        try:
            layer = build_layer(args, p)
            layer.build(tuple(shape))
        except (ValueError, TypeError) as e:
            p.error(str(e))
    torch = import_torch()

    if args.layer == "model":
        what, rows = compare_model(torch, args.small, args.batch_size, args.seed)
    elif args.layer == "softmax_ce":
        what = f"the fused sparse softmax cross-entropy kernel, logits ({args.batch_size}, {args.classes})"
        rows = compare_softmax_ce(torch, args.batch_size, args.classes, args.seed)
    else:
        x = np.random.default_rng(args.seed).standard_normal((args.batch_size,) + tuple(layer.built_input_shape))
        what = f"{describe(layer)}, float64, on input {x.shape}, for a random upstream gradient dy"
        rows = compare_layer(torch, layer, x, args.seed)

    print(f"npcnn (backend {npcnn.get_backend()}) vs PyTorch {torch.__version__} autograd: {what}")
    head = f"{'tensor':<36} {'shape':<18} {'max |npcnn - torch|':>20} {'max |torch|':>12}  agree"
    print(head)
    print("-" * len(head))
    ok = True
    for name, a, b in rows:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            raise AssertionError(f"{name}: npcnn's shape {a.shape} differs from PyTorch's {b.shape}")
        diff = float(np.abs(a - b).max(initial=0.0))
        scale = float(np.abs(b).max(initial=0.0))
        agree = diff <= args.tolerance * max(scale, 1e-300) or diff == 0.0
        ok &= agree
        print(f"{name:<36} {str(a.shape):<18} {diff:>20.2e} {scale:>12.3g}  {'yes' if agree else 'NO'}")
    print(f"{'every tensor agrees' if ok else 'SOME TENSORS DIFFER'} (tolerance {args.tolerance:g} of each "
          f"tensor's largest value, float64)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
