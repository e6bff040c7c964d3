"""Image augmentation layers: RandomFlip and RandomTranslation (Keras's arguments, channels-last).

Active only in training (``model.fit``); ``predict`` and ``evaluate`` pass the images through
unchanged, as Keras does. Each sample draws its own flip or shift from a counter-based hash of
(the step's seed, the layer, the sample's index in the whole batch) (docs/augmentation.md,
:func:`npcnn.kernels.augment.uniforms`), so the result does not depend on how the batch is split
across threads. The remap itself is the kernel ``remap2d_forward`` (npcnn/kernels/augment.py);
backward sends the gradient back through the same remap (its adjoint), so an augmentation layer
after the first still trains; as the first layer it computes nothing (``need_dx`` is False).
"""

from __future__ import annotations

import numbers
import zlib

import numpy as np

from npcnn import kernels as K
from npcnn.kernels.augment import FILL_MODES, INTERPOLATIONS, flip_taps, shift_taps, uniforms
from npcnn.kernels.dropout import fold_seed
from npcnn.layers.base import Layer


class _RandomImageLayer(Layer):
    """Shared parts: the seed, the per-sample uniforms, the remap and its backward."""

    needs_rng = True
    draws_per_sample = 2

    def __init__(self, seed=None, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"{type(self).__name__}: seed must be an int or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)

    def get_config(self):
        """Keras's keys: seed (subclasses add theirs)."""
        return {**super().get_config(), "seed": self.seed}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} {self.name or ''}: expects images of shape (H, W, C) per "
                             f"sample, got {tuple(input_shape)}")
        return tuple(input_shape)

    def layer_seed(self):
        """This layer's own number, folded with each step's seed: ``seed``, else the CRC-32 of the name."""
        if self.seed is not None:
            return self.seed
        return zlib.crc32((self.name or type(self).__name__).encode("utf-8"))

    def draws(self, ctx, n):
        """(n, draws_per_sample) uniforms in [0, 1) for samples ctx.sample_offset ... + n - 1 of the batch.

        The class name is folded in too, so a RandomFlip and a RandomTranslation given the same
        ``seed`` still draw unrelated numbers."""
        key = fold_seed(ctx.seed, self.layer_seed(), zlib.crc32(type(self).__name__.encode("utf-8")))
        return uniforms(key, ctx.sample_offset, n, self.draws_per_sample)

    def taps(self, x_shape, ctx, dtype):
        """(rows, row_weights, cols, col_weights, fill_value) for the kernel; see subclasses."""
        raise NotImplementedError

    def forward_op(self, x, state, ctx):
        if not ctx.training:
            state.cache = None
            return x
        rows, rw, cols, cw, fill = self.taps(x.shape, ctx, x.dtype)
        y, cache = K.remap2d_forward(x, rows, rw, cols, cw, fill, ws=state.ws)
        state.cache = cache
        return y

    def backward_op(self, dy, state, ctx):
        cache = state.need_cache(self._label())
        if not state.need_dx:
            return None
        return K.remap2d_backward(dy, cache, ws=state.ws)

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """{buffer: bytes}: remap2d.out (N, H, W, C); backward: remap2d.dx when the input gradient is needed."""
        n = 4 * batch_size * int(np.prod(input_shape))
        return {"remap2d.out": n, "remap2d.dx": n} if need_dx else {"remap2d.out": n}


