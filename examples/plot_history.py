"""Training curves and per-layer gradient norms from a saved history (PNG).

Plots loss and accuracy per epoch (training and validation), and, when the history holds them,
the per-layer gradient norms logged by :class:`npcnn.introspect.GradientNormLogger`
('grad_norm/<layer>/kernel', log scale) and the weight norms. Gradients that differ by orders of magnitude
between the first and the last layers, or that collapse or blow up from epoch to epoch, are what to look for.

``--history`` reads a saved history: JSON written by ``npcnn.introspect.save_history`` or a training
checkpoint ``.npz`` (``npcnn.checkpoint``). Without it, the script makes one: it trains the tutorial model
on the CIFAR-10 sample bundled with npcnn with a GradientNormLogger and saves the history to
``--save-history`` first (default ``runs/history.json``). The PNG goes to ``runs/training_curves.png``
(``runs/`` is ignored by git) unless ``--out`` says otherwise; the script prints both paths.

Needs matplotlib (``pip install -e .[plot]``); without it, it prints the history as a table and skips the plot.

Run:  python examples/plot_history.py [--history FILE] [--epochs 5] [--samples 1000]
                                      [--out runs/training_curves.png]
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np

from npcnn.introspect import GradientNormLogger, gradient_norms, load_history, save_history
from npcnn.utils import pyplot


def make_history(args):
    """Train the tutorial model on the bundled sample with a GradientNormLogger; save and return its history."""
    from npcnn.datasets import cifar10
    from npcnn.gradcheck import seed_model
    from npcnn.utils import set_random_seed

    set_random_seed(args.seed)
    (x, y), (xt, yt) = cifar10.load_sample()
    x, y = x[:args.samples] / np.float32(255), y[:args.samples]
    xt, yt = xt[:max(args.samples // 5, 1)] / np.float32(255), yt[:max(args.samples // 5, 1)]
    model = seed_model((32, 32, 3), (32, 64, 64), 64, 10)
    history = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, validation_data=(xt, yt),
                        verbose=2, callbacks=[GradientNormLogger()])
    os.makedirs(os.path.dirname(os.path.abspath(args.save_history)), exist_ok=True)
    save_history(history, args.save_history)
    print(f"saved the history to {os.path.abspath(args.save_history)}")
    return history.history


def print_table(h):
    keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in h]
    grads = gradient_norms(h)
    kernels = [(layer, p) for layer, p in grads if p == "kernel"]
    print("epoch " + " ".join(f"{k:>12}" for k in keys)
          + "".join(f" {'|d ' + layer + '|':>14}" for layer, _ in kernels))
    n = max(len(v) for v in h.values())
    for e in range(n):
        vals = [h[k][e] if e < len(h[k]) else math.nan for k in keys]
        g = [grads[lk][e] if e < len(grads[lk]) else math.nan for lk in kernels]
        print(f"{e + 1:>5} " + " ".join(f"{v:>12.4f}" for v in vals) + "".join(f" {v:>14.3g}" for v in g))


def draw(plt, h, path):
    grads, weights = gradient_norms(h), gradient_norms(h, "weight_norm")
    panels = 2 + bool(grads) + bool(weights)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), squeeze=False)
    axes = axes[0]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "--s")):
            if prefix + metric in h:
                values = h[prefix + metric]
                ax.plot(range(1, len(values) + 1), values, style, ms=3, label=(prefix or "train ") + metric)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize=8)
    for ax, norms, title in ((axes[2] if grads else None, grads, "gradient norm per layer (mean over batches)"),
                             (axes[-1] if weights else None, weights, "weight norm per layer")):
        if ax is None:
            continue
        for (layer, param), values in norms.items():
            if param != "kernel":
                continue
            ax.plot(range(1, len(values) + 1), values, "-o", ms=3, label=layer)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--history", default=None, help="a saved history (.json from save_history, or a checkpoint .npz)")
    p.add_argument("--epochs", type=int, default=5, help="when training a history (default 5)")
    p.add_argument("--samples", type=int, default=1000, help="training images of the bundled sample (default 1000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--save-history", default=os.path.join("runs", "history.json"),
                   help="where a trained history is saved (default runs/history.json)")
    p.add_argument("--out", default=os.path.join("runs", "training_curves.png"),
                   help="the PNG (default runs/training_curves.png)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    h = load_history(args.history) if args.history else make_history(args)
    if not h:
        p.error(f"{args.history}: the history is empty")
    print_table(h)
    plt = pyplot()
    if plt is None:
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    draw(plt, h, args.out)
    print(f"wrote {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
