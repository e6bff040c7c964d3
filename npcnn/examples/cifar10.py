"""The Keras CIFAR-10 tutorial program, on npcnn.

    python -m npcnn.examples.cifar10                    # 10 epochs, Adam, batch 32, as Keras
    python -m npcnn.examples.cifar10 --limit 2000 --epochs 2
    python -m npcnn.examples.cifar10 --checkpoint-dir runs/ckpt            # ... killed ...
    python -m npcnn.examples.cifar10 --checkpoint-dir runs/ckpt --resume   # same final weights

Same model as the Keras CIFAR-10 tutorial: three 3x3 Conv2D (32, 64, 64; ReLU) with 2x2
max-pooling after the first two, Dense(64, ReLU), Dense(10, softmax), optimizer 'adam', loss
'sparse_categorical_crossentropy' (npcnn fuses the final softmax with the cross-entropy, so the
gradient is (p - onehot)/N), 10 epochs of batch 32, validated on the test set after each epoch.
Ends with ``Test accuracy: 0.xxxx``; writes ``history.json`` (and ``history.png`` when
matplotlib is installed) to ``--output-dir``.

Data: ``npcnn.datasets.cifar10.load_data(--data-dir)`` (downloaded when absent). If there is no
local copy and the download fails, the run says so in one line and trains on the small real
sample bundled with npcnn (1,000 training / 200 test images), labelled as such.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np

CONFIG_KEYS = ("batch_size", "limit", "data")  # must match when resuming


def build_model():
    """The Keras tutorial's model, compiled as there ('adam', 'sparse_categorical_crossentropy', accuracy)."""
    from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
    from npcnn.models import Sequential

    model = Sequential(name="cifar10_cnn")
    model.add(Conv2D(32, (3, 3), activation="relu", input_shape=(32, 32, 3)))
    model.add(MaxPooling2D((2, 2)))
    model.add(Conv2D(64, (3, 3), activation="relu"))
    model.add(MaxPooling2D((2, 2)))
    model.add(Conv2D(64, (3, 3), activation="relu"))
    model.add(Flatten())
    model.add(Dense(64, activation="relu"))
    model.add(Dense(10, activation="softmax"))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def to_float32(x):
    """uint8 images -> float32 in [0, 1], with no float64 temporary (50000 images: 0.6 GB, not 1.2 GB)."""
    out = np.empty(x.shape, dtype=np.float32)
    np.divide(x, np.float32(255), out=out, dtype=np.float32)
    return out


def set_threads(n):
    """Limit npcnn's threads (Numba and BLAS) to ``n``."""
    import npcnn

    if hasattr(npcnn, "set_num_threads"):
        npcnn.set_num_threads(n)
        return
    from threadpoolctl import threadpool_limits

    set_threads._limits = threadpool_limits(n)  # keep the limit alive for the whole run
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def load(args):
    """(x_train, y_train), (x_test, y_test) as uint8, and what they are: 'cifar10' or 'sample'."""
    from npcnn.datasets import cifar10

    if args.sample:
        print("Using the bundled CIFAR-10 SAMPLE (--sample): 1,000 training and 200 test images.")
        return (*cifar10.load_sample(), "sample")
    try:
        return (*cifar10.load_data(args.data_dir), "cifar10")
    except cifar10.DataUnavailableError as e:
        print(f"OFFLINE: {e} Falling back to the bundled SAMPLE of CIFAR-10 (1,000 training / 200 test images); "
              "its results are not comparable to the full data set.")
        return (*cifar10.load_sample(), "sample")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m npcnn.examples.cifar10",
                                description="The Keras CIFAR-10 tutorial program on npcnn.\n\nExamples:\n"
                                + __doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="total number of epochs, counting those a resumed run "
                   "has done already (default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz "
                   "(default: $NPCNN_DATA_DIR, else the per-user cache; downloaded there when absent)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use only the first N training and the first N test images (quick runs)")
    p.add_argument("--threads", type=int, default=None, help="number of threads for the kernels and BLAS")
    p.add_argument("--seed", type=int, default=None, help="seed for weight initialisation and shuffling")
    p.add_argument("--save", default=None, metavar="PATH", help="write the final weights (.npz) there")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="save weights, optimizer and RNG state and history after every epoch (atomically)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="where history.json and history.png go (default: the checkpoint dir, else runs/cifar10)")
    p.add_argument("--sample", action="store_true", help="train on the bundled 1,000/200-image sample")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                   help="0 silent, 1 progress bar (one line per epoch when not a terminal; default), "
                   "2 one line per epoch")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "limit", "threads"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.seed is not None and args.seed < 0:
        p.error(f"--seed must be a non-negative integer, got {args.seed}")
    if args.resume and not args.checkpoint_dir:
        p.error("--resume needs --checkpoint-dir")
    return args


