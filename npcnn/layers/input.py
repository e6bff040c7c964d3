"""``Input`` / ``InputLayer``: the input of a Sequential model, as Keras 3 writes it.

Keras 3 prefers an explicit input to ``input_shape=`` on the first layer::

    model = Sequential([Input(shape=(32, 32, 3)), Conv2D(32, (3, 3), activation="relu"), ...])
    model.add(Input(shape=(32, 32, 3)))          # or first, with add

``Input(...)`` returns an :class:`InputLayer`. It is not a layer of the model: it holds no weights and
no op, and :meth:`npcnn.models.Sequential.add` turns it into the model's input shape (so the layers
after it are built at once), as Keras's Sequential does. Only float32 inputs (npcnn's dtype) and
channels-last images or vectors are meant.
"""

from __future__ import annotations

import numpy as np

from npcnn.layers.base import _check_input_shape


class InputLayer:
    """The input of a Sequential model (Keras's ``keras.layers.InputLayer``).

    Args:
        shape: one sample's shape, without the batch axis, e.g. ``(32, 32, 3)``.
        batch_size: optional fixed batch size (recorded, as Keras does; npcnn takes any batch size).
        dtype: ``None`` or ``'float32'`` (npcnn computes in float32).
        batch_shape: ``(batch, ...)`` instead of ``shape`` and ``batch_size``.
        name: the input's name (default ``'input_layer'``).
    Attributes:
        shape: ``(batch_size,) + shape`` (``None`` for any batch size), as a Keras tensor's shape.
    Raises:
        ValueError: no shape, both ``shape`` and ``batch_shape``, a non-positive dimension, or another dtype.
    """

    def __init__(self, shape=None, batch_size=None, dtype=None, batch_shape=None, name=None):
        if shape is not None and batch_shape is not None:
            raise ValueError("Input: give shape=(H, W, C) or batch_shape=(None, H, W, C), not both")
        if batch_shape is not None:
            try:
                batch_shape = tuple(batch_shape)
            except TypeError:
                raise ValueError(f"Input: batch_shape must be a tuple such as (None, 32, 32, 3), got "
                                 f"{batch_shape!r}") from None
            if not batch_shape:
                raise ValueError("Input: batch_shape needs a batch axis and at least one more, got ()")
            batch_size, shape = batch_shape[0], batch_shape[1:]
        if shape is None:
            raise ValueError("Input: shape is required, e.g. Input(shape=(32, 32, 3)) (one sample, no batch axis)")
        self.per_sample = _check_input_shape(shape, "Input")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size <= 0):
            raise ValueError(f"Input: batch_size must be a positive integer or None, got {batch_size!r}")
        if dtype is not None and np.dtype(dtype) != np.float32:
            raise ValueError(f"Input: npcnn computes in float32; dtype={dtype!r} is not supported (leave it out, "
                             "integer images such as uint8 are converted batch by batch)")
        self.batch_size = None if batch_size is None else int(batch_size)
        self.dtype = "float32"
        self.name = name or "input_layer"
        self.shape = (self.batch_size,) + self.per_sample

    def get_config(self):
        """Keras's InputLayer config: ``{'batch_shape': [None, H, W, C], 'dtype': 'float32', 'name': ...}``."""
        return {"batch_shape": list(self.shape), "dtype": self.dtype, "sparse": False, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("sparse", "ragged", "optional"):  # Keras 3's flags: npcnn's inputs are dense, never None
            if config.pop(key, False):
                raise ValueError(f"InputLayer: {key}=True inputs are not supported by npcnn")
        if "batch_input_shape" in config:  # Keras 2's key
            config["batch_shape"] = config.pop("batch_input_shape")
        return cls(**config)

    def __repr__(self):
        return f"<InputLayer name={self.name!r} shape={self.shape}>"


def Input(shape=None, batch_size=None, dtype=None, batch_shape=None, name=None):  # noqa: N802 (Keras's name)
    """The input of a Sequential model (Keras's ``keras.Input``): ``Sequential([Input(shape=(32, 32, 3)), ...])``.

    Returns an :class:`InputLayer` (Keras returns a symbolic tensor; npcnn has no functional API, so
    this is only meant as the first entry of a Sequential model)."""
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, batch_shape=batch_shape, name=name)
