"""Activation layers: ReLU, Softmax, Sigmoid, Tanh, Linear, and Keras's ``Activation(name)``.

Each is an element-wise (or row-wise) op with no weights; its cache is its output y, from which
the backward pass is computed. ``get_activation_layer('relu')`` gives the layer behind Keras's
``activation='relu'`` argument of Dense and Conv2D.
"""

from __future__ import annotations

import numpy as np

from npcnn import kernels as K
from npcnn.layers.base import Layer
from npcnn.utils import lookup


class _Elementwise(Layer):
    """An element-wise activation whose kernels keep ``<kernel>.out`` and its gradient ``<kernel>.<dx>``."""

    kernel, dx_name = "", "dx"

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        n = 4 * batch_size * int(np.prod(input_shape))
        return {f"{self.kernel}.out": n, f"{self.kernel}.{self.dx_name}": n}


class ReLU(_Elementwise):
    """y = max(x, 0); backward dx = dy * [y > 0] (0 at exactly 0, PyTorch's convention).

    Shapes: x, y, dy, dx all (N, ...), unchanged. Kernels: ``relu_forward``/``relu_backward``.
    """

    activation_name = kernel = "relu"

    def forward_op(self, x, state, ctx):
        y, cache = K.relu_forward(x, ws=state.ws)
        state.cache = cache if ctx.training else None
        return y

    def backward_op(self, dy, state, ctx):
        return K.relu_backward(dy, state.need_cache(self._label()), ws=state.ws)


class Softmax(_Elementwise):
    """p = softmax(z) along the last axis, with the per-row maximum subtracted.

    Backward (used only when the softmax does not feed the fused cross-entropy, see
    :mod:`npcnn.plan`): dz = p * (dp - sum(dp * p)). Shapes: z, p (N, K).
    """

    activation_name = kernel = "softmax"
    dx_name = "dz"

    def __init__(self, axis=-1, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        if axis not in (-1,):
            raise ValueError(f"Softmax: only axis=-1 is supported, got {axis!r}")

    def forward_op(self, x, state, ctx):
        p, cache = K.softmax_forward(x, ws=state.ws)
        state.cache = cache if ctx.training else None
        return p

    def backward_op(self, dp, state, ctx):
        return K.softmax_backward(dp, state.need_cache(self._label()), ws=state.ws)


class Sigmoid(_Elementwise):
    """y = 1 / (1 + exp(-x)) (computed as 0.5 (1 + tanh(x / 2)), stable); dx = dy * y * (1 - y)."""

    activation_name = kernel = "sigmoid"

    def forward_op(self, x, state, ctx):
        y, cache = K.sigmoid_forward(x, ws=state.ws)
        state.cache = cache if ctx.training else None
        return y

    def backward_op(self, dy, state, ctx):
        return K.sigmoid_backward(dy, state.need_cache(self._label()), ws=state.ws)


class Tanh(_Elementwise):
    """y = tanh(x); dx = dy * (1 - y^2)."""

    activation_name = kernel = "tanh"

    def forward_op(self, x, state, ctx):
        y, cache = K.tanh_forward(x, ws=state.ws)
        state.cache = cache if ctx.training else None
        return y

    def backward_op(self, dy, state, ctx):
        return K.tanh_backward(dy, state.need_cache(self._label()), ws=state.ws)


class Linear(Layer):
    """Identity activation ('linear'): y = x, dx = dy."""

    activation_name = "linear"


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
    """Applies a named activation ('relu', 'softmax', 'sigmoid', 'tanh', 'linear') as its own layer.

    Its op is the identity and ``activation`` the named layer, so the model's plan treats
    ``Dense(10) -> Activation('softmax')`` exactly like ``Dense(10, activation='softmax')``.
    """

    def __init__(self, activation, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        self.activation = get_activation_layer(activation, "Activation") or Linear()

    def __repr__(self):
        return f"Activation({self.activation.activation_name!r}, name={self.name!r})"