def main(argv=None):
    """Run the program; returns {'test_loss', 'test_accuracy', 'history', 'data', ...}.

    Raises:
        CheckpointError: --resume with a checkpoint from another model or other settings.
        npcnn.datasets.cifar10.CIFAR10FormatError: a local data file is corrupt.
    """
    import npcnn
    from npcnn.checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint, restore_checkpoint

    args = parse_args(argv)
    if args.threads:
        set_threads(args.threads)
    if args.seed is not None:
        npcnn.set_random_seed(args.seed)

    (x_train, y_train), (x_test, y_test), data = load(args)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
        x_test, y_test = x_test[:args.limit], y_test[:args.limit]
    # One at a time, each uint8 copy freed as soon as its float32 twin exists (peak < 1 GB on the full set).
    x_train = to_float32(x_train)
    x_test = to_float32(x_test)
    label = "the bundled SAMPLE" if data == "sample" else "CIFAR-10"
    print(f"{label}: {len(x_train)} training and {len(x_test)} test images")

    model = build_model()
    model.summary(batch_size=args.batch_size)

    config = {"batch_size": args.batch_size, "limit": args.limit, "data": data, "seed": args.seed}
    initial_epoch, history, ckpt = 0, {}, None
    if args.checkpoint_dir:
        ckpt = TrainingCheckpoint(args.checkpoint_dir, extra={"config": config})
        if args.resume and ckpt.exists():
            state = load_checkpoint(ckpt.path)
            saved = state.extra.get("config", {})
            diff = [f"{k}: checkpoint {saved.get(k)!r}, now {config[k]!r}" for k in CONFIG_KEYS
                    if saved.get(k) != config[k]]
            if diff:
                raise CheckpointError(f"{ckpt.path}: cannot resume with other settings ({'; '.join(diff)}); "
                                      "use the same flags or another --checkpoint-dir")
            restore_checkpoint(state, model)
            initial_epoch, history = state.epoch, state.history
            ckpt.history = {k: list(v) for k, v in history.items()}
            ckpt.extra["config"]["seed"] = saved.get("seed")
            print(f"Resuming from {ckpt.path}: {initial_epoch} epoch(s) done")
        elif args.resume:
            print(f"No checkpoint in {args.checkpoint_dir}; starting from scratch")

    started = time.perf_counter()
    if initial_epoch < args.epochs:
        model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=args.verbose,
                  validation_data=(x_test, y_test), callbacks=[ckpt] if ckpt else None,
                  initial_epoch=initial_epoch)
        if ckpt is not None:
            history = ckpt.history
        else:
            history = {k: list(v) for k, v in model.history.history.items()}
    else:
        print(f"All {args.epochs} epochs are done already (checkpoint at epoch {initial_epoch})")
    train_time = time.perf_counter() - started

    test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=args.batch_size,
                                         verbose=2 if args.verbose else 0)
    result = {"data": data, "test_loss": float(test_loss), "test_accuracy": float(test_acc),
              "history": history, "epochs": len(next(iter(history.values()), [])),
              "train_seconds_this_run": round(train_time, 3), "config": config,
              "n_train": len(x_train), "n_test": len(x_test)}

    output_dir = args.output_dir or args.checkpoint_dir or os.path.join("runs", "cifar10")
    write_history(result, output_dir)
    if args.save:
        model.save_weights(args.save)
        print(f"Saved weights to {args.save}")
    if data == "sample":
        print(f"(trained and tested on the bundled SAMPLE: {len(x_test)} test images; not the full CIFAR-10 "
              "test set)")
    print(f"Test accuracy: {test_acc:.4f}")
    sys.stdout.flush()
    return result


def write_history(result, output_dir):
    """history.json (always) and history.png (when matplotlib is installed), written atomically."""
    from npcnn.utils import atomic_write

    path = os.path.join(output_dir, "history.json")
    with atomic_write(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"Wrote {path}")
    from npcnn.utils import pyplot

    plt = pyplot()
    if plt is None:
        return
    hist = result["history"]
    if not hist:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-o"), ("val_" + metric, "--s")):
            if key in hist:
                ax.plot(range(1, len(hist[key]) + 1), hist[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    title = "npcnn, Keras CIFAR-10 program" + (" (bundled SAMPLE, not full CIFAR-10)" if result["data"] == "sample"
                                                else "")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    png = os.path.join(output_dir, "history.png")
    with atomic_write(png) as f:
        f.write(buf.getvalue())
    print(f"Wrote {png}")


def _cli():
    from npcnn.checkpoint import CheckpointError
    from npcnn.datasets.cifar10 import CIFAR10FormatError

    try:
        main()
    except (CheckpointError, CIFAR10FormatError, FileNotFoundError) as e:
        sys.exit(f"cifar10: error: {e}")
    except KeyboardInterrupt:
        sys.exit("cifar10: interrupted" + (" (resume with --resume)" if "--checkpoint-dir" in " ".join(sys.argv)
                                          else ""))


if __name__ == "__main__":
    _cli()
