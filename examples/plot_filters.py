"""The first Conv2D layer's filters, drawn as small RGB images (PNG).

Each 3x3x3 kernel of the first layer is shown as a 3x3 colour patch (every filter scaled to [0, 1] on
its own): at initialisation, after training, and the change training made (after - before), so one
can see them move from random noise towards colour and edge detectors. By default it trains the
tutorial model briefly on the CIFAR-10 sample bundled with npcnn; ``--weights`` plots saved weights
instead (``model.save_weights`` .npz, or a training checkpoint). Filters are learned slowly on 1,000
images: train longer (or on the full data with ``python -m npcnn.examples.cifar10``) for clearer ones.

Needs matplotlib (``pip install -e .[plot]``); without it, it prints the filter norms and skips the plot.

Run:  python examples/plot_filters.py [--epochs 5] [--samples 1000] [--weights FILE]
                                      [--out first_layer_filters.png]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from npcnn.gradcheck import seed_model
from npcnn.utils import pyplot, set_random_seed


def to_tiles(kernel):
    """(KH, KW, C, F) -> (F, KH, KW, C) with each filter min-max scaled to [0, 1]; C=1 is repeated as grey."""
    k = np.moveaxis(np.asarray(kernel, dtype=np.float64), -1, 0)
    lo = k.min(axis=(1, 2, 3), keepdims=True)
    hi = k.max(axis=(1, 2, 3), keepdims=True)
    k = (k - lo) / np.where(hi > lo, hi - lo, 1.0)
    if k.shape[-1] == 1:
        k = np.repeat(k, 3, axis=-1)
    return k[..., :3]


def draw(plt, panels, path):
    """panels: list of (title, kernel). Rows of filter tiles per panel, a title line above each."""
    n = max(kernel.shape[-1] for _, kernel in panels)
    cols = min(n, 16)
    rows_per = -(-n // cols)
    rows = rows_per * len(panels)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.6, rows * 0.75 + 0.3), squeeze=False,
                             gridspec_kw=dict(hspace=0.9, wspace=0.15, top=1 - 0.35 / rows, bottom=0.02,
                                              left=0.02, right=0.98))
    for ax in axes.ravel():
        ax.axis("off")
    for p, (title, kernel) in enumerate(panels):
        for f, tile in enumerate(to_tiles(kernel)):
            axes[p * rows_per + f // cols, f % cols].imshow(tile, interpolation="nearest")
        ax0 = axes[p * rows_per, 0]
        ax0.text(0, 1.25, title, transform=ax0.transAxes, fontsize=9, va="bottom", ha="left")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--samples", type=int, default=1000, help="training images from the bundled sample")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default=None, help="plot these weights (save_weights .npz or a checkpoint)")
    p.add_argument("--out", default="first_layer_filters.png")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    set_random_seed(args.seed)
    model = seed_model((32, 32, 3), (32, 64, 64), 64, 10)
    first = next(layer for layer in model.layers if "kernel" in layer.params and layer.params["kernel"].ndim == 4)
    before = first.params["kernel"].copy()
    if args.weights:
        try:
            model.load_weights(args.weights)
            label = f"loaded from {os.path.basename(args.weights)}"
        except ValueError:  # not a save_weights file: try a training checkpoint
            from npcnn.checkpoint import restore_checkpoint

            restore_checkpoint(args.weights, model, restore_rng=False)
            label = f"checkpoint {os.path.basename(args.weights)}"
    else:
        from npcnn.datasets import cifar10

        (x, y), _ = cifar10.load_sample()
        x, y = x[:args.samples] / np.float32(255), y[:args.samples]
        history = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=2)
        label = f"after {args.epochs} epochs on {len(x)} images (accuracy {history.history['accuracy'][-1]:.2f})"
    after = first.params["kernel"]

    def mean_norm(k):
        return np.linalg.norm(k.reshape(-1, k.shape[-1]), axis=0).mean()

    print(f"{first.name}: kernel {after.shape}; mean filter norm {mean_norm(before):.3f} at initialisation, "
          f"{mean_norm(after):.3f} {label}")

    plt = pyplot()
    if plt is None:
        return 0
    draw(plt, [("at initialisation (glorot_uniform)", before), (label, after),
               ("the change: after - before (each filter rescaled)", after - before)], args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
