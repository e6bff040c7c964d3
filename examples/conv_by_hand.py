"""One convolution, forward and backward, on a tiny input, printing every intermediate.

Shows how npcnn's Conv2D turns a convolution into one matrix product (im2col), and how its backward pass
is the same three steps read backwards:

    forward:   cols = im2col(x)            (N*OH*OW, KH*KW*C)   one row per output pixel
               out  = cols @ K + b         K = kernel.reshape(KH*KW*C, F)
    backward:  dK   = cols^T @ dout        db = sum of dout's rows
               dcols = dout @ K^T
               dx   = col2im(dcols)        the adjoint of im2col: overlapping windows add up

It prints x and the kernel (KH, KW, C, F) plane by plane, the im2col matrix with its row and column labels,
the GEMM, the output (N, OH, OW, F) one plane per filter (checked against the plain loops of
npcnn/kernels/naive.py), then dout, dK, db, dcols and dx (the backward checked against the loops too), the
count of windows covering each pixel (why col2im is not an inverse), and finally checks everything against
the Conv2D layer and central differences. Sizes must be positive; --kernel and --stride take one or two.

Run:  python examples/conv_by_hand.py [--height 4 --width 4 --channels 1 --kernel 2 --filters 2
                                       --stride 1 --padding valid]
"""

from __future__ import annotations

import argparse

import numpy as np

from npcnn import gradcheck
from npcnn.kernels.im2col import col2im_numpy, conv_geometry, im2col_numpy
from npcnn.kernels.naive import conv2d_backward_naive, conv2d_forward_naive
from npcnn.layers import Conv2D


def show(title, a):
    print(f"\n{title}  shape {a.shape}")
    print(np.array2string(np.asarray(a), precision=3, suppress_small=True, max_line_width=160))


def show_nhwc(title, a, layout="(N, H, W, C)", names=("n", "c")):
    """Print a 4-D tensor laid out as ``layout`` (batch, rows, columns, channels) one 2-D plane at a time:
    one plane per (first axis, last axis) pair, named by ``names``, the way one pictures an image."""
    print(f"\n{title}  shape {a.shape} = {layout}, one plane per ({names[0]}, {names[1]}):")
    for n in range(a.shape[0]):
        for c in range(a.shape[3]):
            print(f"  [{names[0]}={n}, {names[1]}={c}]")
            text = np.array2string(a[n, :, :, c], precision=3, suppress_small=True, max_line_width=160)
            print("    " + text.replace("\n", "\n    "))


def show_kernel(title, kernel):
    """Print a (KH, KW, C, F) kernel as one KH x KW plane ``kernel[:, :, c, f]`` per (filter, input channel)."""
    KH, KW, C, F = kernel.shape
    print(f"\n{title}  shape {kernel.shape} = (KH, KW, C, F), one KH x KW plane kernel[:, :, c, f] per (f, c):")
    for f in range(F):
        for c in range(C):
            print(f"  [f={f}, c={c}]")
            text = np.array2string(kernel[:, :, c, f], precision=3, suppress_small=True, max_line_width=160)
            print("    " + text.replace("\n", "\n    "))


