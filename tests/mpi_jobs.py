"""Jobs that tests/test_mpi.py runs under ``mpiexec -n K python tests/mpi_jobs.py JOB OUT [options]``.

Each job writes what the test compares into files named ``OUT.<rank>of<size>.npz`` (or prints it); it
also runs without mpiexec (a world of one), which gives the 1-process reference.

    steps      train the seed model (or ``--model deep``) for ``--steps`` batches of 32 sample images
    infer      evaluate and predict the seed model on 100 sample images
    raise      train; rank ``--rank`` raises ValueError in its third step
    kill       train; rank ``--rank`` kills itself (SIGKILL) in its third step
    hang       train; rank ``--rank`` sleeps for 120 s in its third step (run with NPCNN_MPI_TIMEOUT)
    drift      train; rank ``--rank`` changes a weight after its second step (the epoch check must see it)
    baddata    rank ``--rank`` holds other labels than the others
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import numpy as np


def sample(n):
    from npcnn.datasets import cifar10

    (x, y), _ = cifar10.load_sample()
    if n > len(x):
        raise SystemExit(f"mpi_jobs: the sample has only {len(x)} images")
    return (x[:n] / np.float32(255)).astype(np.float32), y[:n].astype(np.int64)


def model_for(name):
    from npcnn.models import cifar10_cnn, cifar10_deep

    return cifar10_deep() if name == "deep" else cifar10_cnn()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("job")
    p.add_argument("out")
    p.add_argument("--model", default="seed")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--sgd", action="store_true", help="plain SGD (lr 0.1): the step is proportional to the gradient")
    args = p.parse_args(argv)

    import npcnn
    from npcnn import distributed
    from npcnn.callbacks import Callback

    npcnn.set_num_threads(args.threads)
    npcnn.set_random_seed(0)
    world = distributed.world()
    me = world.rank
    path = f"{args.out}.{me}of{world.size}.npz"
    model = model_for(args.model)
    if args.sgd:
        from npcnn.optimizers import SGD

        model.compile(optimizer=SGD(learning_rate=0.1), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])

    if args.job == "infer":
        x, y = sample(100)
        model.fit(*sample(64), batch_size=32, epochs=1, verbose=0)
        loss, acc = model.evaluate(x, y, batch_size=16, verbose=0)
        probs = model.predict(x, batch_size=16)
        np.savez(path, loss=loss, acc=acc, probs=probs, stats=[world.stats["reduce_calls"]])
        return

    x, y = sample(32 * args.steps)
    callbacks = []

    class Fault(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if me != args.rank or batch != 2:
                return
            if args.job == "raise":
                raise ValueError(f"job 'raise': rank {me} fails on purpose in batch {batch + 1}")
            if args.job == "kill":
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            if args.job == "hang":
                import time

                time.sleep(120)

        def on_train_batch_end(self, batch, logs=None):
            if args.job == "drift" and me == args.rank and batch == 1:
                layer = self.model.layers[0]
                layer.params["kernel"][0, 0, 0, 0] += 1e-3

    if args.job in ("raise", "kill", "drift", "hang"):
        callbacks.append(Fault())
    if args.job == "baddata" and me == args.rank:
        y = (y + 1) % 10
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=True, callbacks=callbacks)
    np.savez(path, *model.get_weights(), stats=[world.stats["grad_allreduce_calls"], world.stats["reduce_calls"]])


if __name__ == "__main__":
    main()
