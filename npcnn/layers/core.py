"""Core layers: Dense, Flatten, ReLU, Softmax, Activation."""

from __future__ import annotations

import numpy as np

from npcnn import initializers
from npcnn import kernels as K
from npcnn.layers.base import Layer
from npcnn.utils import lookup, positive_int


class ReLU(Layer):
    """y = max(x, 0); backward dx = dy * [x > 0] (0 at exactly 0, PyTorch's convention).

    Shapes: x, y, dy, dx all (N, ...), unchanged.
    """

    activation_name = "relu"

    def __init__(self, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        self._cache = None

    def forward_pre(self, x, training=False):
        y, cache = K.relu_forward(x)
        self._cache = cache if training else None
        return y

    def backward_pre(self, dy):
        return K.relu_backward(dy, self._need_cache(self._cache))


class Softmax(Layer):
    """p = softmax(z) along the last axis, with the per-row maximum subtracted.

    Backward (used only when the softmax does not feed the fused cross-entropy):
    dz = p * (dp - sum(dp * p)). Shapes: z, p (N, K).
    """

    activation_name = "softmax"

    def __init__(self, axis=-1, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        if axis not in (-1,):
            raise ValueError(f"Softmax: only axis=-1 is supported, got {axis!r}")
        self._p = None

    def forward_pre(self, x, training=False):
        p = K.softmax(x)
        self._p = p if training else None
        return p

    def backward_pre(self, dp):
        return K.softmax_backward(dp, self._need_cache(self._p))


class Linear(Layer):
    """Identity activation ('linear')."""

    activation_name = "linear"


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x)); dx = dy * y * (1 - y)."""

    activation_name = "sigmoid"

    def forward_pre(self, x, training=False):
        y = (0.5 * (1 + np.tanh(0.5 * x))).astype(x.dtype, copy=False)  # stable for large |x|
        self._y = y if training else None
        return y

    def backward_pre(self, dy):
        y = self._need_cache(self._y)
        return dy * y * (1 - y)


class Tanh(Layer):
    """y = tanh(x); dx = dy * (1 - y^2)."""

    activation_name = "tanh"

    def forward_pre(self, x, training=False):
        y = np.tanh(x)
        self._y = y if training else None
        return y

    def backward_pre(self, dy):
        y = self._need_cache(self._y)
        return dy * (1 - y * y)


_ACTIVATIONS = {"relu": ReLU, "softmax": Softmax, "linear": Linear, "sigmoid": Sigmoid, "tanh": Tanh}


def get_activation_layer(identifier, owner=None):
    """An activation layer instance from a name, a layer, or None (no activation).

    Raises:
        ValueError: an unknown name (the closest valid one is suggested).
        TypeError: neither a name, a layer nor None.
    """
    if identifier is None:
        return None
    if isinstance(identifier, Layer):
        return identifier
    cls = lookup(identifier, _ACTIVATIONS, "activation", owner)
    return None if cls is Linear else cls()


class Activation(Layer):
    """Applies a named activation ('relu', 'softmax', 'sigmoid', 'tanh', 'linear') as its own layer."""

    def __init__(self, activation, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, activation=activation, **kwargs)
        if self.activation is None:
            self.activation = Linear()

    def __repr__(self):
        return f"Activation({self.activation.activation_name!r}, name={self.name!r})"


class Flatten(Layer):
    """(N, H, W, C) -> (N, H*W*C) in row-major (h, w, c) order, as Keras flattens NHWC.

    Backward reshapes dy back to x's shape.
    """

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward_pre(self, x, training=False):
        self._x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward_pre(self, dy):
        return dy.reshape(self._x_shape)


class Dense(Layer):
    """Fully connected: y = activation(x @ kernel + bias).

    Shapes: x (N, D); kernel (D, units) (Keras layout); bias (units,); y (N, units).
    Backward: dx = dz @ kernel^T; dkernel = x^T @ dz; dbias = sum_n dz[n].
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, activation=activation, **kwargs)
        self.units = positive_int(units, "units", "Dense")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, "Dense", "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "Dense", "bias_initializer")
        self._cache = None

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.params = {"kernel": self.kernel_initializer((d, self.units), self.dtype)}
        if self.use_bias:
            self.params["bias"] = self.bias_initializer((self.units,), self.dtype)
        return super().build(input_shape)

    def forward_pre(self, x, training=False):
        x2 = x.reshape(-1, x.shape[-1])
        y, cache = K.dense_forward(x2, self.params["kernel"], self.params.get("bias"))
        self._cache = (cache, x.shape) if training else None
        return y.reshape(x.shape[:-1] + (self.units,))

    def backward_pre(self, dz):
        cache, x_shape = self._need_cache(self._cache)
        dx, dk, db = K.dense_backward(dz.reshape(-1, self.units), cache, self.need_input_grad)
        self.grads = {"kernel": dk}
        if self.use_bias:
            self.grads["bias"] = db
        return dx.reshape(x_shape) if dx is not None else None
