"""The NumPy and Numba kernels side by side: time each op of the tutorial model on both backends.

For every kernel that the layers call (im2col, col2im, conv forward/backward, max-pool forward/backward,
ReLU forward/backward, Dense forward/backward, softmax, fused softmax cross-entropy) at the shapes of
the Keras CIFAR-10 tutorial model, it runs the NumPy twin and the Numba version on the same float32
inputs, checks they agree, and prints the best of ``--repeat`` timings in milliseconds and the
speed-up. The Numba version gets a Workspace (``ws=``), as a layer gives it, so its buffers are
reused from call to call. The first call of each Numba kernel (its compilation, or loading it from
the cache) is excluded. A kernel registered without a Numba version of its own is marked 'NumPy twin'. With matplotlib (``pip install -e .[plot]``) it also writes a bar chart (PNG);
without, it skips the plot with a message.

This is a quick look, not the benchmark suite: see benchmarks/ for pytest-benchmark runs with
pinned threads.

Run:  python examples/kernel_timings.py [--batch 32] [--repeat 5] [--out kernel_timings.png]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from npcnn import kernels as K
from npcnn.kernels.workspace import Workspace
from npcnn.utils import pyplot


def cases(batch, rng):
    """(label, shape text, kernel name, make_args(backend) -> args) for every op at the tutorial's shapes."""
    def conv_geom(x_shape, k):
        oh, ow, pads = K.conv_geometry(x_shape, k, (1, 1), "valid")
        return pads, (oh, ow)

    out = []
    for label, x_shape, w_shape in (("conv1", (batch, 32, 32, 3), (3, 3, 3, 32)),
                                    ("conv2", (batch, 15, 15, 32), (3, 3, 32, 64)),
                                    ("conv3", (batch, 6, 6, 64), (3, 3, 64, 64))):
        x = rng.standard_normal(x_shape, dtype=np.float32)
        w = (rng.standard_normal(w_shape, dtype=np.float32) * 0.1)
        b = rng.standard_normal(w_shape[-1], dtype=np.float32)
        pads, out_hw = conv_geom(x_shape, w_shape[:2])
        dout = rng.standard_normal((batch,) + out_hw + (w_shape[-1],), dtype=np.float32)
        text = f"x {x_shape} * k {w_shape}"
        out.append((f"{label} forward", text, "conv2d_forward", lambda be, x=x, w=w, b=b, p=pads, o=out_hw:
                    (x, w, b, (1, 1), p, o)))
        out.append((f"{label} backward", text, "conv2d_backward", lambda be, x=x, w=w, b=b, p=pads, o=out_hw, d=dout:
                    (d, K.get_kernel("conv2d_forward", be)(x, w, b, (1, 1), p, o)[1], True)))
        if label == "conv1":
            cols_shape = (batch * out_hw[0] * out_hw[1], 27)
            cols = rng.standard_normal(cols_shape, dtype=np.float32)
            out.append(("im2col", f"{x_shape} -> {cols_shape}", "im2col",
                        lambda be, x=x, p=pads, o=out_hw: (x, (3, 3), (1, 1), p, o)))
            out.append(("col2im", f"{cols_shape} -> {x_shape}", "col2im",
                        lambda be, c=cols, s=x_shape, p=pads, o=out_hw: (c, s, (3, 3), (1, 1), p, o)))
    for label, x_shape in (("pool1", (batch, 30, 30, 32)), ("pool2", (batch, 13, 13, 64))):
        x = rng.standard_normal(x_shape, dtype=np.float32)
        oh, ow, pads = K.conv_geometry(x_shape, (2, 2), (2, 2), "valid")
        dout = rng.standard_normal((batch, oh, ow, x_shape[-1]), dtype=np.float32)
        out.append((f"{label} forward", f"x {x_shape}", "maxpool2d_forward",
                    lambda be, x=x, p=pads, o=(oh, ow): (x, (2, 2), (2, 2), p, o)))
        out.append((f"{label} backward", f"x {x_shape}", "maxpool2d_backward",
                    lambda be, x=x, p=pads, o=(oh, ow), d=dout:
                    (d, K.get_kernel("maxpool2d_forward", be)(x, (2, 2), (2, 2), p, o)[1])))
    x = rng.standard_normal((batch, 30, 30, 32), dtype=np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    out.append(("relu forward", f"x {x.shape}", "relu_forward", lambda be, x=x: (x,)))
    out.append(("relu backward", f"x {x.shape}", "relu_backward",
                lambda be, x=x, d=dy: (d, K.get_kernel("relu_forward", be)(x)[1])))
    xd = rng.standard_normal((batch, 1024), dtype=np.float32)
    wd = rng.standard_normal((1024, 64), dtype=np.float32) * 0.03
    bd = rng.standard_normal(64, dtype=np.float32)
    dyd = rng.standard_normal((batch, 64), dtype=np.float32)
    out.append(("dense forward", f"x {xd.shape} * k {wd.shape}", "dense_forward", lambda be: (xd, wd, bd)))
    out.append(("dense backward", f"x {xd.shape} * k {wd.shape}", "dense_backward",
                lambda be: (dyd, K.get_kernel("dense_forward", be)(xd, wd, bd)[1], True)))
    logits = rng.standard_normal((batch, 10), dtype=np.float32)
    labels = rng.integers(0, 10, batch)
    out.append(("softmax", f"z {logits.shape}", "softmax_forward", lambda be: (logits,)))
    out.append(("softmax-CE", f"logits {logits.shape}", "sparse_softmax_ce", lambda be: (logits, labels)))
    return out


def set_threads(n):
    """Give BLAS and Numba the same thread count (so they do not oversubscribe the cores); returns it."""
    import npcnn

    if n is not None:
        if hasattr(npcnn, "set_num_threads"):
            npcnn.set_num_threads(n)
        else:
            import numba
            from threadpoolctl import threadpool_limits

            numba.set_num_threads(n)
            set_threads.limiter = threadpool_limits(n)  # kept alive so the limit stays applied
    if hasattr(npcnn, "get_num_threads"):
        return npcnn.get_num_threads()
    import numba

    return n if n is not None else numba.get_num_threads()


def best_ms(fn, args, repeat, kwargs=None):
    kwargs = kwargs or {}
    fn(*args, **kwargs)  # warm-up: Numba compiles (or loads its cache) here; the buffers are made
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def first_array(result):
    """The main output of a kernel call: the array itself, or the first array of a tuple (dx for backward)."""
    if isinstance(result, tuple):
        return next(r for r in result if isinstance(r, np.ndarray))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per kernel; the best is kept (default 5)")
    p.add_argument("--out", default="kernel_timings.png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS and Numba alike (default: npcnn's setting, all cores)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    threads = set_threads(args.threads)
    print(f"batch {args.batch}, float32, best of {args.repeat}, threads {threads}, compile time excluded\n")
    head = f"{'op':<16} {'shapes':<40} {'numpy ms':>9} {'numba ms':>9} {'speed-up':>9}  max |diff|"
    print(head)
    print("-" * len(head))
    rows = []
    for label, shapes, name, make_args in cases(args.batch, np.random.default_rng(args.seed)):
        fns = {be: K.get_kernel(name, be) for be in ("numpy", "numba")}
        twin = fns["numba"] is fns["numpy"]
        times, outs = {}, {}
        for be, fn in fns.items():
            a = make_args(be)
            kw = {"ws": Workspace()} if be == "numba" else {}  # results are ws buffers: copied below
            times[be] = best_ms(fn, a, args.repeat, kw)
            outs[be] = np.array(first_array(fn(*a, **kw)), copy=True)
        diff = float(np.abs(outs["numpy"].astype(np.float64) - outs["numba"]).max())
        note = "  (NumPy twin)" if twin else ""
        print(f"{label:<16} {shapes:<40} {times['numpy']:>9.3f} {times['numba']:>9.3f} "
              f"{times['numpy'] / times['numba']:>8.2f}x  {diff:.1e}{note}")
        rows.append((label, times["numpy"], times["numba"]))

    if args.no_plot:
        return 0
    plt = pyplot()
    if plt is None:
        return 0
    fig, ax = plt.subplots(figsize=(9, 4))
    idx = np.arange(len(rows))
    ax.bar(idx - 0.2, [r[1] for r in rows], 0.4, label="numpy")
    ax.bar(idx + 0.2, [r[2] for r in rows], 0.4, label="numba")
    ax.set_xticks(idx)
    ax.set_xticklabels([r[0] for r in rows], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("ms (best of %d)" % args.repeat)
    ax.set_yscale("log")
    ax.set_title(f"npcnn kernels, batch {args.batch}, float32, {threads} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
