"""The first Conv2D layer's filters, drawn as small RGB images (PNG).

Each 3x3x3 kernel of the first layer is shown as a 3x3 colour patch (every filter scaled to [0, 1] on
its own): at initialisation, after training, and the change training made (after - before), so one
can see them move from random noise towards colour and edge detectors. By default it trains the
tutorial model briefly on the CIFAR-10 sample bundled with npcnn and saves the initial and the trained
weights (``--save-dir``, default ``runs/plot_filters/``). ``--weights FILE`` plots saved weights instead
(``model.save_weights`` .npz, or a training checkpoint); the "before" and "change" panels then need the
same run's initial weights, ``--initial FILE`` (without it only the file's filters are drawn: a fresh
initialisation would not be the one that run started from). Filters are learned slowly on 1,000
images: train longer (or on the full data with ``python -m npcnn.examples.cifar10``) for clearer ones.
The PNG goes to ``runs/`` (ignored by git) unless ``--out`` says otherwise; the script prints the path.

Needs matplotlib (``pip install -e .[plot]``); without it, it prints the filter norms and skips the plot.

Run:  python examples/plot_filters.py [--epochs 5] [--samples 1000] [--save-dir runs/plot_filters]
      python examples/plot_filters.py --weights TRAINED.npz [--initial INITIAL.npz]
                                      [--out runs/first_layer_filters.png]
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


def load_into(model, path):
    """Load ``path`` (a save_weights .npz or a training checkpoint) into ``model``; returns a label for it."""
    try:
        model.load_weights(path)
        return f"loaded from {os.path.basename(path)}"
    except ValueError:  # not a save_weights file: try a training checkpoint
        from npcnn.checkpoint import restore_checkpoint

        restore_checkpoint(path, model, restore_rng=False)
        return f"checkpoint {os.path.basename(path)}"


def first_conv(model):
    return next(layer for layer in model.layers if "kernel" in layer.params and layer.params["kernel"].ndim == 4)


def mean_norm(k):
    """Mean over the filters of each filter's L2 norm; k: (KH, KW, C, F)."""
    return float(np.linalg.norm(k.reshape(-1, k.shape[-1]), axis=0).mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--samples", type=int, default=1000, help="training images from the bundled sample")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default=None,
                   help="plot these weights (save_weights .npz or a checkpoint) instead of training")
    p.add_argument("--initial", default=None,
                   help="with --weights: the same run's weights at initialisation, for the 'before' and the "
                        "'change' panels (training here saves them as SAVE_DIR/initial_weights.npz)")
    p.add_argument("--save-dir", default=os.path.join("runs", "plot_filters"),
                   help="when training: where the initial and the trained weights are saved "
                        "(default runs/plot_filters)")
    p.add_argument("--out", default=os.path.join("runs", "first_layer_filters.png"),
                   help="the PNG (default runs/first_layer_filters.png)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.initial and not args.weights:
        p.error("--initial goes with --weights (the trained weights to compare it with)")

    set_random_seed(args.seed)
    model = seed_model((32, 32, 3), (32, 64, 64), 64, 10)
    first = first_conv(model)
    before, before_label = None, None
    if args.weights:
        label = load_into(model, args.weights)
        if args.initial:
            start = seed_model((32, 32, 3), (32, 64, 64), 64, 10)
            before_label = "at initialisation: " + load_into(start, args.initial)
            before = first_conv(start).params["kernel"].copy()
    else:
        from npcnn.datasets import cifar10

        before = first.params["kernel"].copy()
        before_label = f"at initialisation (glorot_uniform, seed {args.seed})"
        os.makedirs(args.save_dir, exist_ok=True)
        initial_file = os.path.join(args.save_dir, "initial_weights.npz")
        trained_file = os.path.join(args.save_dir, "trained_weights.npz")
        model.save_weights(initial_file)
        (x, y), _ = cifar10.load_sample()
        x, y = x[:args.samples] / np.float32(255), y[:args.samples]
        history = model.fit(x, y, epochs=args.epochs, batch_size=args.batch_size, verbose=2)
        label = f"after {args.epochs} epochs on {len(x)} images (accuracy {history.history['accuracy'][-1]:.2f})"
        model.save_weights(trained_file)
        print(f"saved the initial weights to {os.path.abspath(initial_file)} and the trained ones to "
              f"{os.path.abspath(trained_file)}\n(replot: python examples/plot_filters.py --weights {trained_file} "
              f"--initial {initial_file})")
    after = first.params["kernel"]

    if before is None:
        print(f"{first.name}: kernel {after.shape}; mean filter norm {mean_norm(after):.3f} {label}")
        print("no --initial: plotting these filters only (the change needs the same run's initial weights)")
        panels = [(label, after)]
    else:
        print(f"{first.name}: kernel {after.shape}; mean filter norm {mean_norm(before):.3f} {before_label}, "
              f"{mean_norm(after):.3f} {label}; mean norm of the change {mean_norm(after - before):.3f}")
        panels = [(before_label, before), (label, after),
                  ("the change: after - before (each filter rescaled)", after - before)]

    plt = pyplot()
    if plt is None:
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    draw(plt, panels, args.out)
    print(f"wrote {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
