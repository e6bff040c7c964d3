"""Core layers: Dense and Flatten."""

from __future__ import annotations

import numpy as np

from npcnn import initializers, regularizers
from npcnn import kernels as K
from npcnn.layers.activations import get_activation_layer
from npcnn.layers.base import Layer
from npcnn.utils import positive_int


class Flatten(Layer):
    """(N, H, W, C) -> (N, H*W*C) in row-major (h, w, c) order, as Keras flattens NHWC.

    Backward reshapes dy back to x's shape (a view, no copy).
    """

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward_op(self, x, state, ctx):
        state.cache = x.shape if ctx.training else None
        return x.reshape(x.shape[0], -1)

    def backward_op(self, dy, state, ctx):
        return dy.reshape(state.need_cache(self._label())) if state.need_dx else None


class Dense(Layer):
    """Fully connected: y = activation(x @ kernel + bias).

    Shapes: x (N, D); kernel (D, units) (Keras layout); bias (units,); y (N, units).
    Backward (kernels ``dense_forward``/``dense_backward``): dx = dy @ kernel^T;
    dkernel = x^T @ dy; dbias = sum_n dy[n].

    ``kernel_regularizer`` / ``bias_regularizer`` (:mod:`npcnn.regularizers`: an instance such as
    ``L2(1e-4)``, or a name 'l1', 'l2', 'l1_l2') add a penalty R(w) to the loss and dR/dw to the
    gradient (the model's plan does it); they land in ``self.regularizers``.
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, name=None,
                 input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        self.activation = get_activation_layer(activation, "Dense")
        self.units = positive_int(units, "units", "Dense")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, "Dense", "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "Dense", "bias_initializer")
        self.kernel_regularizer = regularizers.get(kernel_regularizer, "Dense")
        self.bias_regularizer = regularizers.get(bias_regularizer, "Dense")
        self.regularizers = {k: r for k, r in (("kernel", self.kernel_regularizer),
                                               ("bias", self.bias_regularizer if self.use_bias else None))
                             if r is not None}

    def get_config(self):
        """Keras's keys: name, dtype, units, activation, use_bias, the initializers and regularizers."""
        from npcnn.serialization import serialize_activation, serialize_initializer, serialize_regularizer

        own = self._label()
        return {**super().get_config(), "units": self.units,
                "activation": serialize_activation(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": serialize_initializer(self.kernel_initializer, own, "kernel_initializer"),
                "bias_initializer": serialize_initializer(self.bias_initializer, own, "bias_initializer"),
                "kernel_regularizer": serialize_regularizer(self.kernel_regularizer, own, "kernel_regularizer"),
                "bias_regularizer": serialize_regularizer(self.bias_regularizer, own, "bias_regularizer")}

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.params = {"kernel": self.kernel_initializer((d, self.units), self.dtype)}
        if self.use_bias:
            self.params["bias"] = self.bias_initializer((self.units,), self.dtype)
        return super().build(input_shape)

    def forward_op(self, x, state, ctx):
        x2 = x.reshape(-1, x.shape[-1])
        y, cache = K.dense_forward(x2, self.params["kernel"], self.params.get("bias"), ws=state.ws)
        state.cache = (cache, x.shape) if ctx.training else None
        return y.reshape(x.shape[:-1] + (self.units,))

    def backward_op(self, dy, state, ctx):
        cache, x_shape = state.need_cache(self._label())
        dx, dk, db = K.dense_backward(dy.reshape(-1, self.units), cache, state.need_dx, ws=state.ws)
        state.grads = {"kernel": dk, "bias": db} if self.use_bias else {"kernel": dk}
        return dx.reshape(x_shape) if dx is not None else None

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """dense.out (rows, units); backward: the bias gradient's float64 partial sums, dense.dx."""
        rows = batch_size * int(np.prod(input_shape[:-1]))
        sizes = {"dense.out": 4 * rows * self.units, "dense.db_partial": 8 * min(64, rows) * self.units}
        if need_dx:
            sizes["dense.dx"] = 4 * rows * input_shape[-1]
        return sizes
