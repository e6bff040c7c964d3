"""The layer contract: what a layer owns, and what the caller owns.

A layer **owns its weights** and nothing that changes during a pass:

* ``params``: trained arrays (name -> array, e.g. 'kernel', 'bias'), updated in place by the optimizer;
* ``buffers``: saved but not trained (Keras's non-trainable weights, e.g. BatchNormalization's
  moving statistics); they appear in ``get_weights``, ``save_weights``, checkpoints and the summary's
  "Non-trainable params", and change only through the *updates* a training pass declares.

The **caller owns the per-call state** (a :class:`LayerState` per layer: the cache backward needs,
the reusable scratch buffers, the gradients, the declared buffer updates) and the **context** of the
pass (a :class:`Context`: training or inference, the step's random seed, where the shard sits in the
whole batch, and how to sum an array over all shards). So one layer object can run in several
threads or shards at once, each with its own state.

A layer implements its own op as two methods, the chain rule next to the forward::

    forward_op(x, state, ctx)   -> y        x: (N,) + input_shape, y: (N,) + output_shape
    backward_op(dy, state, ctx) -> dx       fills state.grads (same keys as params); dx None when
                                            state.need_dx is False (the first layer)

Backward never writes into ``dy`` nor into its cache, and never changes weights (only the optimizer
does); a training forward may declare new values of ``buffers`` in ``state.updates``, which the model
applies once per step. No layer reads or writes another layer's fields: fusing layers is the model's
plan's business (:mod:`npcnn.plan`).

A layer with an ``activation`` (Keras's ``Dense(64, activation='relu')``) is its op followed by that
activation layer; the model's plan runs the two as two steps, or fuses them.

Called by itself (``layer.forward(x, training=True)``, then ``layer.backward(dy)``), a layer keeps one
private state for convenience, with no reusable buffers (every array is fresh). The model never uses
it: see :class:`npcnn.models.Sequential`.
"""

from __future__ import annotations

import numpy as np

from npcnn.utils import float_dtype, get_rng


class Context:
    """How one pass runs, shared by every layer of the pass.

    Attributes:
        training: training mode (caches kept, batch statistics, random masks) or inference.
        seed: the step's random seed (an int), for layers that draw random numbers (``needs_rng``);
            a layer combines it with its own index so that two layers draw different numbers.
        sample_offset: index in the whole batch of this shard's first sample (0 when unsharded).
        batch_size: number of samples in the whole batch (all shards).
        reduce: ``reduce(array) -> array``, the sum of ``array`` over all shards of this batch (in
            shard order, the same result in every shard); the identity when the batch is unsharded.
        parallel: whether kernels may split their work across threads (False inside a shard).
    """

    __slots__ = ("training", "seed", "sample_offset", "batch_size", "reduce", "parallel")

    def __init__(self, training=False, seed=0, sample_offset=0, batch_size=None, reduce=None, parallel=None):
        self.training = bool(training)
        self.seed = int(seed)
        self.sample_offset = int(sample_offset)
        self.batch_size = batch_size
        self.reduce = reduce if reduce is not None else _identity
        self.parallel = parallel

    def __repr__(self):
        return (f"Context(training={self.training}, seed={self.seed}, sample_offset={self.sample_offset}, "
                f"batch_size={self.batch_size}, parallel={self.parallel})")


def _identity(a):
    return a


class LayerState:
    """The per-call state of one layer (or one fused block) in one run, owned by the caller.

    Attributes:
        cache: what the last training forward kept for backward (None after an inference forward).
        ws: reusable scratch buffers for the kernels (a :class:`npcnn.kernels.workspace.Workspace`),
            or None (every kernel output is a fresh array).
        grads: {param name: gradient} from the last backward.
        updates: {buffer name: new value} declared by the last training forward.
        need_dx: whether backward must compute the input gradient (False for a model's first layer).
        out_shape: shape of the last training forward's output (backward checks dy against it).
        info: {name: array} a forward may leave for a learner to inspect (e.g. BatchNormalization's
            batch mean and variance); ``model.trace`` shows it.
        inner: the states of the steps inside a fused block that runs them one by one in training
            (:class:`npcnn.plan.ConvBNReLU`), else None.
    """

    __slots__ = ("cache", "ws", "grads", "updates", "need_dx", "out_shape", "info", "inner")

    def __init__(self, ws=None, need_dx=True):
        self.cache = None
        self.ws = ws
        self.grads = {}
        self.updates = {}
        self.need_dx = need_dx
        self.out_shape = None
        self.info = {}
        self.inner = None

    def need_cache(self, owner):
        """The cache, or a clear error when no training forward ran before this backward."""
        if self.cache is None:
            raise RuntimeError(f"{owner}: backward() needs a preceding forward(x, training=True)")
        return self.cache


