"""The Keras CIFAR-10 tutorial program, on npcnn.

    python -m npcnn.examples.cifar10                    # 10 epochs, Adam, batch 32, as Keras
    python -m npcnn.examples.cifar10 --limit 2000 --epochs 2
    python -m npcnn.examples.cifar10 --checkpoint-dir runs/ckpt            # ... killed ...
    python -m npcnn.examples.cifar10 --checkpoint-dir runs/ckpt --resume   # same final weights
    python -m npcnn.examples.cifar10 --model deep       # the deeper model of issue 14: 30 epochs, batch 64
    mpiexec -n 2 python -m npcnn.examples.cifar10 --threads 1   # 2 processes (pip install -e ".[mpi]")

Same model as the Keras CIFAR-10 tutorial: three 3x3 Conv2D (32, 64, 64; ReLU) with 2x2
max-pooling after the first two, Dense(64, ReLU), Dense(10, softmax), optimizer 'adam', loss
'sparse_categorical_crossentropy' (npcnn fuses the final softmax with the cross-entropy, so the
gradient is (p - onehot)/N), 10 epochs of batch 32, validated on the test set after each epoch.
``--model deep`` trains :func:`npcnn.models.cifar10_deep` instead (augmentation, three blocks of two
'same' Conv2D + BatchNormalization + ReLU, max-pooling and dropout; 552,874 parameters; AdamW, its
learning rate decayed from 1e-3 to 0 along a cosine over the whole run, its decoupled weight decay
``--weight-decay`` 0.05, 0 for plain Adam), by default 30 epochs of batch 64.
Ends with ``Test accuracy: 0.xxxx``; writes ``history.json`` (and ``history.png`` when
matplotlib is installed) to ``--output-dir``.

Data: ``npcnn.datasets.cifar10.load_data(--data-dir)`` (downloaded when absent). If there is no
local copy and the download fails, the run says so in one line and trains on the small real
sample bundled with npcnn (1,000 training / 200 test images), labelled as such.

Nothing a mistake does loses work or ends in a traceback: every output path (``--checkpoint-dir``,
``--output-dir``, ``--save``) is checked before the first step; an existing checkpoint is never
overwritten without ``--resume`` (continue it) or ``--overwrite`` (start over); the final weights
are written before the optional files; a file-system error is one line ``cifar10: error: ...``
(exit status 1); Ctrl-C is one line ``cifar10: interrupted after epoch N; continue with --resume``
(exit status 130), the last checkpoint intact. The checkpoint records the seed, thread count and
backend: resuming with another seed is refused, with another thread count or backend warned about
(the result is then not bit-identical to an uninterrupted run).

Under MPI (``mpiexec -n K``, see :mod:`npcnn.distributed`) every process loads the data and trains on its
slice of each batch; rank 0 alone prints, writes the checkpoint, history and weights. ``--threads``
defaults to the machine's cores divided by the processes on it. A checkpoint written by K processes
resumes with K processes only (another K sums the gradients in another order). An error on one rank
ends the whole job (``MPI_Abort``) with its message.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

CONFIG_KEYS = ("model", "batch_size", "limit", "data", "schedule")  # must match when resuming
LEGACY_CONFIG = {"model": "seed"}  # what a checkpoint written before --model existed holds
MODELS = {"seed": {"epochs": 10, "batch_size": 32, "weight_decay": None},  # --model's defaults
          "deep": {"epochs": 30, "batch_size": 64, "weight_decay": 0.05}}
RUNTIME_KEYS = ("threads", "backend", "data_parallel", "fuse")  # warned about when they differ on resume
# and refused when it differs (MPI processes); absent in checkpoints from before MPI: 1
CHECKPOINT_NAME = "checkpoint.npz"


class RunError(ValueError):
    """A problem with the command line's paths or settings, found before (or instead of) training."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: ``epochs_done`` epochs are safely finished (in the checkpoint, when there is one)."""

    def __init__(self, epochs_done, checkpoint_dir):
        super().__init__(epochs_done, checkpoint_dir)
        self.epochs_done, self.checkpoint_dir = epochs_done, checkpoint_dir

    def __str__(self):
        done = f"after epoch {self.epochs_done}" if self.epochs_done else "before the first epoch ended"
        if not self.checkpoint_dir:
            return f"interrupted {done} (no --checkpoint-dir: nothing to resume from)"
        if not self.epochs_done:
            return f"interrupted {done}; no checkpoint was written yet"
        return f"interrupted {done}; continue with --resume"


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


