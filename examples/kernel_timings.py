"""The NumPy and Numba kernels side by side: time each op of the tutorial model on both backends.

For every kernel that training runs (im2col, col2im, conv forward/backward, max-pool forward/backward,
ReLU forward/backward, Dense forward/backward, softmax, fused softmax cross-entropy, the fused
Conv2D + ReLU + MaxPooling2D op forward/backward, and the Adam update over all 122,570 parameters) at
the shapes of the Keras CIFAR-10 tutorial model, it runs the NumPy twin and the Numba version on the
same float32 inputs, checks they agree, and prints the median of ``--repeat`` timings in milliseconds
with their spread (the interquartile range: half the runs fell inside it) and the speed-up of the
medians. One run can swing several times the median on a busy machine; the last line names the op
with the widest swing. The kernels come from ``npcnn.kernels.get_kernel(name, backend)``. The Numba
version gets a Workspace (``ws=``), as a layer gives it, so its buffers are reused from call to call.
The first call of each Numba kernel (its compilation, or loading it from the cache) is excluded. A
kernel registered without a Numba version of its own is marked 'NumPy twin'. With matplotlib
(``pip install -e .[plot]``) it also writes a bar chart (PNG, medians with IQR bars, default
``runs/kernel_timings.png``; ``runs/`` is ignored by git) and prints its path; without, it skips the
plot with a message.

This is a quick look, not the benchmark suite: see benchmarks/ for pytest-benchmark runs with
pinned threads.

Run:  python examples/kernel_timings.py [--batch 32] [--repeat 9] [--out runs/kernel_timings.png]
"""

from __future__ import annotations

import argparse
import os
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

    # The fused Conv2D + ReLU + MaxPooling2D op that training runs for the first two blocks.
    for label, x_shape, w_shape in (("conv1+relu+pool1", (batch, 32, 32, 3), (3, 3, 3, 32)),
                                    ("conv2+relu+pool2", (batch, 15, 15, 32), (3, 3, 32, 64))):
        x = rng.standard_normal(x_shape, dtype=np.float32)
        w = rng.standard_normal(w_shape, dtype=np.float32) * 0.1
        b = rng.standard_normal(w_shape[-1], dtype=np.float32) * 0.1
        pads, out_hw = conv_geom(x_shape, w_shape[:2])
        c_shape = (batch,) + out_hw + (w_shape[-1],)
        ph, pw, ppads = K.conv_geometry(c_shape, (2, 2), (2, 2), "valid")
        args = (x, w, b, (1, 1), pads, out_hw, (2, 2), (2, 2), ppads, (ph, pw))
        dp = rng.standard_normal((batch, ph, pw, w_shape[-1]), dtype=np.float32)
        text = f"x {x_shape} * k {w_shape}"
        out.append((f"{label} fwd", text, "conv2d_relu_maxpool_forward", lambda be, a=args: a))
        need = label.startswith("conv2")  # need_dx as in the model: the first block's input gradient is never needed
        out.append((f"{label} bwd", text, "conv2d_relu_maxpool_backward",
                    lambda be, a=args, d=dp, need=need:
                    (d, K.get_kernel("conv2d_relu_maxpool_forward", be)(*a)[1], need)))

    # Adam over every parameter of the tutorial model at once (122,570 floats): p, m, v updated in place.
    n_params = 122_570
    p0 = rng.standard_normal(n_params, dtype=np.float32) * 0.05
    g0 = rng.standard_normal(n_params, dtype=np.float32) * 0.01
    t = 1
    alpha = float(0.001 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t))  # a Python float, as Adam.apply passes
    out.append(("adam", f"{n_params:,} parameters", "adam_update",
                lambda be: (p0.copy(), g0, np.zeros_like(p0), np.zeros_like(p0), 0.9, 0.999, alpha, 1e-7)))
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


def timings_ms(fn, args, repeat, kwargs=None):
    """``repeat`` timings of ``fn(*args, **kwargs)`` in milliseconds, after one untimed warm-up call."""
    kwargs = kwargs or {}
    fn(*args, **kwargs)  # warm-up: Numba compiles (or loads its cache) here; the buffers are made
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - t)
    return np.array(times) * 1e3


