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

from npcnn.utils import float_dtype


class Layer:
    """Base class. Subclasses implement ``compute_output_shape``, ``forward_pre`` and ``backward_pre``."""

    def __init__(self, name=None, input_shape=None, activation=None, dtype="float32"):
        from npcnn.layers.core import get_activation_layer

        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a string, got {name!r}")
        self.name = name
        self.dtype = float_dtype(dtype, type(self).__name__)
        self.input_shape = _check_input_shape(input_shape, type(self).__name__)
        self.activation = get_activation_layer(activation, type(self).__name__)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.built = False
        self.need_input_grad = True  # the model turns this off for its first layer
        self.output_shape = None
        self.built_input_shape = None
        self._out_shape = None  # full shape of the last training forward's output, checked by backward

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
        """y = activation(op(x)). x: (N,) + input_shape. Returns (N,) + output_shape.

        Raises:
            TypeError: x is not a float array.
            ValueError: x's shape does not match the shape the layer was built for.
        """
        self._prepare_input(x)
        z = self.forward_pre(x, training)
        y = self.activation.forward(z, training) if self.activation is not None else z
        self._out_shape = y.shape if training else None
        return y

    def backward(self, dy):
        """dx = op'^T (activation'^T dy). Fills ``self.grads``; returns dx (or None if not needed).

        Raises:
            ValueError: dy's shape differs from the output of the preceding ``forward(x, training=True)``.
        """
        if self._out_shape is not None and np.shape(dy) != self._out_shape:
            raise ValueError(
                f"{self._label()}: dy has shape {np.shape(dy)}, but the last forward(training=True) "
                f"gave an output of shape {self._out_shape}"
            )
        if self.activation is not None:
            dy = self.activation.backward(dy)
        return self.backward_pre(dy)

    def forward_pre(self, x, training=False):
        """The layer's own op, before its activation."""
        return x

    def backward_pre(self, dz):
        """Backward of the layer's own op: dz (gradient w.r.t. the pre-activation) -> dx."""
        return dz

    def _label(self):
        return f"{type(self).__name__} {self.name!r}" if self.name else type(self).__name__

    def _prepare_input(self, x):
        """Check x (a float array, (N,) + the built input shape) and build the layer on first use.

        Every ``forward`` runs this before any kernel: a few comparisons, no pass over the data.
        """
        if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
            desc = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
            raise TypeError(f"{self._label()}: x must be a float NumPy array, got {desc}")
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"{self._label()}: x must have a batch axis and at least one sample, got shape {x.shape}")
        if not self.built:
            self.build(x.shape[1:])
        elif x.shape[1:] != self.built_input_shape:
            raise ValueError(
                f"{self._label()}: x has shape {x.shape}, but the layer was built for inputs of shape "
                f"(N,) + {self.built_input_shape}"
            )

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
        """Copy ``weights`` (Keras order and layouts) into the existing arrays, in place.

        Raises:
            ValueError: wrong count, shapes, or non-finite values (every mismatch is listed).
            TypeError: ``weights`` is not a list of numeric arrays.
        """
        if not self.built:
            raise ValueError(f"{self._label()}.set_weights: the layer is not built yet (its weights do not exist)")
        expected = [(f"layer {self.name!r} {key}", p.shape) for key, p in self.params.items()]
        arrays = check_weight_list(weights, expected, f"{self._label()}.set_weights")
        for p, w in zip(self.params.values(), arrays):
            p[...] = w

    def __repr__(self):
        act = f", activation={self.activation.activation_name!r}" if self.activation is not None else ""
        return f"{type(self).__name__}(name={self.name!r}{act})"


def check_weight_list(weights, expected, where):
    """Check a list of weight arrays against ``expected`` [(label, shape)]; return them as arrays.

    Every problem is listed in one ``ValueError``: a wrong count, each wrong shape (by layer),
    each array holding NaN/Inf. Non-numeric arrays raise ``TypeError``.
    """
    if isinstance(weights, np.ndarray) or not hasattr(weights, "__iter__"):
        raise TypeError(f"{where}: weights must be a list of arrays, got {type(weights).__name__}")
    weights = list(weights)
    problems = []
    if len(weights) != len(expected):
        problems.append(f"expected {len(expected)} arrays, got {len(weights)}")
    arrays = []
    for i, ((label, shape), w) in enumerate(zip(expected, weights)):
        try:
            a = np.asarray(w)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{where}: array {i} ({label}) is not an array: {e}") from None
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{where}: array {i} ({label}) must hold numbers, got dtype {a.dtype}")
        if a.shape != shape:
            problems.append(f"array {i} ({label}): expected shape {shape}, got {a.shape}")
        elif a.dtype.kind == "f" and not np.isfinite(a).all():
            problems.append(f"array {i} ({label}): contains NaN or Inf")
        arrays.append(a)
    if len(weights) < len(expected):
        problems += [f"array {i} ({label}, shape {shape}): missing"
                     for i, (label, shape) in enumerate(expected[len(weights):], start=len(weights))]
    if len(weights) > len(expected):
        problems += [f"array {i}: unexpected (shape {np.shape(w)}), the model has no weight for it"
                     for i, w in enumerate(weights[len(expected):], start=len(expected))]
    if problems:
        raise ValueError(f"{where}: weights do not match:\n  " + "\n  ".join(problems))
    return arrays


def _check_input_shape(input_shape, owner):
    if input_shape is None:
        return None
    if isinstance(input_shape, (int, np.integer)):
        input_shape = (input_shape,)
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(f"{owner}: input_shape must be a tuple of positive ints, got {input_shape!r}") from None
    if shape and shape[0] is None:
        raise ValueError(
            f"{owner}: input_shape is one sample's shape, without the batch axis: use "
            f"input_shape={shape[1:]!r}, not {input_shape!r}"
        )
    if not shape:
        raise ValueError(f"{owner}: input_shape must be a non-empty tuple of positive ints, got {input_shape!r}")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d <= 0:
            raise ValueError(f"{owner}: input_shape must be a tuple of positive ints, got {input_shape!r}")
    return tuple(int(d) for d in shape)