def build_deep_model(decay_steps, weight_decay):
    """:func:`npcnn.models.cifar10_deep`, its cosine learning-rate decay reaching 0 after ``decay_steps`` updates
    (AdamW with that decoupled ``weight_decay`` when it is positive, plain Adam when it is 0 or None)."""
    from npcnn.models import cifar10_deep

    return cifar10_deep(decay_steps=decay_steps, weight_decay=weight_decay)


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
    p.add_argument("--model", default="seed", choices=tuple(MODELS),
                   help="seed: the Keras tutorial's CNN (default); deep: npcnn.models.cifar10_deep "
                   "(BatchNormalization, dropout, augmentation; AdamW with a cosine decay over the whole run)")
    p.add_argument("--epochs", type=int, default=None, help="total number of epochs, counting those a resumed run "
                   "has done already (default 10; 30 with --model deep, whose learning-rate schedule spans them)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32; 64 with --model deep")
    p.add_argument("--weight-decay", type=float, default=None, metavar="WD",
                   help="--model deep only: AdamW's decoupled weight decay (each update first does "
                   "w -= lr * WD * w; default 0.05); 0: plain Adam, the recipe before 2026-12-02")
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz "
                   "(default: $NPCNN_DATA_DIR, else the per-user cache; downloaded there when absent)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use only the first N training and the first N test images (quick runs)")
    p.add_argument("--threads", type=int, default=None, help="number of threads for the kernels and BLAS")
    p.add_argument("--seed", type=int, default=None, help="seed for weight initialisation and shuffling")
    p.add_argument("--save", default=None, metavar="PATH", help="write the final weights (.npz) there")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="save weights, optimizer and RNG state and history after every epoch (atomically)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    start.add_argument("--overwrite", action="store_true",
                       help="start over, replacing the checkpoint in --checkpoint-dir (without --resume or "
                       "--overwrite an existing checkpoint is an error)")
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
    if args.threads is not None:
        from npcnn.threads import max_threads

        if args.threads > max_threads():
            p.error(f"--threads must be between 1 and {max_threads()} (the cores Numba can use), got {args.threads}")
    if args.seed is not None and args.seed < 0:
        p.error(f"--seed must be a non-negative integer, got {args.seed}")
    if args.weight_decay is not None:
        if args.model != "deep":
            p.error("--weight-decay applies to --model deep only (the seed model is the tutorial's: Adam)")
        if not (args.weight_decay >= 0 and math.isfinite(args.weight_decay)):
            p.error(f"--weight-decay must be a non-negative number, got {args.weight_decay}")
    if (args.resume or args.overwrite) and not args.checkpoint_dir:
        p.error(f"--{'resume' if args.resume else 'overwrite'} needs --checkpoint-dir")
    for name, value in MODELS[args.model].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def output_dir(args):
    return args.output_dir or args.checkpoint_dir or os.path.join("runs", "cifar10")


def check_outputs(args):
    """Check every output path before anything runs (creating the folders), or raise :class:`RunError`.

    The checkpoint folder, the output folder (history.json, history.png) and ``--save``'s folder must be
    folders we can write to; ``checkpoint.npz`` must be a file if it exists, and an existing one needs
    ``--resume`` or ``--overwrite``; ``--save`` must not be a folder.
    """
    if args.checkpoint_dir:
        _writable_dir(args.checkpoint_dir, "--checkpoint-dir")
        ck = os.path.join(args.checkpoint_dir, CHECKPOINT_NAME)
        if os.path.lexists(ck) and not os.path.isfile(ck):
            raise RunError(f"{ck} is not a checkpoint file (it is a directory or something else): "
                           "move it away or choose another --checkpoint-dir")
        if os.path.isfile(ck) and not (args.resume or args.overwrite):
            raise RunError(f"{ck} already holds a checkpoint: continue that run with --resume, "
                           "or start over with --overwrite")
    out = output_dir(args)
    _writable_dir(out, "--output-dir")
    for name in ("history.json", "history.png"):
        path = os.path.join(out, name)
        if os.path.isdir(path):
            raise RunError(f"--output-dir {out}: {path} is a directory; move it away or choose another --output-dir")
    if args.save:
        if os.path.isdir(args.save):
            raise RunError(f"--save {args.save}: is a directory; give a file name, e.g. "
                           f"{os.path.join(args.save, 'weights.npz')}")
        _writable_dir(os.path.dirname(os.path.abspath(args.save)), "--save")