def summary(times):
    """(median, first quartile, third quartile, min, max) of a list of timings."""
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return float(med), float(q1), float(q3), float(np.min(times)), float(np.max(times))


def first_array(result, args):
    """The main output of a kernel call: the array itself, the first array of a tuple (dx for backward), or,
    for an in-place kernel returning None (Adam), its first argument."""
    if result is None:
        return args[0]
    if isinstance(result, tuple):
        return next(r for r in result if isinstance(r, np.ndarray))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--repeat", type=int, default=9,
                   help="timed runs per kernel and backend; the median and the quartiles are shown (default 9)")
    p.add_argument("--out", default=os.path.join("runs", "kernel_timings.png"),
                   help="the bar chart (default runs/kernel_timings.png)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS and Numba alike (default: npcnn's setting, all cores)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    threads = set_threads(args.threads)
    print(f"batch {args.batch}, float32, {args.repeat} timed runs per kernel after a warm-up (compile time "
          f"excluded), threads {threads}")
    print("each time: the median in ms, and the spread [first quartile - third quartile] of the runs; "
          "speed-up = numpy median / numba median\n")
    head = (f"{'op':<22} {'shapes':<40} {'numpy ms [IQR]':>24} {'numba ms [IQR]':>24} {'speed-up':>9}  max |diff|")
    print(head)
    print("-" * len(head))
    rows = []
    for label, shapes, name, make_args in cases(args.batch, np.random.default_rng(args.seed)):
        fns = {be: K.get_kernel(name, be) for be in ("numpy", "numba")}
        twin = fns["numba"] is fns["numpy"]
        stats, outs = {}, {}
        for be, fn in fns.items():
            a = make_args(be)
            kw = {"ws": Workspace()} if be == "numba" else {}  # results are ws buffers: copied below
            stats[be] = summary(timings_ms(fn, a, args.repeat, kw))
            a = make_args(be)  # fresh inputs: an in-place kernel (Adam) is compared after one call each
            outs[be] = np.array(first_array(fn(*a, **kw), a), copy=True)
        diff = float(np.abs(outs["numpy"].astype(np.float64) - outs["numba"]).max())
        note = "  (NumPy twin)" if twin else ""
        cells = [f"{m:.3f} [{q1:.3f}-{q3:.3f}]" for m, q1, q3, _, _ in (stats["numpy"], stats["numba"])]
        print(f"{label:<22} {shapes:<40} {cells[0]:>24} {cells[1]:>24} "
              f"{stats['numpy'][0] / stats['numba'][0]:>8.2f}x  {diff:.1e}{note}")
        rows.append((label, stats["numpy"], stats["numba"]))
    worst = max(rows, key=lambda r: max(r[1][4] / r[1][0], r[2][4] / r[2][0]))
    print(f"\nwidest swing: {worst[0]}, slowest run {max(worst[1][4] / worst[1][0], worst[2][4] / worst[2][0]):.2f}x "
          "its median (a busy machine shows up here: rerun, or raise --repeat)")

    if args.no_plot:
        return 0
    plt = pyplot()
    if plt is None:
        return 0
    fig, ax = plt.subplots(figsize=(10, 4.2))
    idx = np.arange(len(rows))
    for offset, col, be in ((-0.2, 1, "numpy"), (0.2, 2, "numba")):
        med = np.array([r[col][0] for r in rows])
        spread = np.array([[r[col][0] - r[col][1] for r in rows], [r[col][2] - r[col][0] for r in rows]])
        ax.bar(idx + offset, med, 0.4, yerr=spread, capsize=2, label=be)
    ax.set_xticks(idx)
    ax.set_xticklabels([r[0] for r in rows], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(f"ms (median of {args.repeat}, bars: IQR)")
    ax.set_yscale("log")
    ax.set_title(f"npcnn kernels, batch {args.batch}, float32, {threads} threads")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"\nwrote {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
