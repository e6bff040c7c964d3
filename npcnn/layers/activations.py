"""Activation layers: ReLU, Softmax, Sigmoid, Tanh, ELU, GELU, LeakyReLU, Linear, and Keras's
``Activation(name)``.

Each is an element-wise (or, for the softmax, axis-wise) op with no weights; its cache is what its
backward needs (the output y for ReLU, sigmoid, tanh and softmax; x for GELU and LeakyReLU; x and y
for ELU). ``get_activation_layer('relu')`` gives the layer behind Keras's ``activation='relu'``
argument of Dense and Conv2D; the names are Keras's: 'relu', 'softmax', 'sigmoid', 'tanh', 'elu',
'gelu', 'leaky_relu', 'linear'.
"""

from __future__ import annotations

import numbers

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
    """p = softmax(z) along ``axis``, with the maximum along that axis subtracted.

    Backward (used only when the softmax does not feed the fused cross-entropy, see
    :mod:`npcnn.plan`): dz = p * (dp - sum_axis(dp * p)). Shapes: z, p (N, ...), unchanged.

    Args:
        axis: the axis of the whole input (batch axis 0, as in Keras), -1 (the default) for the last.
            The batch axis itself is refused: its softmax would depend on how a batch is split.
    Kernels: ``softmax_forward``/``softmax_backward`` along the last axis, ``softmax_axis_forward``/
    ``softmax_axis_backward`` along any other.
    Raises:
        TypeError: axis not an int. ValueError: axis 0 (the batch axis); at the first call, an axis
            outside the input's rank.
    """

    activation_name = kernel = "softmax"
    dx_name = "dz"

    def __init__(self, axis=-1, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"Softmax: axis must be an int, got {axis!r}")
        if axis == 0:
            raise ValueError("Softmax: axis=0 is the batch axis, whose softmax would depend on how a batch is "
                             "split; use an axis of the samples (1, 2, ... or -1)")
        self.axis = int(axis)

    def get_config(self):
        """Keras's keys: axis."""
        return {**super().get_config(), "axis": self.axis}

    def _axis(self, ndim):
        """The axis as an index in [1, ndim) for inputs of ``ndim`` dimensions (batch axis included)."""
        if not -ndim < self.axis < ndim:  # -ndim would be the batch axis
            raise ValueError(f"Softmax {self.name or ''}: axis={self.axis} is outside the input's axes "
                             f"1..{ndim - 1} (or -1..{-(ndim - 1)}) for inputs of rank {ndim}")
        return self.axis % ndim

    def over_last_axis(self):
        """True when the softmax runs along the last axis: axis=-1, or the last axis of the built shape
        (the only softmax a loss head may fuse with the cross-entropy, see :mod:`npcnn.plan`)."""
        if self.axis == -1:
            return True
        shape = self.built_input_shape
        return shape is not None and self.axis == len(shape)

    def forward_op(self, x, state, ctx):
        axis = self._axis(x.ndim)
        if axis == x.ndim - 1:
            p, cache = K.softmax_forward(x, ws=state.ws)
        else:
            p, cache = K.softmax_axis_forward(x, axis, ws=state.ws)
        state.cache = cache if ctx.training else None
        return p

    def backward_op(self, dp, state, ctx):
        cache = state.need_cache(self._label())
        if isinstance(cache, np.ndarray):  # the last-axis kernels' cache is p itself
            return K.softmax_backward(dp, cache, ws=state.ws)
        return K.softmax_axis_backward(dp, cache, ws=state.ws)

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        n = 4 * batch_size * int(np.prod(input_shape))
        name = "softmax" if self._axis(len(input_shape) + 1) == len(input_shape) else "softmax_axis"
        return {f"{name}.out": n, f"{name}.dz": n}

    def __repr__(self):
        extra = f", axis={self.axis}" if self.axis != -1 else ""
        return f"Softmax(name={self.name!r}{extra})"


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


