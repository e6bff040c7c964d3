"""JIT cost: time to the first training step in a fresh process, with a cold and a warm Numba cache.

Run::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/jit_cost.py

Each measurement is a new Python process that imports npcnn, builds the seed model and
trains one step (batch 32), then a second step. With an empty cache directory
(``NUMBA_CACHE_DIR`` pointed at a new temporary folder) the first step includes compiling
every kernel; the next process finds them in that cache (``cache=True``) and only loads them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {bench!r})
import npcnn
from common import batch, seed_model
t_import = time.perf_counter() - t0
npcnn.set_backend({backend!r})
model = seed_model()
x, y = batch(32)
t1 = time.perf_counter()
model._train_step(x, y)
t_first = time.perf_counter() - t1
t2 = time.perf_counter()
model._train_step(x, y)
t_second = time.perf_counter() - t2
print(json.dumps(dict(import_s=t_import, first_step_s=t_first, second_step_s=t_second,
                      to_first_step_s=time.perf_counter() - t0 - t_second)))
"""


def run(cache_dir, backend="numba"):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    code = CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), backend=backend)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    return result


def main():
    with tempfile.TemporaryDirectory(prefix="npcnn-numba-cache-") as cache:
        rows = [("numba, cold cache", run(cache)), ("numba, warm cache", run(cache)),
                ("numba, warm cache", run(cache)), ("numpy backend", run(cache, "numpy"))]
    print(f"{'process':<20}{'import s':>10}{'1st step s':>12}{'2nd step s':>12}{'to 1st step s':>15}{'process s':>11}")
    for name, r in rows:
        print(f"{name:<20}{r['import_s']:>10.2f}{r['first_step_s']:>12.2f}{r['second_step_s']:>12.3f}"
              f"{r['to_first_step_s']:>15.2f}{r['process_s']:>11.2f}")
    cold, warm = rows[0][1], rows[1][1]
    print(f"\nfirst-call compile time (cold 1st step - warm 1st step): "
          f"{cold['first_step_s'] - warm['first_step_s']:.1f} s")


if __name__ == "__main__":
    main()
