"""Reshaping layers: ZeroPadding2D."""

from __future__ import annotations

import numpy as np

from npcnn.kernels.workspace import buffer
from npcnn.layers.base import Layer


class ZeroPadding2D(Layer):
    """Adds rows and columns of zeros around each image (Keras's layer, channels-last).

    Forward: y = zeros (N, top + H + bottom, left + W + right, C), with y[:, top:top+H, left:left+W] = x.
    Backward: dx = dy[:, top:top+H, left:left+W] (the zeros are constants: their gradient is dropped).

    There is no kernel: forward is one copy into a zeroed array (the workspace buffer
    "zero_padding2d.out" when the caller gives one) and backward one slice (a view of dy, which
    nothing downstream writes).

    Args:
        padding: an int (the same on all four sides), a pair (rows on top and bottom, columns on left
            and right), or ((top, bottom), (left, right)). Entries are ints >= 0.
    Raises:
        ValueError: a negative entry, or a shape not among the three above.
        TypeError: a non-integer entry.

    Example::

        model.add(ZeroPadding2D(((1, 2), (0, 1)), input_shape=(28, 28, 1)))   # -> (31, 29, 1)
    """

    def __init__(self, padding=(1, 1), name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        self.padding = _normalize_padding(padding)

    def get_config(self):
        """Keras's keys: padding, as ((top, bottom), (left, right))."""
        return {**super().get_config(), "padding": self.padding}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"ZeroPadding2D {self.name or ''}: expects inputs of shape (H, W, C) per sample, "
                             f"got {tuple(input_shape)}")
        (t, b), (left, right) = self.padding
        h, w, c = input_shape
        return (h + t + b, w + left + right, int(c))

    def forward_op(self, x, state, ctx):
        (t, b), (left, right) = self.padding
        n, h, w, c = x.shape
        y = buffer(state.ws, "zero_padding2d.out", (n, h + t + b, w + left + right, c), x.dtype, zero=True)
        y[:, t:t + h, left:left + w, :] = x
        state.cache = x.shape if ctx.training else None
        return y

    def backward_op(self, dy, state, ctx):
        n, h, w, c = state.need_cache(self._label())
        if not state.need_dx:
            return None
        (t, _), (left, _) = self.padding
        return dy[:, t:t + h, left:left + w, :]

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """{buffer: bytes}: zero_padding2d.out, the padded output (backward keeps nothing)."""
        return {"zero_padding2d.out": 4 * batch_size * int(np.prod(self.compute_output_shape(input_shape)))}

    def __repr__(self):
        return f"ZeroPadding2D(name={self.name!r}, padding={self.padding})"


def _normalize_padding(padding):
    """((top, bottom), (left, right)) from Keras's three forms, or a ValueError/TypeError naming the value."""
    def entry(v):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"ZeroPadding2D: padding entries must be ints >= 0, got {padding!r}")
        if v < 0:
            raise ValueError(f"ZeroPadding2D: padding entries must be ints >= 0, got {padding!r}")
        return int(v)

    if isinstance(padding, (int, np.integer)) and not isinstance(padding, (bool, np.bool_)):
        p = entry(padding)
        return ((p, p), (p, p))
    if isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(isinstance(v, (tuple, list)) for v in padding):
            if any(len(v) != 2 for v in padding):
                raise ValueError(f"ZeroPadding2D: padding must be an int, (rows, cols) or ((top, bottom), "
                                 f"(left, right)), got {padding!r}")
            (t, b), (left, right) = padding
            return ((entry(t), entry(b)), (entry(left), entry(right)))
        if not any(isinstance(v, (tuple, list)) for v in padding):
            r, c = entry(padding[0]), entry(padding[1])
            return ((r, r), (c, c))
    raise ValueError(f"ZeroPadding2D: padding must be an int, (rows, cols) or ((top, bottom), (left, right)), "
                     f"got {padding!r}")
