"""Conv2D: 2-D convolution over NHWC inputs, Keras's arguments and kernel layout."""

from __future__ import annotations

from npcnn import initializers, regularizers
from npcnn import kernels as K
from npcnn.layers.activations import get_activation_layer
from npcnn.layers.base import Layer
from npcnn.utils import int_pair, positive_int


class Conv2D(Layer):
    """y = activation(conv(x, kernel) + bias), computed as im2col + one GEMM (on the Numba backend a
    qualifying 3x3 stride-1 layer by Winograd's F(2x2, 3x3) instead, see :meth:`uses_winograd`).

    Shapes: x (N, H, W, C); kernel (KH, KW, C, filters) (Keras layout); bias (filters,);
    y (N, OH, OW, filters) with OH = floor((H - KH)/SH) + 1 ('valid') or ceil(H/SH) ('same').

    Backward (see :mod:`npcnn.kernels.conv` and docs/conv2d.md): dkernel = cols^T @ dy,
    dbias = sum dy, dx = col2im(dy @ kernel^T).

    ``kernel_regularizer`` / ``bias_regularizer`` (:mod:`npcnn.regularizers`: ``L2(1e-4)``, 'l2', ...)
    add a penalty R(w) to the loss and dR/dw to the gradient; they land in ``self.regularizers``.

    In a model, a ReLU activation runs fused in the convolution kernel (``relu=True``: bias and
    max(., 0) in one pass, backward masks dy with [y > 0]), and a following MaxPooling2D may join
    them in one op; the model's plan (:mod:`npcnn.plan`) decides that, once.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        self.activation = get_activation_layer(activation, "Conv2D")
        self.filters = positive_int(filters, "filters", "Conv2D")
        self.kernel_size = int_pair(kernel_size, "kernel_size", "Conv2D")
        self.strides = int_pair(strides, "strides", "Conv2D")
        self.padding = K.normalize_padding(padding)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer, "Conv2D")
        self.bias_regularizer = regularizers.get(bias_regularizer, "Conv2D")
        self.regularizers = {k: r for k, r in (("kernel", self.kernel_regularizer),
                                               ("bias", self.bias_regularizer if self.use_bias else None))
                             if r is not None}

    def get_config(self):
        """Keras's keys: name, dtype, filters, kernel_size, strides, padding, activation, use_bias, the
        initializers and regularizers."""
        from npcnn.serialization import serialize_activation, serialize_initializer, serialize_regularizer

        own = self._label()
        return {**super().get_config(), "filters": self.filters, "kernel_size": tuple(self.kernel_size),
                "strides": tuple(self.strides), "padding": self.padding,
                "activation": serialize_activation(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": serialize_initializer(self.kernel_initializer, own, "kernel_initializer"),
                "bias_initializer": serialize_initializer(self.bias_initializer, own, "bias_initializer"),
                "kernel_regularizer": serialize_regularizer(self.kernel_regularizer, own, "kernel_regularizer"),
                "bias_regularizer": serialize_regularizer(self.bias_regularizer, own, "bias_regularizer")}

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

    def geometry(self, x_shape):
        """(OH, OW, pads) of this convolution over inputs of shape ``x_shape`` (N, H, W, C)."""
        return K.conv_geometry(x_shape, self.kernel_size, self.strides, self.padding)

    def forward_op(self, x, state, ctx, relu=False):
        """conv(x) + bias; with ``relu`` the kernel applies max(., 0) in the same pass (a fused ReLU)."""
        oh, ow, pads = self.geometry(x.shape)
        y, cache = K.conv2d_forward(x, self.params["kernel"], self.params.get("bias"), self.strides, pads,
                                    (oh, ow), relu=relu, ws=state.ws)
        state.cache = cache if ctx.training else None
        return y

    def backward_op(self, dy, state, ctx):
        """dx, dkernel, dbias; after a fused-ReLU forward the kernel first masks dy with [y > 0]."""
        dx, dk, db = K.conv2d_backward(dy, state.need_cache(self._label()), state.need_dx, ws=state.ws)
        state.grads = self.grads_of(dk, db)
        return dx

    def grads_of(self, dkernel, dbias):
        """{'kernel': dkernel, 'bias': dbias} (no bias entry without a bias)."""
        return {"kernel": dkernel, "bias": dbias} if self.use_bias else {"kernel": dkernel}

    def workspace_bytes(self, input_shape, batch_size, need_dx=True, relu=False):
        """{buffer: bytes} the conv kernels keep (float32): im2col.cols (pixels, KH*KW*C), conv.out
        (pixels, F); backward: conv.dz (after a fused ReLU), the bias gradient's float64 partial sums
        (64 row chunks), conv.dcols and col2im.dx (N, H, W, C) when the input gradient is needed. A
        convolution that runs by Winograd keeps that algorithm's buffers instead of the im2col ones
        (:func:`npcnn.kernels.winograd.workspace_bytes`)."""
        oh, ow, _ = self.geometry((batch_size,) + tuple(input_shape))
        pix = batch_size * oh * ow
        sizes = {"conv.db_partial": 8 * min(64, pix) * self.filters}
        if relu:
            sizes["conv.dz"] = 4 * pix * self.filters
        if not self.use_bias and relu and not self.uses_winograd(input_shape):
            sizes["conv.no_bias"] = 4 * self.filters  # im2col's bias + ReLU pass needs a zero bias then
        sizes.update(self.algorithm_workspace_bytes(input_shape, batch_size, need_dx))
        return sizes

    def algorithm_workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """{buffer: bytes} of the convolution algorithm itself (float32), also inside the fused
        conv + ReLU + pool op: im2col.cols, conv.out and, when the input gradient is needed, conv.dcols
        and col2im.dx; or the Winograd buffers (:func:`npcnn.kernels.winograd.workspace_bytes`)."""
        oh, ow, _ = self.geometry((batch_size,) + tuple(input_shape))
        if self.uses_winograd(input_shape):
            return K.winograd.workspace_bytes((batch_size,) + tuple(input_shape), self.filters, (oh, ow), need_dx)
        pix = batch_size * oh * ow
        cols = pix * self.kernel_size[0] * self.kernel_size[1] * input_shape[-1]
        sizes = {"im2col.cols": 4 * cols, "conv.out": 4 * pix * self.filters}
        if need_dx:
            sizes["conv.dcols"] = 4 * cols
            sizes["col2im.dx"] = 4 * batch_size * input_shape[0] * input_shape[1] * input_shape[2]
        return sizes

    def uses_winograd(self, input_shape):
        """Whether the Numba backend computes this convolution on inputs of ``input_shape`` (H, W, C) by
        Winograd's F(2x2, 3x3) rather than im2col (:func:`npcnn.kernels.winograd.eligible`: 3x3, stride 1,
        16+ input channels, an output of at least 64 pixels with even height and width;
        ``NPCNN_WINOGRAD=0`` turns it off)."""
        oh, ow, _ = self.geometry((1,) + tuple(input_shape))
        kernel_shape = tuple(self.kernel_size) + (int(input_shape[-1]), self.filters)
        return K.winograd.eligible(kernel_shape, self.strides, (oh, ow))


Convolution2D = Conv2D
