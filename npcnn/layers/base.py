"""The Layer contract shared by every npcnn layer.

A layer owns ``params`` (name -> array, e.g. 'kernel', 'bias') and, after
``backward``, ``grads`` with the same keys. ``forward(x, training)`` caches what
backward needs (only when training); ``backward(dy)`` returns dx, fills
``grads`` and never updates weights or writes into ``dy``. Only the optimizer
changes weights.

A layer with an ``activation`` computes ``y = activation(z)``, ``z = op(x)``:
``forward_pre``/``backward_pre`` are the layer's own op alone, so the model can
fuse a final softmax with the cross-entropy (gradient (p - onehot)/N).
"""

from __future__ import annotations

import numpy as np


class Layer:
    """Base class. Subclasses implement ``compute_output_shape``, ``forward_pre`` and ``backward_pre``."""

    def __init__(self, name=None, input_shape=None, activation=None, dtype="float32"):
        from npcnn.layers.core import get_activation_layer

        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a string, got {name!r}")
        self.name = name
        self.dtype = np.dtype(dtype)
        self.input_shape = _check_input_shape(input_shape, type(self).__name__)
        self.activation = get_activation_layer(activation)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.built = False
        self.need_input_grad = True  # the model turns this off for its first layer
        self.output_shape = None
        self.built_input_shape = None

    # --- shapes -----------------------------------------------------------------
    def build(self, input_shape):
        """Create the weights for inputs of shape ``(None,) + input_shape``; returns the output shape."""
        input_shape = tuple(int(d) for d in input_shape)
        self.built_input_shape = input_shape
        self.output_shape = self.compute_output_shape(input_shape)
        self.built = True
        return self.output_shape

    def compute_output_shape(self, input_shape):
        """Shape of one sample's output (no batch axis) for one sample's input shape."""
        return tuple(input_shape)

    # --- passes -----------------------------------------------------------------
    def forward(self, x, training=False):
        """y = activation(op(x)). x: (N,) + input_shape. Returns (N,) + output_shape."""
        if not self.built:
            self.build(x.shape[1:])
        z = self.forward_pre(x, training)
        if self.activation is not None:
            return self.activation.forward(z, training)
        return z

    def backward(self, dy):
        """dx = op'^T (activation'^T dy). Fills ``self.grads``; returns dx (or None if not needed)."""
        if self.activation is not None:
            dy = self.activation.backward(dy)
        return self.backward_pre(dy)

    def forward_pre(self, x, training=False):
        """The layer's own op, before its activation."""
        return x

    def backward_pre(self, dz):
        """Backward of the layer's own op: dz (gradient w.r.t. the pre-activation) -> dx."""
        return dz

    def _need_cache(self, cache):
        if cache is None:
            raise RuntimeError(
                f"{self.name or type(self).__name__}: backward() needs a preceding forward(x, training=True)"
            )
        return cache

    # --- weights ----------------------------------------------------------------
    def count_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def get_weights(self):
        """Copies of the weights in Keras order (kernel, then bias)."""
        return [p.copy() for p in self.params.values()]

    def set_weights(self, weights):
        """Copy ``weights`` (Keras order and layouts) into the existing arrays, in place."""
        weights = list(weights)
        if len(weights) != len(self.params):
            raise ValueError(
                f"layer {self.name!r} expects {len(self.params)} weight arrays, got {len(weights)}"
            )
        for (key, p), w in zip(self.params.items(), weights):
            w = np.asarray(w)
            if w.shape != p.shape:
                raise ValueError(f"layer {self.name!r} {key}: expected shape {p.shape}, got {w.shape}")
            p[...] = w

    def __repr__(self):
        act = f", activation={self.activation.activation_name!r}" if self.activation is not None else ""
        return f"{type(self).__name__}(name={self.name!r}{act})"


def _check_input_shape(input_shape, owner):
    if input_shape is None:
        return None
    if isinstance(input_shape, (int, np.integer)):
        input_shape = (input_shape,)
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(f"{owner}: input_shape must be a tuple of positive ints, got {input_shape!r}") from None
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d <= 0:
            raise ValueError(f"{owner}: input_shape must be a tuple of positive ints, got {input_shape!r}")
    return tuple(int(d) for d in shape)
