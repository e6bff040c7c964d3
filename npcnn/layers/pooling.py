"""MaxPooling2D over NHWC inputs."""

from __future__ import annotations

from npcnn import kernels as K
from npcnn.layers.base import Layer
from npcnn.utils import int_pair


class MaxPooling2D(Layer):
    """y[n, oh, ow, c] = max over the window of x; padding (for 'same') is -inf.

    Shapes: x (N, H, W, C); y (N, OH, OW, C); strides default to pool_size (Keras).
    Backward: each dy element goes to its window's argmax (the first one on ties);
    overlapping windows add up. The argmax buffer lives in the layer's workspace and is
    reused every step of the same batch size.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        self.pool_size = int_pair(pool_size, "pool_size", "MaxPooling2D")
        self.strides = self.pool_size if strides is None else int_pair(strides, "strides", "MaxPooling2D")
        self.padding = K.normalize_padding(padding)
        self._cache = None
        self._workspace = {}

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

    def forward_pre(self, x, training=False):
        oh, ow, pads = K.conv_geometry(x.shape, self.pool_size, self.strides, self.padding)
        self._cache = None  # the previous step's cache is dead; its argmax buffer gets reused
        y, cache = K.maxpool2d_forward(x, self.pool_size, self.strides, pads, (oh, ow), workspace=self._workspace)
        self._cache = cache if training else None
        return y

    def backward_pre(self, dy):
        return K.maxpool2d_backward(dy, self._need_cache(self._cache))