class RandomFlip(_RandomImageLayer):
    """Flips each image left-right and/or top-bottom with probability 1/2 each, in training only.

    Sample n is flipped horizontally when its first uniform u[n, 0] < 0.5 and vertically when
    u[n, 1] < 0.5 (modes that do not flip along an axis ignore that draw). Inference: y = x.
    Backward: dy flipped back the same way (a flip is its own inverse).

    Args:
        mode: "horizontal" (left-right), "vertical" (top-bottom) or "horizontal_and_vertical"
            (Keras's default: each independently).
        seed: an int that fixes this layer's draws for a given step seed (default: from the name).
    Raises:
        ValueError: an unknown mode. TypeError: seed not an int.

    Example::

        model.add(RandomFlip("horizontal", input_shape=(32, 32, 3)))
    """

    MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode="horizontal_and_vertical", seed=None, name=None, input_shape=None, **kwargs):
        super().__init__(seed=seed, name=name, input_shape=input_shape, **kwargs)
        if mode not in self.MODES:
            raise ValueError(f"RandomFlip: mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def get_config(self):
        """Keras's keys: mode, seed."""
        return {**super().get_config(), "mode": self.mode}

    def flips(self, ctx, n):
        """(horizontal (n,) bool, vertical (n,) bool): which of samples ctx.sample_offset ... flip."""
        u = self.draws(ctx, n)
        horizontal = (u[:, 0] < 0.5) if self.mode != "vertical" else np.zeros(n, bool)
        vertical = (u[:, 1] < 0.5) if self.mode != "horizontal" else np.zeros(n, bool)
        return horizontal, vertical

    def taps(self, x_shape, ctx, dtype):
        n, h, w, _ = x_shape
        horizontal, vertical = self.flips(ctx, n)
        rows, rw = flip_taps(vertical, h, dtype)
        cols, cw = flip_taps(horizontal, w, dtype)
        return rows, rw, cols, cw, 0.0

    def __repr__(self):
        extra = f", seed={self.seed}" if self.seed is not None else ""
        return f"RandomFlip(name={self.name!r}, mode={self.mode!r}{extra})"


class RandomTranslation(_RandomImageLayer):
    """Shifts each image by a random fraction of its height and width, in training only.

    Sample n moves down by dh = (lo_h + (hi_h - lo_h) * u[n, 0]) * H rows and right by
    dw = (lo_w + (hi_w - lo_w) * u[n, 1]) * W columns (negative: up, left): output cell (i, j) reads
    the input at (i - dh, j - dw), rounded ('nearest') or interpolated ('bilinear'), and cells that
    come from outside the image are filled by ``fill_mode``. Inference: y = x. Backward: the
    adjoint of the same remap (gradients of cells read twice, e.g. across a reflected border, add up).

    Args:
        height_factor: a float f (shifts in [-|f|, |f|] of the height) or a pair (lower, upper), each
            in [-1, 1]; positive moves the image down.
        width_factor: the same for the width; positive moves the image right.
        fill_mode: "reflect" (d c b a | a b c d | d c b a, the default), "wrap" (a b c d | a b c d |
            a b c d), "nearest" (a a a a | a b c d | d d d d) or "constant" (k k k k | a b c d | k k k k,
            k = fill_value).
        interpolation: "bilinear" (Keras's default) or "nearest".
        seed: an int that fixes this layer's draws for a given step seed (default: from the name).
        fill_value: the value k of the "constant" mode.
    Raises:
        ValueError: a factor outside [-1, 1] or not a number or pair; an unknown fill_mode or
            interpolation. TypeError: seed not an int.

    Example::

        model.add(RandomTranslation(0.1, 0.1, fill_mode="reflect", input_shape=(32, 32, 3)))
    """

    def __init__(self, height_factor, width_factor, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, name=None, input_shape=None, **kwargs):
        super().__init__(seed=seed, name=name, input_shape=input_shape, **kwargs)
        self.height_factor, self.width_factor = height_factor, width_factor
        self.height_lower, self.height_upper = _factor_range(height_factor, "height_factor")
        self.width_lower, self.width_upper = _factor_range(width_factor, "width_factor")
        if fill_mode not in FILL_MODES:
            raise ValueError(f"RandomTranslation: fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"RandomTranslation: interpolation must be one of {INTERPOLATIONS}, got "
                             f"{interpolation!r}")
        if isinstance(fill_value, (bool, np.bool_)) or not isinstance(fill_value, numbers.Real):
            raise ValueError(f"RandomTranslation: fill_value must be a number, got {fill_value!r}")
        self.fill_mode, self.interpolation, self.fill_value = fill_mode, interpolation, float(fill_value)

    def get_config(self):
        """Keras's keys: height_factor, width_factor, fill_mode, interpolation, seed, fill_value."""
        from npcnn.serialization import plain

        return {**super().get_config(), "height_factor": plain(self.height_factor),
                "width_factor": plain(self.width_factor), "fill_mode": self.fill_mode,
                "interpolation": self.interpolation, "fill_value": self.fill_value}

    def shifts(self, ctx, n, height, width):
        """(dh (n,), dw (n,)) float64: the shifts, in cells, of samples ctx.sample_offset ... + n - 1."""
        u = self.draws(ctx, n)
        dh = (self.height_lower + (self.height_upper - self.height_lower) * u[:, 0]) * height
        dw = (self.width_lower + (self.width_upper - self.width_lower) * u[:, 1]) * width
        return dh, dw

    def taps(self, x_shape, ctx, dtype):
        n, h, w, _ = x_shape
        dh, dw = self.shifts(ctx, n, h, w)
        rows, rw = shift_taps(dh, h, self.fill_mode, self.interpolation, dtype)
        cols, cw = shift_taps(dw, w, self.fill_mode, self.interpolation, dtype)
        return rows, rw, cols, cw, self.fill_value

    def __repr__(self):
        extra = f", seed={self.seed}" if self.seed is not None else ""
        return (f"RandomTranslation(name={self.name!r}, height_factor={self.height_factor!r}, "
                f"width_factor={self.width_factor!r}, fill_mode={self.fill_mode!r}, "
                f"interpolation={self.interpolation!r}{extra})")


def _factor_range(factor, name):
    """(lower, upper) from Keras's factor: a number f -> (-|f|, |f|); a pair -> sorted; entries in [-1, 1]."""
    def number(v):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not -1.0 <= float(v) <= 1.0:
            raise ValueError(f"RandomTranslation: {name} must be a number or a pair of numbers in [-1, 1] "
                             f"(fractions of the size), got {factor!r}")
        return float(v)

    if isinstance(factor, (tuple, list)):
        if len(factor) != 2:
            raise ValueError(f"RandomTranslation: {name} must be a number or a pair (lower, upper), got {factor!r}")
        lower, upper = number(factor[0]), number(factor[1])
        if lower > upper:
            raise ValueError(f"RandomTranslation: {name} as a pair is (lower, upper) with lower <= upper, as in "
                             f"Keras, got {factor!r}")
        return lower, upper
    f = abs(number(factor))
    return -f, f
