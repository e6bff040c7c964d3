"""Conv2D: 2-D convolution over NHWC inputs, Keras's arguments and kernel layout."""

from __future__ import annotations

import numpy as np

from npcnn import initializers
from npcnn import kernels as K
from npcnn.layers.base import Layer
from npcnn.layers.core import ReLU
from npcnn.utils import int_pair, positive_int


class Conv2D(Layer):
    """y = activation(conv(x, kernel) + bias), computed as im2col + one GEMM.

    Shapes: x (N, H, W, C); kernel (KH, KW, C, filters) (Keras layout); bias (filters,);
    y (N, OH, OW, filters) with OH = floor((H - KH)/SH) + 1 ('valid') or ceil(H/SH) ('same').

    Backward (see :mod:`npcnn.kernels.conv`): with dz the gradient w.r.t. the pre-activation,
    dkernel = cols^T @ dz, dbias = sum dz, dx = col2im(dz @ kernel^T).

    With ``activation='relu'`` the ReLU is fused into the convolution (bias and max(., 0) in
    one pass; backward masks dy with [y > 0]), so no separate activation pass or array.
    The column matrix and gradient buffers live in the layer's workspace and are reused
    every step of the same batch size; the training cache is valid until the next forward.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, activation=activation, **kwargs)
        self.filters = positive_int(filters, "filters", "Conv2D")
        self.kernel_size = int_pair(kernel_size, "kernel_size", "Conv2D")
        self.strides = int_pair(strides, "strides", "Conv2D")
        self.padding = K.normalize_padding(padding)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self._cache = None
        self._cache_pool = None  # the last training forward_pool's cache (conv + ReLU + pool fused)
        self._pool_out_shape = None
        self._fused = False  # did the last forward fuse the ReLU (so backward must mask)?
        self._fuse_next = False
        self._workspace = {}

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"Conv2D {self.name or ''}: expects inputs of shape (H, W, C) per sample, got {tuple(input_shape)}"
            )
        oh, ow, _ = K.conv_geometry((None,) + tuple(input_shape), self.kernel_size, self.strides, self.padding)
        if oh <= 0 or ow <= 0:
            raise ValueError(
                f"Conv2D {self.name or ''}: a 'valid' {self.kernel_size} kernel does not fit the input "
                f"{tuple(input_shape)[:2]}: the output would be empty. Use padding='same' or a smaller kernel."
            )
        return (oh, ow, self.filters)

    def build(self, input_shape):
        out = self.compute_output_shape(input_shape)  # validates before allocating
        kh, kw = self.kernel_size
        self.params = {"kernel": self.kernel_initializer((kh, kw, int(input_shape[-1]), self.filters), self.dtype)}
        if self.use_bias:
            self.params["bias"] = self.bias_initializer((self.filters,), self.dtype)
        super().build(input_shape)
        return out

    def _fuses_relu(self):
        return type(self.activation) is ReLU

    def forward(self, x, training=False):
        """y = activation(conv(x) + bias); a ReLU activation runs fused in the kernel."""
        if not self._fuses_relu():
            return super().forward(x, training)
        # The base class's forward (input checks, shapes), with the ReLU left to the kernel.
        relu, self.activation = self.activation, None
        self._fuse_next = True
        try:
            return super().forward(x, training)
        finally:
            self.activation = relu
            self._fuse_next = False

    def backward(self, dy):
        """dx for dy; when the forward fused the ReLU, the kernel applies its mask [y > 0]."""
        if not self._fused:
            return super().backward(dy)
        relu, self.activation = self.activation, None
        try:
            return super().backward(dy)
        finally:
            self.activation = relu

    def forward_pre(self, x, training=False):
        return self._conv(x, training, relu=self._fuse_next)

    def _conv(self, x, training, relu):
        oh, ow, pads = K.conv_geometry(x.shape, self.kernel_size, self.strides, self.padding)
        self._cache = self._cache_pool = None  # the previous step's caches are dead; their buffers get reused
        y, cache = K.conv2d_forward(x, self.params["kernel"], self.params.get("bias"),
                                    self.strides, pads, (oh, ow), relu=relu, workspace=self._workspace)
        self._cache = cache if training else None
        self._fused = relu
        return y

    # --- fused with the next layer's max-pooling (Sequential's choice) --------------------
    def fuses_pool(self, nxt):
        """Whether this layer and ``nxt`` may run as one conv + ReLU + max-pool op
        (:mod:`npcnn.kernels.fused`): a ReLU activation, then a built MaxPooling2D."""
        from npcnn.kernels import fused
        from npcnn.layers.pooling import MaxPooling2D

        return fused.ENABLED and self._fuses_relu() and type(nxt) is MaxPooling2D and nxt.built

    def forward_pool(self, x, pool, training=False):
        """pool.forward(self.forward(x)) computed as one op; returns the pool's output.

        The activation relu(conv(x) + b) between the two layers is never written. The returned
        array is a buffer of the pool's workspace, overwritten by the next call (Sequential
        copies it when it would reach its caller).
        """
        self._prepare_input(x)
        oh, ow, pads = K.conv_geometry(x.shape, self.kernel_size, self.strides, self.padding)
        y_shape = (x.shape[0], oh, ow, self.filters)
        poh, pow_, ppads = K.conv_geometry(y_shape, pool.pool_size, pool.strides, pool.padding)
        self._cache = self._cache_pool = pool._cache = None  # dead: their buffers get reused
        p, cache = K.conv2d_relu_maxpool_forward(
            x, self.params["kernel"], self.params.get("bias"), self.strides, pads, (oh, ow),
            pool.pool_size, pool.strides, ppads, (poh, pow_),
            workspace=self._workspace, pool_workspace=pool._workspace)
        self._cache_pool = cache if training else None
        self._pool_out_shape = p.shape if training else None
        self._out_shape = pool._out_shape = None
        return p

    def backward_pool(self, dp, pool):
        """Backward of :meth:`forward_pool`: dp (the pool's output gradient) -> dx; fills both
        layers' ``grads`` (the pool has none). dx is a workspace buffer, overwritten by the next
        call (Sequential copies it when it would reach its caller)."""
        cache = self._need_cache(self._cache_pool)
        if np.shape(dp) != self._pool_out_shape:
            raise ValueError(f"{self._label()}: dp has shape {np.shape(dp)}, but the last "
                             f"forward_pool(training=True) gave an output of shape {self._pool_out_shape}")
        dx, dk, db = K.conv2d_relu_maxpool_backward(dp, cache, self.need_input_grad, workspace=self._workspace)
        self.grads = {"kernel": dk}
        if self.use_bias:
            self.grads["bias"] = db
        pool.grads = {}
        return dx

    def backward_pre(self, dz):
        dx, dk, db = K.conv2d_backward(dz, self._need_cache(self._cache), self.need_input_grad,
                                       workspace=self._workspace)
        self.grads = {"kernel": dk}
        if self.use_bias:
            self.grads["bias"] = db
        return dx