def _writable_dir(path, flag):
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"{flag} {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise RunError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None


def _write(path, what, fn):
    """Run ``fn()`` (which writes ``path``); an OSError becomes a :class:`RunError` naming the path."""
    try:
        return fn()
    except OSError as e:
        raise RunError(f"cannot write {what} to {path}: {e.strerror or e}") from None


def runtime_settings():
    """What changes the float32 results without changing the model: threads, backend, data parallelism, fusion."""
    import npcnn
    from npcnn import distributed

    world = distributed.world()
    settings = {"threads": npcnn.get_num_threads(), "backend": npcnn.get_backend(),
                "processes": world.size if world.active else 1}
    if hasattr(npcnn, "get_data_parallel"):
        settings["data_parallel"] = bool(npcnn.get_data_parallel())
    try:
        from npcnn import plan

        settings["fuse"] = bool(plan.FUSE)
    except (ImportError, AttributeError):
        pass
    return settings


def _interrupt_in(exc):
    """Whether ``exc`` is, or was caused while handling, a KeyboardInterrupt (Numba can turn a Ctrl-C
    inside a kernel into ``SystemError: ... returned a result with an exception set``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def epoch_counter(progress):
    """A callback that keeps ``progress['epochs_done']`` (npcnn is imported only when a run starts)."""
    from npcnn.callbacks import Callback

    class EpochCounter(Callback):
        def on_epoch_end(self, epoch, logs=None):
            progress["epochs_done"] = epoch + 1

    return EpochCounter()


def main(argv=None):
    """Run the program; returns {'test_loss', 'test_accuracy', 'history', 'data', ...}.

    Raises:
        RunError: an output path cannot be written, or an existing checkpoint without --resume/--overwrite.
        CheckpointError: --resume with a checkpoint from another model or other settings (seed included).
        npcnn.datasets.cifar10.CIFAR10FormatError: a local data file is corrupt.
        Interrupted: Ctrl-C (a KeyboardInterrupt), with the number of epochs safely done.
    """
    args = parse_args(argv)
    progress = {"epochs_done": 0, "checkpoint": None}
    try:
        return _run(args, progress)
    except BaseException as e:
        if isinstance(e, Interrupted) or not _interrupt_in(e):
            raise
        raise Interrupted(_epochs_done(progress), args.checkpoint_dir) from None


def _epochs_done(progress):
    """Epochs safely finished: the checkpoint's own count when there is one (the interrupt may have come
    between its rename and anything after it), else the epochs counted in this process."""
    ckpt = progress["checkpoint"]
    if ckpt is not None and os.path.isfile(ckpt.path):  # this run's (an --overwrite removed the old one)
        from npcnn.checkpoint import load_checkpoint

        try:
            return load_checkpoint(ckpt.path).epoch
        except (OSError, ValueError):
            pass
    return progress["epochs_done"]


def _run(args, progress):
    import npcnn
    from npcnn import distributed
    from npcnn.checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint, restore_checkpoint

    world = distributed.world()
    distributed.root_first(lambda: check_outputs(args))  # rank 0 writes the files
    threads = args.threads
    if threads is None and world.active:  # share this machine's cores among its processes
        from npcnn.threads import max_threads

        threads = max(1, max_threads() // distributed.local_size())
    if threads:
        set_threads(threads)
    if world.active:
        import npcnn.threads

        print(f"MPI: {world.size} processes x {npcnn.threads.get_num_threads()} thread(s); each batch of "
              f"{args.batch_size} is split across the processes; rank 0 prints and writes")
    if args.seed is not None:
        npcnn.set_random_seed(args.seed)

    state = None
    if args.checkpoint_dir and args.resume:
        path = os.path.join(args.checkpoint_dir, CHECKPOINT_NAME)

        def read():  # rank 0 reads the checkpoint; every rank gets it
            return load_checkpoint(path) if os.path.isfile(path) else None

        state = distributed.root_first(read)
        if state is not None:
            progress["epochs_done"] = state.epoch
        else:
            print(f"No checkpoint in {args.checkpoint_dir}; starting from scratch")

    if world.active and not world.is_root:
        world.barrier()  # rank 0 downloads (and verifies) the data first, the others then read it
    (x_train, y_train), (x_test, y_test), data = load(args)
    if world.active and world.is_root:
        world.barrier()
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
        x_test, y_test = x_test[:args.limit], y_test[:args.limit]
    # One at a time, each uint8 copy freed as soon as its float32 twin exists (peak < 1 GB on the full set).
    x_train = to_float32(x_train)
    x_test = to_float32(x_test)
    label = "the bundled SAMPLE" if data == "sample" else "CIFAR-10"
    print(f"{label}: {len(x_train)} training and {len(x_test)} test images")

    schedule = None
    if args.model == "deep":
        decay_steps = args.epochs * -(-len(x_train) // args.batch_size)  # the whole run's updates
        decay = f"cosine decay from 1e-3 to 0 over {decay_steps} updates"
        optimizer = f"AdamW (weight decay {args.weight_decay:g})" if args.weight_decay else "Adam"
        # the config's schedule names AdamW's decay too, so a resumed run must use the same (a checkpoint
        # of the plain-Adam recipe, from before AdamW was the default, resumes with --weight-decay 0)
        schedule = f"{optimizer}, {decay}" if args.weight_decay else decay
        model = build_deep_model(decay_steps, args.weight_decay)
        print(f"Model: cifar10_deep, {optimizer} with a {decay} ({args.epochs} epochs of batch {args.batch_size})")
    else:
        model = build_model()
    model.summary(batch_size=args.batch_size)

    config = {"model": args.model, "batch_size": args.batch_size, "limit": args.limit, "data": data,
              "schedule": schedule, "seed": args.seed}
    runtime = runtime_settings()
    initial_epoch, history, ckpt = 0, {}, None
    if args.checkpoint_dir:
        ckpt = TrainingCheckpoint(args.checkpoint_dir, extra={"config": config, "runtime": runtime})
        if state is not None:
            saved = state.extra.get("config", {})
            diff = [f"{k}: checkpoint {saved.get(k, LEGACY_CONFIG.get(k))!r}, now {config[k]!r}" for k in CONFIG_KEYS
                    if saved.get(k, LEGACY_CONFIG.get(k)) != config[k]]
            seed_differs = args.seed is not None and saved.get("seed") != args.seed
            if seed_differs:
                diff.append(f"seed: checkpoint {saved.get('seed')!r}, now {args.seed!r}")
            saved_k = (state.extra.get("runtime") or {}).get("processes", 1)
            if saved_k != runtime["processes"]:
                raise CheckpointError(
                    f"{ckpt.path}: this checkpoint was written by a run of {saved_k} MPI process(es), this run has "
                    f"{runtime['processes']}: resume it with the same number (mpiexec -n {saved_k} ...), since "
                    "another number sums the gradients in another order and would not continue the run exactly; "
                    "or start a new run in another --checkpoint-dir")
            if diff:
                raise CheckpointError(f"{ckpt.path}: cannot resume with other settings ({'; '.join(diff)}); "
                                      f"use the same flags{' (or leave --seed out)' if seed_differs else ''} "
                                      "or another --checkpoint-dir")
            _warn_runtime(state.extra.get("runtime") or {}, runtime)
            restore_checkpoint(state, model)
            initial_epoch, history = state.epoch, state.history
            ckpt.history = {k: list(v) for k, v in history.items()}
            ckpt.extra["config"]["seed"] = saved.get("seed")
            print(f"Resuming from {ckpt.path}: {initial_epoch} epoch(s) done")
        elif args.overwrite and distributed.writes_here() and os.path.isfile(ckpt.path):
            os.remove(ckpt.path)  # start over: a later --resume must not find the old run
            print(f"--overwrite: removed the checkpoint in {args.checkpoint_dir}; starting from scratch")
        progress["checkpoint"] = ckpt

    started = time.perf_counter()
    if initial_epoch < args.epochs:
        callbacks = ([ckpt] if ckpt else []) + [epoch_counter(progress)]
        model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=args.verbose,
                  validation_data=(x_test, y_test), callbacks=callbacks, initial_epoch=initial_epoch)
        if ckpt is not None:
            history = ckpt.history
        else:
            history = {k: list(v) for k, v in model.history.history.items()}
    else:
        print(f"All {args.epochs} epochs are done already (checkpoint at epoch {initial_epoch})")
    train_time = time.perf_counter() - started

    test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=args.batch_size,
                                         verbose=2 if args.verbose else 0)
    result = {"model": args.model, "data": data, "test_loss": float(test_loss), "test_accuracy": float(test_acc),
              "history": history, "epochs": len(next(iter(history.values()), [])),
              "train_seconds_this_run": round(train_time, 3), "config": config, "runtime": runtime,
              "n_train": len(x_train), "n_test": len(x_test)}

    if world.active and not world.is_root:
        return result  # rank 0 writes the files
    if args.save:  # the weights first: everything after this is optional
        _write(args.save, "the weights", lambda: model.save_weights(args.save))
        print(f"Saved weights to {args.save}")
    write_history(result, output_dir(args))
    if data == "sample":
        print(f"(trained and tested on the bundled SAMPLE: {len(x_test)} test images; not the full CIFAR-10 "
              "test set)")
    print(f"Test accuracy: {test_acc:.4f}")
    sys.stdout.flush()
    return result


def _warn_runtime(saved, now):
    """One warning line when threads / backend / data parallelism / fusion differ from the checkpoint's."""
    diff = [f"{k}={now[k]!r} (checkpoint: {saved[k]!r})" for k in RUNTIME_KEYS
            if k in saved and k in now and saved[k] != now[k]]
    if diff:
        print(f"cifar10: warning: resuming with {', '.join(diff)}: the result will not be bit-identical to an "
              "uninterrupted run (another thread count or backend sums float32 values in another order)",
              file=sys.stderr)


