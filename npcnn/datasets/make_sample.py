"""Build ``cifar10_sample.npz``, the small real CIFAR-10 sample bundled with npcnn.

Usage::

    python -m npcnn.datasets.make_sample [CIFAR_DIR] [--train 1000] [--test 200] [--out PATH]

``CIFAR_DIR`` is anything :func:`npcnn.datasets.cifar10.load_data` accepts (default
``/tmp/cifar``). The sample is balanced: the first ``train/10`` training images of each
class (in file order) and the first ``test/10`` test images of each class, kept in
file order, stored as uint8 arrays with ``np.savez_compressed`` (no pickle).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from npcnn.datasets import cifar10


def balanced_first(y, per_class, classes=10):
    """Indices of the first ``per_class`` samples of each class, in their original order."""
    y = np.asarray(y).reshape(-1)
    idx = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(classes)])
    if len(idx) != per_class * classes:
        raise ValueError(f"not enough samples for {per_class} per class")
    return np.sort(idx)


def build(source, out=cifar10.SAMPLE_FILE, n_train=1000, n_test=200):
    (x_train, y_train), (x_test, y_test) = cifar10.load_data(source)
    tr = balanced_first(y_train, n_train // 10)
    te = balanced_first(y_test, n_test // 10)
    arrays = dict(x_train=x_train[tr], y_train=y_train[tr], x_test=x_test[te], y_test=y_test[te],
                  source_index_train=tr.astype(np.int32), source_index_test=te.astype(np.int32))
    from npcnn.utils import atomic_write

    with atomic_write(out) as f:
        np.savez_compressed(f, **arrays)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", nargs="?", default="/tmp/cifar")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--out", default=cifar10.SAMPLE_FILE)
    args = p.parse_args(argv)
    out = build(args.source, args.out, args.train, args.test)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
