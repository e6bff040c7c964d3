"""Pooling over NHWC inputs: MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D."""

from __future__ import annotations

import numpy as np

from npcnn import kernels as K
from npcnn.layers.base import Layer
from npcnn.utils import int_pair


class _Pooling2D(Layer):
    """What MaxPooling2D and AveragePooling2D share: Keras's pool_size / strides (default: the pool
    size) / padding arguments, their config, the output shape and the window geometry."""

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        owner = type(self).__name__
        self.pool_size = int_pair(pool_size, "pool_size", owner)
        self.strides = self.pool_size if strides is None else int_pair(strides, "strides", owner)
        self.padding = K.normalize_padding(padding)

    def get_config(self):
        """Keras's keys: pool_size, strides, padding."""
        return {**super().get_config(), "pool_size": tuple(self.pool_size), "strides": tuple(self.strides),
                "padding": self.padding}

    def compute_output_shape(self, input_shape):
        _check_hwc(self, input_shape)
        oh, ow, _ = K.conv_geometry((None,) + tuple(input_shape), self.pool_size, self.strides, self.padding)
        if oh <= 0 or ow <= 0:
            raise ValueError(
                f"{type(self).__name__} {self.name or ''}: a 'valid' {self.pool_size} pool does not fit the input "
                f"{tuple(input_shape)[:2]}: the output would be empty. Use padding='same' or a smaller pool."
            )
        return (oh, ow, int(input_shape[-1]))

    def geometry(self, x_shape):
        """(OH, OW, pads) of this pooling over inputs of shape ``x_shape`` (N, H, W, C)."""
        return K.conv_geometry(x_shape, self.pool_size, self.strides, self.padding)


class MaxPooling2D(_Pooling2D):
    """y[n, oh, ow, c] = max over the window of x; padding (for 'same') is -inf.

    Shapes: x (N, H, W, C); y (N, OH, OW, C); strides default to pool_size (Keras).
    Backward: each dy element goes to its window's argmax (the first one on ties);
    overlapping windows add up. Kernels: ``maxpool2d_forward``/``maxpool2d_backward``.
    """

    def forward_op(self, x, state, ctx):
        oh, ow, pads = self.geometry(x.shape)
        y, cache = K.maxpool2d_forward(x, self.pool_size, self.strides, pads, (oh, ow), ws=state.ws)
        state.cache = cache if ctx.training else None
        return y

    def backward_op(self, dy, state, ctx):
        return K.maxpool2d_backward(dy, state.need_cache(self._label()), ws=state.ws)

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """{buffer: bytes}: pool.out and pool.argmax (int32), (N, OH, OW, C); backward: pool.dx."""
        oh, ow, _ = self.geometry((batch_size,) + tuple(input_shape))
        out = 4 * batch_size * oh * ow * input_shape[-1]
        return {"pool.out": out, "pool.argmax": out,
                "pool.dx": 4 * batch_size * input_shape[0] * input_shape[1] * input_shape[2]}


MaxPool2D = MaxPooling2D


class AveragePooling2D(_Pooling2D):
    """y[n, oh, ow, c] = mean of x over the window's cells inside the image (Keras's 'same' padding
    does not count the padded cells: PyTorch's ``count_include_pad=False``).

    Shapes: x (N, H, W, C); y (N, OH, OW, C) with OH = floor((H - PH)/SH) + 1 ('valid') or ceil(H/SH)
    ('same', the extra padding at the bottom/right as in TensorFlow); strides default to pool_size.
    Backward: each window's dy / count goes to every cell it covered; overlapping windows add up.
    Kernels: ``avgpool2d_forward``/``avgpool2d_backward`` (npcnn/kernels/avgpool.py).
    """

    def forward_op(self, x, state, ctx):
        oh, ow, pads = self.geometry(x.shape)
        y, cache = K.avgpool2d_forward(x, self.pool_size, self.strides, pads, (oh, ow), ws=state.ws)
        state.cache = cache if ctx.training else None
        return y

    def backward_op(self, dy, state, ctx):
        cache = state.need_cache(self._label())
        return K.avgpool2d_backward(dy, cache, ws=state.ws) if state.need_dx else None

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """{buffer: bytes}: avgpool.out (N, OH, OW, C); backward: avgpool.dx (N, H, W, C)."""
        oh, ow, _ = self.geometry((batch_size,) + tuple(input_shape))
        sizes = {"avgpool.out": 4 * batch_size * oh * ow * input_shape[-1]}
        if need_dx:
            sizes["avgpool.dx"] = 4 * batch_size * int(np.prod(input_shape))
        return sizes


