"""Every layer's activations and gradients for one batch: ``model.trace(x, y)`` as a table.

Builds the Keras CIFAR-10 tutorial model, takes one batch of the CIFAR-10 sample bundled with npcnn,
and prints, per layer, the output's mean, spread and fraction of exact zeros (dead ReLUs), the norm of
the loss gradient w.r.t. the layer's output and input, and each weight's norm and gradient norm.

``--weight-scale`` multiplies every kernel after initialisation: below 1 the activations and the
gradients shrink layer by layer towards the input (vanishing), above 1 they grow (exploding); the
``|d in|`` column shows it at a glance. Nothing is trained and the model is not changed by the trace.

Run:  python examples/trace_one_batch.py [--batch-size 32] [--weight-scale 1.0] [--small]
"""

from __future__ import annotations

import argparse

import numpy as np

from npcnn.gradcheck import seed_model
from npcnn.introspect import format_trace
from npcnn.utils import set_random_seed


def load_batch(n, shape, seed):
    """n images scaled to [0, 1] and labels: the bundled CIFAR-10 sample, or random data without it."""
    try:
        from npcnn.datasets import cifar10

        (x, y), _ = cifar10.load_sample()
        x, y = x[:n].astype(np.float32) / 255.0, y[:n].reshape(-1)
        if x.shape[1:] == tuple(shape):
            return x, y, "the bundled CIFAR-10 sample"
    except (ImportError, FileNotFoundError, AttributeError):
        pass
    rng = np.random.default_rng(seed)
    return rng.random((n,) + tuple(shape), dtype=np.float32), rng.integers(0, 10, n), "random images"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weight-scale", type=float, default=1.0, help="multiply every kernel by this (default 1)")
    p.add_argument("--small", action="store_true", help="a shrunk model on 18x18 random inputs (fast)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    set_random_seed(args.seed)
    if args.small:
        model = seed_model((18, 18, 3), (4, 6, 5), 8, 10)
    else:
        model = seed_model((32, 32, 3), (32, 64, 64), 64, 10)
    for layer in model.layers:
        if "kernel" in layer.params:
            layer.params["kernel"] *= args.weight_scale
    x, y, source = load_batch(args.batch_size, model.input_shape, args.seed)
    records = model.trace(x, y)
    print(f"one batch of {len(x)} {source}, kernels scaled by {args.weight_scale:g}\n")
    print(format_trace(records))
    at_logits, at_input = records[-1].grad_output_norm, records[0].grad_input_norm
    print(f"\n|d loss / d logits| = {at_logits:.3g}, |d loss / d input image| = {at_input:.3g}: "
          f"the gradient is scaled by {at_input / at_logits:.3g} on its way down")
    print("(the last row's |d out| is d loss / d logits: the final softmax is fused with the cross-entropy)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
