"""MaxPooling2D over NHWC inputs."""

from __future__ import annotations

from npcnn import kernels as K
from npcnn.layers.base import Layer
from npcnn.utils import int_pair


class MaxPooling2D(Layer):
    """y[n, oh, ow, c] = max over the window of x; padding (for 'same') is -inf.

    Shapes: x (N, H, W, C); y (N, OH, OW, C); strides default to pool_size (Keras).
    Backward: each dy element goes to its window's argmax (the first one on ties);
    overlapping windows add up. Kernels: ``maxpool2d_forward``/``maxpool2d_backward``.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        self.pool_size = int_pair(pool_size, "pool_size", "MaxPooling2D")
        self.strides = self.pool_size if strides is None else int_pair(strides, "strides", "MaxPooling2D")
        self.padding = K.normalize_padding(padding)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"MaxPooling2D {self.name or ''}: expects inputs of shape (H, W, C) per sample, "
                f"got {tuple(input_shape)}"
            )
        oh, ow, _ = K.conv_geometry((None,) + tuple(input_shape), self.pool_size, self.strides, self.padding)
        if oh <= 0 or ow <= 0:
            raise ValueError(
                f"MaxPooling2D {self.name or ''}: a 'valid' {self.pool_size} pool does not fit the input "
                f"{tuple(input_shape)[:2]}: the output would be empty. Use padding='same' or a smaller pool."
            )
        return (oh, ow, int(input_shape[-1]))

    def geometry(self, x_shape):
        """(OH, OW, pads) of this pooling over inputs of shape ``x_shape`` (N, H, W, C)."""
        return K.conv_geometry(x_shape, self.pool_size, self.strides, self.padding)

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