class Layer:
    """Base class. Subclasses implement ``compute_output_shape``, ``build`` (creating ``params`` and
    ``buffers``), ``forward_op`` and ``backward_op``."""

    needs_rng = False  # True for layers that draw random numbers in training (they use ctx.seed)

    def __init__(self, name=None, input_shape=None, dtype="float32", trainable=True, data_format=None):
        if not isinstance(trainable, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}: trainable must be True or False, got {trainable!r}")
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{type(self).__name__}: data_format={data_format!r} is not supported: npcnn works "
                             "channels last (N, H, W, C) only; transpose the data with x.transpose(0, 2, 3, 1)")
        self.trainable = bool(trainable)  # False: the optimizer leaves params alone (Keras's frozen layer)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{type(self).__name__}: name must be a string, got {name!r}")
        self.name = name
        self.dtype = float_dtype(dtype, type(self).__name__)
        self.input_shape = _check_input_shape(input_shape, type(self).__name__)
        self.activation = None  # an activation layer run after the op (Dense and Conv2D take one)
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.regularizers = {}  # {param name: regularizer}: a penalty R(w) added to the loss (see npcnn.plan)
        self.grads: dict[str, np.ndarray] = {}  # the last backward's gradients, published by whoever ran it
        self.built = False
        self.output_shape = None
        self.built_input_shape = None
        self._own = None  # the private state of standalone calls (layer.forward / layer.backward)

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

    # --- the op (subclasses) ----------------------------------------------------
    def forward_op(self, x, state, ctx):
        """The layer's own op, before its activation. Default: the identity."""
        return x

    def backward_op(self, dy, state, ctx):
        """Backward of :meth:`forward_op`: dy (gradient w.r.t. its output) -> dx; fills state.grads."""
        return dy

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """{buffer name: bytes} of the scratch buffers a training step of ``batch_size`` float32
        samples keeps in this layer's workspace (Numba backend); {} for layers whose kernels keep none."""
        return {}

    # --- standalone use -----------------------------------------------------------
    def forward(self, x, training=False):
        """y = activation(op(x)) with the layer's private state. x: (N,) + input_shape.

        Raises:
            TypeError: x is not a float array.
            ValueError: x's shape does not match the shape the layer was built for.
        """
        self._prepare_input(x)
        # a random layer draws a fresh seed from npcnn's generator each call, as a training step does
        ctx = Context(training, seed=int(get_rng().integers(0, 2**63)) if training and self.needs_rng else 0)
        own = self._own = (LayerState(), LayerState(), ctx)
        y = self.forward_op(x, own[0], ctx)
        if self.activation is not None:
            y = self.activation.forward_op(y, own[1], ctx)
        own[0].out_shape = y.shape if training else None
        return y

    def backward(self, dy):
        """dx for dy after :meth:`forward` (``training=True``); fills ``self.grads``.

        Raises:
            RuntimeError: no training forward before.
            ValueError: dy's shape differs from that forward's output.
        """
        if self._own is None or self._own[0].out_shape is None:
            raise RuntimeError(f"{self._label()}: backward() needs a preceding forward(x, training=True)")
        st, act_st, ctx = self._own
        if np.shape(dy) != st.out_shape:
            raise ValueError(f"{self._label()}: dy has shape {np.shape(dy)}, but the last forward(training=True) "
                             f"gave an output of shape {st.out_shape}")
        if self.activation is not None:
            dy = self.activation.backward_op(dy, act_st, ctx)
        dx = self.backward_op(dy, st, ctx)
        self.grads = st.grads
        return dx

    def _label(self):
        return f"{type(self).__name__} {self.name!r}" if self.name else type(self).__name__

    def _prepare_input(self, x):
        """Check x (a float array, (N,) + the built input shape) and build the layer on first use."""
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

    # --- weights ----------------------------------------------------------------
    def weight_items(self):
        """[(key, array, trainable)] in Keras order: the params, then the buffers."""
        return ([(k, p, True) for k, p in self.params.items()]
                + [(k, b, False) for k, b in self.buffers.items()])

    def count_params(self) -> int:
        """Trainable and non-trainable values together (as Keras's summary counts them)."""
        return int(sum(a.size for _, a, _ in self.weight_items()))

    def count_trainable(self) -> int:
        """Values the optimizer trains: the params of a trainable layer (0 when ``trainable`` is False)."""
        return int(sum(p.size for p in self.params.values())) if self.trainable else 0

    def get_weights(self):
        """Copies of the weights in Keras order (params such as kernel then bias, then buffers)."""
        return [a.copy() for _, a, _ in self.weight_items()]

    def set_weights(self, weights):
        """Copy ``weights`` (Keras order and layouts) into the existing arrays, in place, all or nothing
        (see :func:`npcnn.saving.set_layer_weights`).

        Raises:
            ValueError: not built; wrong count, shapes, or non-finite values (every mismatch is listed).
            TypeError: ``weights`` is not a list of numeric arrays.
        """
        from npcnn.saving import set_layer_weights

        set_layer_weights(self, weights)

    # --- configs (Keras's get_config / from_config) ---------------------------------
    def get_config(self):
        """The constructor arguments that rebuild this layer (without its weights), as plain values:
        ``{'name', 'dtype'}`` and ``'input_shape'`` when one was given; subclasses add theirs, with
        Keras's keys (e.g. Conv2D's 'filters', 'kernel_size', ...). ``type(layer).from_config(config)``
        gives an equal layer; :func:`npcnn.layers.serialize` adds the class name."""
        config = {"name": self.name, "dtype": self.dtype.name, "trainable": self.trainable}
        if self.input_shape is not None:
            config["input_shape"] = tuple(self.input_shape)
        return config

    @classmethod
    def from_config(cls, config):
        """A new layer from :meth:`get_config`'s dict (an activation given as ``{'class_name',
        'config'}`` is rebuilt through :func:`npcnn.layers.deserialize`)."""
        config = dict(config)
        act = config.get("activation")
        if isinstance(act, dict):
            from npcnn.layers import deserialize

            config["activation"] = deserialize(act)
        return cls(**config)

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