class _GlobalPooling2D(Layer):
    """(N, H, W, C) -> (N, C), or (N, 1, 1, C) with ``keepdims=True`` (Keras's argument)."""

    kernel = ""

    def __init__(self, keepdims=False, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        if not isinstance(keepdims, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}: keepdims must be True or False, got {keepdims!r}")
        self.keepdims = bool(keepdims)

    def get_config(self):
        """Keras's keys: keepdims."""
        return {**super().get_config(), "keepdims": self.keepdims}

    def compute_output_shape(self, input_shape):
        _check_hwc(self, input_shape)
        c = int(input_shape[-1])
        return (1, 1, c) if self.keepdims else (c,)

    def forward_op(self, x, state, ctx):
        y, cache = K.get_kernel(f"{self.kernel}_forward")(x, ws=state.ws)
        state.cache = cache if ctx.training else None
        return y.reshape(x.shape[0], 1, 1, x.shape[-1]) if self.keepdims else y

    def backward_op(self, dy, state, ctx):
        cache = state.need_cache(self._label())
        if not state.need_dx:
            return None
        return K.get_kernel(f"{self.kernel}_backward")(dy.reshape(dy.shape[0], -1), cache, ws=state.ws)

    def __repr__(self):
        extra = ", keepdims=True" if self.keepdims else ""
        return f"{type(self).__name__}(name={self.name!r}{extra})"


class GlobalAveragePooling2D(_GlobalPooling2D):
    """y[n, c] = mean over (h, w) of x[n, h, w, c] (summed in float64); dx = dy / (H * W) at every cell.

    Shapes: x (N, H, W, C); y (N, C), or (N, 1, 1, C) with ``keepdims=True``.
    Kernels: ``global_avgpool2d_forward``/``global_avgpool2d_backward`` (npcnn/kernels/globalpool.py).
    """

    kernel = "global_avgpool2d"

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """{buffer: bytes}: global_avgpool.out (N, C), its float64 sums global_avgpool.acc; backward:
        global_avgpool.dx (N, H, W, C)."""
        c = int(input_shape[-1])
        sizes = {"global_avgpool.out": 4 * batch_size * c, "global_avgpool.acc": 8 * batch_size * c}
        if need_dx:
            sizes["global_avgpool.dx"] = 4 * batch_size * int(np.prod(input_shape))
        return sizes


class GlobalMaxPooling2D(_GlobalPooling2D):
    """y[n, c] = max over (h, w) of x[n, h, w, c]; dx = dy at the first maximum (row-major), 0 elsewhere.

    Shapes: x (N, H, W, C); y (N, C), or (N, 1, 1, C) with ``keepdims=True``. Ties go to the first
    maximum, as in MaxPooling2D and PyTorch. Kernels: ``global_maxpool2d_forward``/``_backward``.
    """

    kernel = "global_maxpool2d"

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """{buffer: bytes}: global_maxpool.out (N, C) and its int64 argmax; backward: global_maxpool.dx."""
        c = int(input_shape[-1])
        sizes = {"global_maxpool.out": 4 * batch_size * c, "global_maxpool.argmax": 8 * batch_size * c}
        if need_dx:
            sizes["global_maxpool.dx"] = 4 * batch_size * int(np.prod(input_shape))
        return sizes


def _check_hwc(layer, input_shape):
    if len(input_shape) != 3:
        raise ValueError(f"{type(layer).__name__} {layer.name or ''}: expects inputs of shape (H, W, C) per "
                         f"sample, got {tuple(input_shape)}")


AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D
