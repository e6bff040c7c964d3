"""Dropout (Keras's layer): inverted dropout with masks that do not depend on how the batch is split.

The math and the mask's generator are in docs/dropout.md and :mod:`npcnn.kernels.dropout`.
"""

from __future__ import annotations

import numbers
import zlib

import numpy as np

from npcnn import kernels as K
from npcnn.kernels.dropout import fold_seed
from npcnn.layers.base import Layer

_IDENTITY = "identity"  # the cache of a training forward that masked nothing (rate 0)


class Dropout(Layer):
    """Training: ``y = x * keep / (1 - rate)``, each element kept with probability 1 - rate; inference: y = x.

    Shapes: x, y (N, ...); the mask is (N,) + the per-sample noise shape (uint8, 1 = kept).
    Backward: ``dx = dy * keep / (1 - rate)`` with the forward's mask.

    The mask of sample n of the batch is a pure function of (the step's seed, this layer, n's index in
    the whole batch) (:func:`npcnn.kernels.dropout.fold_seed` of ``ctx.seed`` and the layer's ``seed``,
    or a stable number derived from its name): two Dropout layers draw different masks, each step draws
    new ones (the model gives every training step its own seed), and a batch split across threads gets
    the masks of the unsplit batch.

    Args:
        rate: fraction of the inputs to drop, a number in [0, 1); 0 is the identity.
        noise_shape: Keras's mask shape, batch axis first, e.g. ``(None, 1, 1, C)`` to drop whole channels
            of (N, H, W, C) inputs; each entry None (the input's size), 1 (one value shared along that
            axis) or the input's size. Every sample draws its own mask (the batch entry is None or the
            batch size; 1, one mask for the whole batch, is not supported).
        seed: an int that fixes this layer's masks for a given step seed (default: derived from the name).
    Raises:
        ValueError: rate outside [0, 1); a noise_shape that does not fit the input (at build).
        TypeError: rate not a number, seed not an int, noise_shape not a tuple.

    Example::

        model.add(Flatten())
        model.add(Dropout(0.5))
        model.add(Dense(10, activation='softmax'))
    """

    needs_rng = True

    def __init__(self, rate, noise_shape=None, seed=None, name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, numbers.Real):
            raise TypeError(f"Dropout: rate must be a number in [0, 1), got {rate!r} ({type(rate).__name__})")
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1) (the fraction of inputs dropped), got {rate!r}")
        self.rate = float(rate)
        self.noise_shape = _check_noise_shape(noise_shape)
        if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"Dropout: seed must be an int or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)

    def get_config(self):
        """Keras's keys: rate, noise_shape, seed."""
        return {**super().get_config(), "rate": self.rate, "noise_shape": self.noise_shape, "seed": self.seed}

    def compute_output_shape(self, input_shape):
        self._sample_noise_shape(input_shape)
        return tuple(input_shape)

    def _sample_noise_shape(self, input_shape):
        """The kernel's per-sample noise shape (None: the sample's shape) for one sample's input shape."""
        if self.noise_shape is None:
            return None
        sample = tuple(input_shape)
        ns = self.noise_shape
        if len(ns) != len(sample) + 1:
            raise ValueError(f"Dropout: noise_shape {ns} must have one entry per axis of the input, batch axis "
                             f"first: {len(sample) + 1} for inputs of shape {(None,) + sample}")
        if ns[0] == 1:
            raise ValueError(f"Dropout: noise_shape {ns}: a batch entry of 1 (one mask shared by the whole batch) "
                             "is not supported; every sample draws its own mask: use None")
        per_sample = tuple(s if d is None else d for d, s in zip(ns[1:], sample))
        if any(d not in (1, s) for d, s in zip(per_sample, sample)):
            raise ValueError(f"Dropout: noise_shape {ns}: each entry after the batch axis must be None, 1 or the "
                             f"input's size {sample}")
        return per_sample

    def layer_seed(self):
        """This layer's own number, folded with each step's seed: ``seed``, else the CRC-32 of the name."""
        if self.seed is not None:
            return self.seed
        return zlib.crc32((self.name or "dropout").encode("utf-8"))

    def forward_op(self, x, state, ctx):
        if not ctx.training or self.rate == 0.0:
            state.cache = _IDENTITY if ctx.training else None
            return x
        seed = fold_seed(ctx.seed, self.layer_seed())
        y, cache = K.dropout_forward(x, self.rate, seed, ctx.sample_offset, self._sample_noise_shape(x.shape[1:]),
                                     ws=state.ws)
        state.cache = cache
        return y

    def backward_op(self, dy, state, ctx):
        cache = state.need_cache(self._label())
        if not state.need_dx:
            return None
        if cache is _IDENTITY:
            return dy
        return K.dropout_backward(dy, cache, ws=state.ws)

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """{buffer: bytes} the Numba kernels keep (float32): the uint8 mask (N,) + noise shape and y;
        with a broadcast noise shape the int64 index table (one per sample element) of the forward and
        the backward; backward: dx when the input gradient is needed. None at rate 0."""
        if self.rate == 0.0:
            return {}
        size = int(np.prod(input_shape, dtype=np.int64))
        noise = self._sample_noise_shape(input_shape)
        cells = size if noise is None else int(np.prod(noise, dtype=np.int64))
        sizes = {"dropout_forward.mask": batch_size * cells, "dropout_forward.y": 4 * batch_size * size}
        broadcast = noise is not None and tuple(noise) != tuple(input_shape)
        if broadcast:
            sizes["dropout_forward.index"] = 8 * size
        if need_dx:
            sizes["dropout_backward.dx"] = 4 * batch_size * size
            if broadcast:
                sizes["dropout_backward.index"] = 8 * size
        return sizes

    def __repr__(self):
        extra = f", noise_shape={self.noise_shape}" if self.noise_shape is not None else ""
        extra += f", seed={self.seed}" if self.seed is not None else ""
        return f"Dropout(name={self.name!r}, rate={self.rate}{extra})"


def _check_noise_shape(noise_shape):
    if noise_shape is None:
        return None
    if not isinstance(noise_shape, (tuple, list)):
        raise TypeError(f"Dropout: noise_shape must be a tuple such as (None, 1, 1, C), got {noise_shape!r}")
    out = []
    for d in noise_shape:
        if d is None:
            out.append(None)
        elif isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d <= 0:
            raise ValueError(f"Dropout: noise_shape entries must be None or positive ints, got {tuple(noise_shape)!r}")
        else:
            out.append(int(d))
    if not out:
        raise ValueError("Dropout: noise_shape must not be empty")
    return tuple(out)