def write_history(result, output_dir):
    """history.json (always) and history.png (when matplotlib is installed), written atomically."""
    from npcnn.utils import atomic_write

    path = os.path.join(output_dir, "history.json")

    def write_json():
        with atomic_write(path, "w") as f:
            json.dump(result, f, indent=2)

    _write(path, "the history", write_json)
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
    title = "npcnn, deep CIFAR-10 model" if result.get("model") == "deep" else "npcnn, Keras CIFAR-10 program"
    title += " (bundled SAMPLE, not full CIFAR-10)" if result["data"] == "sample" else ""
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    png = os.path.join(output_dir, "history.png")

    def write_png():
        with atomic_write(png) as f:
            f.write(buf.getvalue())

    _write(png, "the plot", write_png)
    print(f"Wrote {png}")


def _cli(argv=None, hard_exit=False):
    """The command: one line on stderr and exit status 1 for an error, 130 for Ctrl-C; never a traceback
    for those. With ``hard_exit`` (the real command) an interrupted run leaves at once (``os._exit``, after
    flushing): no finalizer or thread join half-done by the interrupt can print or wait after that line."""
    import signal

    from npcnn import distributed

    try:
        world = distributed.world()
    except distributed.DistributedError as e:  # under mpiexec without mpi4py
        sys.stderr.write(f"cifar10: error: {e}\n")
        sys.exit(1)
    quiet = None
    if world.active and not world.is_root:  # rank 0 prints; the others only their own errors
        quiet = sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the whole process)
    error = None

    def fail(message, status=1):
        if status == 130 and sys.stderr.isatty():
            sys.stderr.write("\n")  # after a live progress bar
        collective = bool(getattr(error, "collective", False))  # raised on every rank alike
        if not world.active or world.is_root or not collective:
            rank = f"rank {world.rank} of {world.size}: " if world.active and not world.is_root else ""
            sys.stderr.write(f"cifar10: {rank}{message}\n")
        sys.stderr.flush()
        if world.active and not collective:
            world.abort(status)  # the other ranks may be waiting for this one: end them all, now
        if status == 130 and hard_exit:
            sys.stdout.flush()
            os._exit(status)
        sys.exit(status)

    from npcnn.checkpoint import CheckpointError
    from npcnn.datasets.cifar10 import CIFAR10FormatError

    try:
        main(argv)
    except Interrupted as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not print a traceback either
        fail(str(e), 130)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fail("interrupted", 130)
    except (RunError, CheckpointError, CIFAR10FormatError, distributed.DistributedError) as e:
        error = e
        fail(f"error: {e}")
    except OSError as e:  # read-only, disk full, a directory where a file should be, ...
        error = e
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        fail(f"error: {where}{e.strerror or e}")
    finally:
        if quiet is not None:
            sys.stdout = sys.__stdout__


if __name__ == "__main__":
    _cli(hard_exit=True)
