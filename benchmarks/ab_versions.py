"""Same-process A/B of two versions of npcnn: the seed model's training step and inference.

``--model deep`` times ``npcnn.models.cifar10_deep`` instead (training steps at batch 64 and 128 with its
augmentation layers, as the example trains it, and inference at batch 256).

The other version (a git revision of this repository, or a checkout folder) is copied to a temporary
folder with its package renamed ``npcnn_old`` (imports rewritten), so both load in one process and
the two are timed round by round, alternating which goes first: machine noise hits both alike.
Medians of wall time and process CPU time per call, and their ratios (new / old).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ab_versions.py --old c936187 \\
        --rounds 20 --threads 2

The old version's Numba kernels compile on their first call (its cache lands in the temporary copy).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _copy_old(old, dest):
    """The old npcnn package as ``dest/npcnn_old`` (a git revision of this repository or a checkout)."""
    pkg = dest / "npcnn_old"
    if Path(old).is_dir():
        shutil.copytree(Path(old) / "npcnn", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", old, "npcnn"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        (dest / "npcnn").rename(pkg)
    for path in pkg.rglob("*.py"):
        path.write_text(re.sub(r"\bnpcnn\b", "npcnn_old", path.read_text()))
    return pkg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="a git revision (e.g. c936187) or a checkout folder")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="seed", choices=("seed", "deep"))
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="npcnn-ab-"))
    try:
        _copy_old(args.old, tmp)
        sys.path.insert(0, str(tmp))
        import importlib

        from threadpoolctl import threadpool_info

        import npcnn
        import npcnn.models

        npcnn_old = importlib.import_module("npcnn_old")
        importlib.import_module("npcnn_old.models")

        for mod in (npcnn, npcnn_old):
            mod.set_num_threads(args.threads)
        rng = np.random.default_rng(0)
        x = rng.random((128, 32, 32, 3), dtype=np.float32)
        y = rng.integers(0, 10, 128)
        x256 = rng.random((256, 32, 32, 3), dtype=np.float32)
        small = 32 if args.model == "seed" else 64
        cases = {f"train b{small}": lambda m: m.train_on_batch(x[:small], y[:small]),
                 "train b128": lambda m: m.train_on_batch(x, y),
                 "predict b256": lambda m: m.predict(x256, batch_size=256, verbose=0)}
        # one model per case and version: a model alternating batch sizes would re-allocate its workspace
        # buffers at every call (they are sized for the last batch), which is not what training does
        models = {}

        def deep_adam(mod):  # plain Adam in both versions (AdamW is the default since 2026-12-02)
            takes_decay = "weight_decay" in inspect.signature(mod.models.cifar10_deep).parameters
            return mod.models.cifar10_deep(**({"weight_decay": None} if takes_decay else {}))

        for c in cases:
            for name, mod in (("old", npcnn_old), ("new", npcnn)):
                mod.set_random_seed(0)
                models[(c, name)] = mod.models.cifar10_cnn() if args.model == "seed" else deep_adam(mod)
        wall = {key: [] for key in models}
        cpu = {key: [] for key in models}
        for (c, _), m in models.items():  # warm up: JIT, buffers
            for _ in range(3):
                cases[c](m)
        for r in range(args.rounds):
            for c, fn in cases.items():
                for v in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    t, p0 = time.perf_counter(), time.process_time()
                    fn(models[(c, v)])
                    wall[(c, v)].append(time.perf_counter() - t)
                    cpu[(c, v)].append(time.process_time() - p0)
        blas = [(d.get("internal_api"), d.get("architecture"), d.get("num_threads"))
                for d in threadpool_info() if d.get("user_api") == "blas"]
        print(f"{args.model} model: old {args.old} vs this checkout; threads {args.threads}; rounds {args.rounds}; "
              f"blas {blas}; load {os.getloadavg()[0]:.2f}")
        print(f"{'case':<14} {'old ms':>8} {'new ms':>8} {'new/old':>8} {'old cpu':>8} {'new cpu':>8} {'new/old':>8}")
        for c in cases:
            o, n = (np.median(wall[(c, v)]) * 1e3 for v in ("old", "new"))
            oc, nc = (np.median(cpu[(c, v)]) * 1e3 for v in ("old", "new"))
            print(f"{c:<14} {o:8.2f} {n:8.2f} {n / o:8.3f} {oc:8.2f} {nc:8.2f} {nc / oc:8.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