class ELU(_Elementwise):
    """y = x where x > 0, else alpha * (exp(x) - 1); dx = dy where x > 0, else dy * (y + alpha).

    The gradient at exactly 0 is alpha (PyTorch's convention, continuous for alpha = 1). The cache
    keeps x (for the mask), y and alpha. Kernels: ``elu_forward``/``elu_backward``.

    Args:
        alpha: the scale of the negative part (Keras's default 1.0).
    """

    activation_name = kernel = "elu"

    def __init__(self, alpha=1.0, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        self.alpha = _number(alpha, "alpha", "ELU")

    def get_config(self):
        """Keras's keys: alpha."""
        return {**super().get_config(), "alpha": self.alpha}

    def forward_op(self, x, state, ctx):
        y, cache = K.elu_forward(x, self.alpha, ws=state.ws)
        state.cache = cache if ctx.training else None
        return y

    def backward_op(self, dy, state, ctx):
        return K.elu_backward(dy, state.need_cache(self._label()), ws=state.ws)

    def __repr__(self):
        return f"ELU(name={self.name!r}, alpha={self.alpha})"


class GELU(_Elementwise):
    """y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), the exact form (Keras's 'gelu', approximate=False);
    dx = dy * (Phi(x) + x * phi(x)), phi the standard normal density. Computed in float64.

    The cache keeps x. Kernels: ``gelu_forward``/``gelu_backward``. (Keras has the activation 'gelu'
    but no GELU layer; this class is what ``activation='gelu'`` runs.)

    Raises:
        ValueError: approximate=True (the tanh approximation is not implemented).
    """

    activation_name = kernel = "gelu"

    def __init__(self, approximate=False, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        if approximate:
            raise ValueError("GELU: approximate=True (the tanh approximation) is not supported; use the exact "
                             "form, approximate=False (Keras's default)")
        self.approximate = False

    def get_config(self):
        """Keras's keys: approximate."""
        return {**super().get_config(), "approximate": self.approximate}

    def forward_op(self, x, state, ctx):
        y, cache = K.gelu_forward(x, ws=state.ws)
        state.cache = cache if ctx.training else None
        return y

    def backward_op(self, dy, state, ctx):
        return K.gelu_backward(dy, state.need_cache(self._label()), ws=state.ws)


class LeakyReLU(_Elementwise):
    """y = x where x > 0, else negative_slope * x; dx = dy where x > 0, else dy * negative_slope.

    The gradient at exactly 0 is negative_slope (PyTorch's convention). The cache keeps x and the
    slope. Kernels: ``leaky_relu_forward``/``leaky_relu_backward``.

    Args:
        negative_slope: the slope for x <= 0, a number >= 0 (Keras 3's name and default, 0.3; the
            activation string 'leaky_relu' uses Keras's function default, 0.2). Keras 2's ``alpha``
            is accepted as the same argument.
    Raises:
        ValueError: a negative or non-numeric slope.
    """

    activation_name = kernel = "leaky_relu"

    def __init__(self, negative_slope=0.3, name=None, input_shape=None, **kwargs):
        if "alpha" in kwargs:  # Keras 2's name of the argument
            negative_slope = kwargs.pop("alpha")
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        self.negative_slope = _number(negative_slope, "negative_slope", "LeakyReLU")
        if self.negative_slope < 0:
            raise ValueError(f"LeakyReLU: negative_slope must be >= 0, got {negative_slope!r}")

    def get_config(self):
        """Keras 3's keys: negative_slope."""
        return {**super().get_config(), "negative_slope": self.negative_slope}

    def forward_op(self, x, state, ctx):
        y, cache = K.leaky_relu_forward(x, self.negative_slope, ws=state.ws)
        state.cache = cache if ctx.training else None
        return y

    def backward_op(self, dy, state, ctx):
        return K.leaky_relu_backward(dy, state.need_cache(self._label()), ws=state.ws)

    def __repr__(self):
        return f"LeakyReLU(name={self.name!r}, negative_slope={self.negative_slope})"


def _number(value, name, owner):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)


class Linear(Layer):
    """Identity activation ('linear'): y = x, dx = dy."""

    activation_name = "linear"


def _keras_leaky_relu():
    """'leaky_relu' as Keras's activation function: negative_slope=0.2 (the layer's default is 0.3)."""
    return LeakyReLU(negative_slope=0.2)


_ACTIVATIONS = {"relu": ReLU, "softmax": Softmax, "linear": Linear, "sigmoid": Sigmoid, "tanh": Tanh,
                "elu": ELU, "gelu": GELU, "leaky_relu": _keras_leaky_relu}


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
    """Applies a named activation ('relu', 'softmax', 'sigmoid', 'tanh', 'elu', 'gelu', 'leaky_relu',
    'linear') as its own layer.

    Its op is the identity and ``activation`` the named layer, so the model's plan treats
    ``Dense(10) -> Activation('softmax')`` exactly like ``Dense(10, activation='softmax')``.
    """

    def __init__(self, activation, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        self.activation = get_activation_layer(activation, "Activation") or Linear()

    def get_config(self):
        """Keras's keys: activation (a name, or a layer's config when a name would lose its settings)."""
        from npcnn.serialization import serialize_activation

        return {**super().get_config(), "activation": serialize_activation(self.activation)}

    def __repr__(self):
        return f"Activation({self.activation.activation_name!r}, name={self.name!r})"
