"""Each layer's activations (feature maps) for one test image, from ``model.trace`` (PNG).

Trains the Keras CIFAR-10 tutorial model for a few steps on the CIFAR-10 sample bundled with npcnn
(offline, seconds; ``--weights FILE`` loads saved weights instead, e.g. from ``plot_filters.py`` or
``python -m npcnn.examples.cifar10 --save``), runs ``model.trace`` on one test image and draws, one row per
layer, the image, then every convolution and pooling output as a grid of its channels (each channel a
grey image, scaled on its own: white is its largest value) and the Flatten and Dense outputs as bars.
Rows show what a learner expects to see: the first convolution responds to edges and colours, pooling
halves the maps, deeper maps are smaller and more abstract, and after each ReLU some channels are entirely
0 (the "zeros" in each title: dead or inactive units for this image).

It prints one line per layer (output shape, mean, fraction of zeros) and writes the PNG to
``runs/feature_maps.png`` (``runs/`` is ignored by git) unless ``--out`` says otherwise, printing the
path. Needs matplotlib (``pip install -e .[plot]``); without it, it prints the numbers and skips the plot.

Run:  python examples/plot_feature_maps.py [--epochs 5] [--samples 1000] [--index 0] [--max-maps 16]
                                           [--weights FILE] [--out runs/feature_maps.png]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from npcnn.datasets import cifar10
from npcnn.gradcheck import seed_model
from npcnn.utils import pyplot, set_random_seed


def trained_model(args):
    """The tutorial model, trained briefly on the bundled sample (or loaded from --weights), and the test set."""
    (x, y), (xt, yt) = cifar10.load_sample()
    model = seed_model((32, 32, 3), (32, 64, 64), 64, 10)
    if args.weights:
        model.load_weights(args.weights)
        how = f"weights loaded from {os.path.basename(args.weights)}"
    else:
        x, y = x[:args.samples] / np.float32(255), y[:args.samples]
        h = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
        how = (f"trained {args.epochs} epoch(s) on {len(x)} sample images "
               f"(training accuracy {h.history['accuracy'][-1]:.2f})")
    return model, xt / np.float32(255), yt.reshape(-1), how


def draw(plt, image, records, title, max_maps, path, class_names=()):
    """One row per layer: the input image, then each layer's channels (4-D outputs) or bars (2-D outputs)."""
    cols = max(max_maps, 1)
    rows = 1 + len(records)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 1.15 + 0.4), squeeze=False,
                             gridspec_kw=dict(hspace=0.75, wspace=0.08, left=0.01, right=0.99, top=1 - 0.45 / rows,
                                              bottom=0.02))
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(image, interpolation="nearest")
    axes[0, 0].text(0, 1.15, title, transform=axes[0, 0].transAxes, fontsize=9, va="bottom", ha="left")
    for r, rec in enumerate(records, start=1):
        out = rec.output[0]
        label = (f"{rec.name} ({rec.type}) {rec.output_shape}, zeros {rec.zero_fraction:.0%}"
                 + (f": {min(out.shape[-1], cols)} of {out.shape[-1]} channels" if out.ndim == 3 else ""))
        if out.ndim == 3:                                           # (H, W, C): one grey image per channel
            for c in range(min(out.shape[-1], cols)):
                m = out[:, :, c]
                axes[r, c].imshow(m, cmap="gray", vmin=min(m.min(), 0), vmax=max(m.max(), 1e-12),
                                  interpolation="nearest")
        else:                                                       # (D,): the activations as bars
            ax = fig.add_subplot(axes[r, 0].get_gridspec()[r, :])
            ax.bar(np.arange(out.size), out, width=1.0, color="tab:blue")
            ax.set_xlim(-0.5, out.size - 0.5)
            ax.tick_params(labelsize=6)
            ax.set_yticks([])
            if rec is records[-1] and out.size == len(class_names):   # the softmax: one bar per class
                ax.set_xticks(np.arange(out.size))
                ax.set_xticklabels(class_names, fontsize=7)
        axes[r, 0].text(0, 1.12, label, transform=axes[r, 0].transAxes, fontsize=8, va="bottom", ha="left")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="training epochs on the bundled sample (default 5)")
    p.add_argument("--samples", type=int, default=1000, help="training images of the bundled sample (default 1000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default=None, help="load these weights (save_weights .npz) instead of training")
    p.add_argument("--index", type=int, default=0, help="which test image of the sample (default 0)")
    p.add_argument("--max-maps", type=int, default=16, help="channels drawn per layer (default 16)")
    p.add_argument("--out", default=os.path.join("runs", "feature_maps.png"),
                   help="the PNG (default runs/feature_maps.png)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("epochs", "samples", "batch_size", "max_maps"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")

    set_random_seed(args.seed)
    model, xt, yt, how = trained_model(args)
    if not 0 <= args.index < len(xt):
        p.error(f"--index must be in [0, {len(xt)}), got {args.index}")
    image = xt[args.index:args.index + 1]
    records = model.trace(image)                 # forward only: every layer's output for this image
    probs = records[-1].output[0]
    names = cifar10.CLASS_NAMES
    title = (f"test image {args.index} (label: {names[yt[args.index]]}), predicted {names[int(probs.argmax())]} "
             f"({probs.max():.0%}); {how}")
    print(title)
    for rec in records:
        print(f"  {rec.name + ' (' + rec.type + ')':<30} {str(rec.output_shape):<18} mean {rec.output.mean():8.4f}  "
              f"zeros {rec.zero_fraction:6.1%}")

    plt = pyplot()
    if plt is None:
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    draw(plt, image[0], records, title, args.max_maps, args.out, names)
    print(f"wrote {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
