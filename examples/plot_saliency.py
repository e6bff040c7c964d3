"""Saliency maps: |d loss / d input| for a few test images, from ``model.trace`` (PNG).

Trains the Keras CIFAR-10 tutorial model for a few steps on the CIFAR-10 sample bundled with npcnn
(offline, seconds; ``--weights FILE`` loads saved weights instead), runs ``model.trace(x, y)`` on a few test
images with their labels and reads the first layer's ``grad_input``: the gradient of the loss with respect
to every input pixel, the same backward pass training runs, carried one layer further down to the image.
The saliency of a pixel is the largest |gradient| over its three colour channels (Simonyan et al., 2014):
where a small change of the image would change the loss the most. Each image is drawn beside its map
(each map scaled to its own maximum; the loss is the batch mean, so every gradient carries a factor 1/N
that the scaling removes). A briefly trained model's maps are noisy; train longer for sharper ones.

It prints, per image, the label, the prediction and the gradient's norm, and writes the PNG to
``runs/saliency.png`` (``runs/`` is ignored by git) unless ``--out`` says otherwise, printing the path.
Needs matplotlib (``pip install -e .[plot]``); without it, it prints the numbers and skips the plot.

Run:  python examples/plot_saliency.py [--epochs 5] [--samples 1000] [--images 4] [--weights FILE]
                                       [--out runs/saliency.png]
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


def saliency(grad_input):
    """(N, H, W, C) input gradients -> (N, H, W) maps: max over channels of |gradient|."""
    return np.abs(grad_input).max(axis=-1)


def draw(plt, images, maps, titles, heading, path):
    """Two rows: the images, and under each its saliency map (scaled to its own maximum)."""
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.9), squeeze=False,
                             gridspec_kw=dict(hspace=0.35, wspace=0.1, top=0.8, bottom=0.02, left=0.02, right=0.98))
    for i in range(n):
        axes[0, i].imshow(images[i], interpolation="nearest")
        axes[0, i].set_title(titles[i], fontsize=8)
        axes[1, i].imshow(maps[i] / max(maps[i].max(), 1e-30), cmap="hot", vmin=0, vmax=1, interpolation="nearest")
        axes[1, i].set_title("|d loss / d pixel|", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(heading, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="training epochs on the bundled sample (default 5)")
    p.add_argument("--samples", type=int, default=1000, help="training images of the bundled sample (default 1000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default=None, help="load these weights (save_weights .npz) instead of training")
    p.add_argument("--images", type=int, default=4, help="how many test images, from --first (default 4)")
    p.add_argument("--first", type=int, default=0, help="index of the first test image (default 0)")
    p.add_argument("--out", default=os.path.join("runs", "saliency.png"), help="the PNG (default runs/saliency.png)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("epochs", "samples", "batch_size", "images"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")

    set_random_seed(args.seed)
    model, xt, yt, how = trained_model(args)
    if not 0 <= args.first or args.first + args.images > len(xt):
        p.error(f"--first and --images must pick images in [0, {len(xt)})")
    x, y = xt[args.first:args.first + args.images], yt[args.first:args.first + args.images]
    records = model.trace(x, y)                    # forward and backward, as a training step (no update)
    grad = records[0].grad_input                   # d loss / d input image, (N, 32, 32, 3)
    probs = records[-1].output
    maps = saliency(grad)
    names = cifar10.CLASS_NAMES
    titles = []
    print(f"{how}; saliency = max over channels of |d loss / d input| (the first layer's grad_input)")
    for i in range(len(x)):
        pred = int(probs[i].argmax())
        titles.append(f"{names[y[i]]}\npredicted {names[pred]} ({probs[i, pred]:.0%})")
        print(f"  image {args.first + i}: label {names[y[i]]:<10} predicted {names[pred]:<10} "
              f"p(label) {probs[i, y[i]]:.2f}  |d loss / d image| {np.linalg.norm(grad[i]):.3g}")

    plt = pyplot()
    if plt is None:
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    draw(plt, x, maps, titles, f"saliency maps: {how}", args.out)
    print(f"wrote {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