def positive(text):
    """An argparse type: a positive integer, else a parser error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=positive, default=4)
    p.add_argument("--width", type=positive, default=4)
    p.add_argument("--channels", type=positive, default=1)
    p.add_argument("--kernel", type=positive, nargs="+", default=[2], metavar="K", help="KH [KW] (default 2)")
    p.add_argument("--filters", type=positive, default=2)
    p.add_argument("--stride", type=positive, nargs="+", default=[1], metavar="S", help="SH [SW] (default 1)")
    p.add_argument("--padding", choices=("valid", "same"), default="valid")
    args = p.parse_args(argv)
    for name in ("kernel", "stride"):
        if len(getattr(args, name)) > 2:
            p.error(f"--{name} takes one or two integers ({'KH [KW]' if name == 'kernel' else 'SH [SW]'}), "
                    f"got {len(getattr(args, name))}: {' '.join(map(str, getattr(args, name)))}")
    kh, kw = (args.kernel * 2)[:2]
    sh, sw = (args.stride * 2)[:2]
    H, W, C, F = args.height, args.width, args.channels, args.filters

    # Small integers so every number can be followed by hand.
    x = np.arange(H * W * C, dtype=np.float64).reshape(1, H, W, C)
    kernel = (np.arange(kh * kw * C * F, dtype=np.float64).reshape(kh, kw, C, F) % 5) - 2.0
    bias = np.arange(F, dtype=np.float64) * 0.5
    oh, ow, pads = conv_geometry(x.shape, (kh, kw), (sh, sw), args.padding)
    if oh <= 0 or ow <= 0:
        p.error(f"a 'valid' {kh}x{kw} kernel does not fit a {H}x{W} input; use --padding same or a smaller kernel")

    print(f"Conv2D: {F} filters, kernel {kh}x{kw}, strides ({sh}, {sw}), padding {args.padding!r}")
    print(f"input {H}x{W}x{C} -> output {oh}x{ow}x{F}; padding (top, bottom, left, right) = {pads}")
    show_nhwc("x", x)
    show_kernel("kernel", kernel)

    # ---------------------------------------------------------------- forward
    cols = im2col_numpy(x, (kh, kw), (sh, sw), pads, (oh, ow))
    print("\n=== forward ===")
    col_labels = [f"({i},{j},{c})" for i in range(kh) for j in range(kw) for c in range(C)]
    print("\nim2col: one row per output pixel (oh, ow), one column per kernel tap (i, j, c):")
    print("           " + " ".join(f"{lbl:>7}" for lbl in col_labels))
    for r in range(cols.shape[0]):
        print(f"  ({r // ow},{r % ow})".ljust(11) + " ".join(f"{v:7.3g}" for v in cols[r]))
    print(f"  cols shape {cols.shape} = (N*OH*OW, KH*KW*C): im2col copies each input value up to "
          f"{kh * kw} times")
    K2 = kernel.reshape(kh * kw * C, F)
    show("K = kernel.reshape(KH*KW*C, F), rows in the same (i, j, c) order", K2)
    out2 = cols @ K2 + bias
    show("out = cols @ K + b", out2)
    out = out2.reshape(1, oh, ow, F)
    show_nhwc("out reshaped", out, layout="(N, OH, OW, F)", names=("n", "f"))
    ref, loop_cache = conv2d_forward_naive(x, kernel, bias, (sh, sw), pads)   # npcnn/kernels/naive.py: plain loops
    print(f"\nmax |out - loop convolution| = {np.abs(out - ref).max():.1e}   "
          "(npcnn.kernels.naive.conv2d_forward_naive)")

    # ---------------------------------------------------------------- backward
    print("\n=== backward ===")
    dout = np.linspace(-1.0, 1.0, out.size).reshape(out.shape)
    show_nhwc("dout = d loss / d out (an arbitrary upstream gradient)", dout, layout="(N, OH, OW, F)",
              names=("n", "f"))
    d2 = dout.reshape(-1, F)
    dK = (cols.T @ d2).reshape(kernel.shape)
    show("dK = cols^T @ dout, reshaped to (KH, KW, C, F); here as (KH*KW*C, F)", dK.reshape(-1, F))
    db = d2.sum(axis=0)
    show("db = dout summed over every output pixel", db)
    dcols = d2 @ K2.T
    show("dcols = dout @ K^T  (N*OH*OW, KH*KW*C): each row is what one window sends back", dcols)
    dx = col2im_numpy(dcols, x.shape, (kh, kw), (sh, sw), pads, (oh, ow))
    show_nhwc("dx = col2im(dcols): every window's row added back onto the pixels it covered", dx)
    covers = col2im_numpy(np.ones_like(cols), x.shape, (kh, kw), (sh, sw), pads, (oh, ow))
    show_nhwc("col2im(ones): how many windows cover each pixel (so col2im(im2col(x)) = count * x, not x)",
              covers)
    loop_dx, loop_dK, loop_db = conv2d_backward_naive(dout, loop_cache)
    print(f"\nthe same backward as plain loops (npcnn.kernels.naive.conv2d_backward_naive): max |dx - loops| = "
          f"{np.abs(dx - loop_dx).max():.1e}, max |dK - loops| = {np.abs(dK - loop_dK).max():.1e}, "
          f"max |db - loops| = {np.abs(db - loop_db).max():.1e}")
    c = np.random.default_rng(0).standard_normal(cols.shape)
    print(f"\nadjoint identity <im2col(x), c> = {np.sum(cols * c):.6f}, "
          f"<x, col2im(c)> = {np.sum(x * col2im_numpy(c, x.shape, (kh, kw), (sh, sw), pads, (oh, ow))):.6f}")

    # ---------------------------------------------------------------- the layer agrees
    layer = Conv2D(F, (kh, kw), strides=(sh, sw), padding=args.padding, dtype="float64")
    layer.build((H, W, C))
    layer.set_weights([kernel, bias])
    y = layer.forward(x, training=True)
    dx_layer = layer.backward(dout)
    print("\n=== the Conv2D layer (npcnn.layers.Conv2D, active kernel backend) ===")
    print(f"max |forward - out| = {np.abs(y - out).max():.1e}   max |dx - dx by hand| = "
          f"{np.abs(dx_layer - dx).max():.1e}   max |dK - dK by hand| = {np.abs(layer.grads['kernel'] - dK).max():.1e}"
          f"   max |db - db by hand| = {np.abs(layer.grads['bias'] - db).max():.1e}")
    print("\ncentral differences (npcnn.gradcheck.check_layer, float64):")
    ok = gradcheck.print_results(gradcheck.check_layer(layer, (H, W, C), batch_size=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
