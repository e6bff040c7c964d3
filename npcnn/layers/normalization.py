"""BatchNormalization (Keras's layer, channels last), with statistics of the whole batch across shards.

The math, its derivation and the kernels are in docs/batchnorm.md and :mod:`npcnn.kernels.batchnorm`.
"""

from __future__ import annotations

import numbers

import numpy as np

from npcnn import initializers
from npcnn import kernels as K
from npcnn.kernels.batchnorm import _masked, _n_chunks
from npcnn.layers.base import Layer


def _relu_kw(relu):
    """{'relu': True} for a fused ReLU, else nothing: a kernel replaced with npcnn.kernels.override and
    written without the ``relu`` argument keeps working for a plain BatchNormalization."""
    return {"relu": True} if relu else {}


class BatchNormalization(Layer):
    """Normalise each channel (the last axis) with batch statistics in training, moving ones at inference.

    Training, per channel over the M = N * H * W rows of the *whole* batch (M = N after a Dense)::

        mean = sum(x) / M            var = sum((x - mean)^2) / M       (biased, as Keras)
        y    = gamma * (x - mean) / sqrt(var + epsilon) + beta
        moving_mean     <- moving_mean     * momentum + mean * (1 - momentum)
        moving_variance <- moving_variance * momentum + var  * (1 - momentum)

    Inference: ``y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta``.

    Shapes: x, y (N, ..., C); gamma, beta, moving_mean, moving_variance (C,). Weights in Keras's
    order: gamma (if ``scale``), beta (if ``center``), then the non-trainable moving_mean and
    moving_variance (``buffers``). Backward (compact form, docs/batchnorm.md)::

        dbeta = sum dy      dgamma = sum dy * xhat
        dx    = gamma / (M * sqrt(var + eps)) * (M * dy - dbeta - xhat * dgamma)

    Data-parallel shards: the per-channel sums are added over all shards (``ctx.reduce``) before
    they are used, so every shard normalises with the whole batch's statistics (synchronized batch
    normalization) and the result does not depend on the thread count. The moving statistics are
    not written here: a training forward declares their new values in ``state.updates`` and the
    model applies them once after the step.

    Args:
        axis: the channel axis; only the last one is supported (-1, or its index counting the batch
            axis, e.g. 3 for (N, H, W, C) inputs).
        momentum: weight of the *old* moving value, in [0, 1] (Keras's 0.99 is PyTorch's 0.01).
        epsilon: added to the variance, > 0 (Keras: 1e-3; PyTorch: 1e-5).
        center, scale: learn beta / gamma (else beta = 0 / gamma = 1, not stored).
        *_initializer: names or callables ``f(shape, dtype)`` (see :mod:`npcnn.initializers`).
    Raises:
        ValueError: another axis, momentum outside [0, 1], epsilon <= 0, an unknown initializer.
        TypeError: an argument of the wrong type.

    Example::

        model.add(Conv2D(32, 3, padding='same', input_shape=(32, 32, 3)))
        model.add(BatchNormalization())       # 64 trainable (gamma, beta), 64 non-trainable
        model.add(Activation('relu'))
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", name=None, input_shape=None, **kwargs):
        super().__init__(name=name, input_shape=input_shape, **kwargs)
        self.axis = _check_axis(axis)
        self.momentum = _real(momentum, "momentum")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"BatchNormalization: momentum must be in [0, 1] (the weight of the old moving "
                             f"value; Keras's default 0.99), got {momentum!r}")
        self.epsilon = _real(epsilon, "epsilon")
        if not self.epsilon > 0 or not np.isfinite(self.epsilon):
            raise ValueError(f"BatchNormalization: epsilon must be a positive number (default 1e-3), got {epsilon!r}")
        for flag, value in (("center", center), ("scale", scale)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"BatchNormalization: {flag} must be True or False, got {value!r}")
        self.center, self.scale = bool(center), bool(scale)
        own = "BatchNormalization"
        self.beta_initializer = initializers.get(beta_initializer, own, "beta_initializer")
        self.gamma_initializer = initializers.get(gamma_initializer, own, "gamma_initializer")
        self.moving_mean_initializer = initializers.get(moving_mean_initializer, own, "moving_mean_initializer")
        self.moving_variance_initializer = initializers.get(moving_variance_initializer, own,
                                                            "moving_variance_initializer")

    def get_config(self):
        """Keras's keys: axis, momentum, epsilon, center, scale and the four initializers (by name)."""
        from npcnn.serialization import serialize_initializer

        own = self._label()
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale,
                **{k: serialize_initializer(getattr(self, k), own, k)
                   for k in ("beta_initializer", "gamma_initializer", "moving_mean_initializer",
                             "moving_variance_initializer")}}

    # --- shapes and weights ---------------------------------------------------------
    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.axis not in (-1, len(input_shape)):
            raise ValueError(
                f"BatchNormalization: axis={self.axis} is not the channel axis of inputs of shape "
                f"{(None,) + input_shape}: only the last axis (axis=-1, or {len(input_shape)}) is supported "
                "(channels last)")
        return input_shape

    def build(self, input_shape):
        input_shape = tuple(int(d) for d in input_shape)
        self.compute_output_shape(input_shape)
        c = (input_shape[-1],)
        self.params = {}
        if self.scale:
            self.params["gamma"] = self.gamma_initializer(c, self.dtype)
        if self.center:
            self.params["beta"] = self.beta_initializer(c, self.dtype)
        self.buffers = {"moving_mean": self.moving_mean_initializer(c, self.dtype),
                        "moving_variance": self.moving_variance_initializer(c, self.dtype)}
        return super().build(input_shape)

    def _affine(self, channels, dtype):
        """(gamma, beta) to normalise with: the params, or 1 / 0 when not learned."""
        gamma = self.params["gamma"] if self.scale else np.ones(channels, dtype)
        beta = self.params["beta"] if self.center else np.zeros(channels, dtype)
        return gamma, beta

    # --- the op ---------------------------------------------------------------------
    def forward_op(self, x, state, ctx, relu=False):
        """Normalise x (batch statistics in training, the moving ones in inference or when frozen); with
        ``relu`` the kernel also applies max(., 0) to its output (a fused ReLU, the same bits as a ReLU
        layer after it) and the backward masks dy with [y > 0] first."""
        gamma, beta = self._affine(x.shape[-1], self.dtype)
        if not ctx.training or not self.trainable:
            # inference; or a frozen layer, which Keras 3 runs in inference mode even while the model trains
            # (moving statistics, no updates), an affine map whose backward is dy * gamma / sqrt(var + eps)
            y, cache = K.batchnorm_forward(x, self.buffers["moving_mean"], self.buffers["moving_variance"], gamma,
                                           beta, self.epsilon, ws=state.ws, **_relu_kw(relu))
            state.cache = (cache, None) if ctx.training else None
            state.updates = {}
            return y
        # rows of the whole batch (all shards): batch size times the pixels of one sample
        count = (ctx.batch_size or len(x)) * int(np.prod(x.shape[1:-1], dtype=np.int64))
        mean = ctx.reduce(K.batchnorm_sum(x, ws=state.ws)) / count                 # reduce 1
        var = ctx.reduce(K.batchnorm_sqdev_sum(x, mean, ws=state.ws)) / count     # reduce 2 (biased)
        y, cache = K.batchnorm_forward(x, mean, var, gamma, beta, self.epsilon, ws=state.ws, **_relu_kw(relu))
        state.cache = (cache, count)
        m = self.momentum
        state.updates = {  # in float64, rounded once to the buffer's dtype
            name: (self.buffers[name].astype(np.float64) * m + batch * (1.0 - m)).astype(self.buffers[name].dtype)
            for name, batch in (("moving_mean", mean), ("moving_variance", var))}
        state.info = {"mean": mean, "variance": var}
        return y

    def backward_op(self, dy, state, ctx):
        cache, count = state.need_cache(self._label())
        if count is None:  # a frozen (inference-mode) forward: y = gamma * (x - mean) * inv_std + beta, affine
            sums = K.batchnorm_backward_sums(dy, cache, ws=state.ws)
            state.grads = {k: g for k, g in (("gamma", sums[1]), ("beta", sums[0])) if k in self.params}
            state.grads = {k: g.astype(self.params[k].dtype) for k, g in state.grads.items()}
            if not state.need_dx:
                return None
            dy = _masked(dy, cache)  # a fused ReLU's mask first (dy itself without one)
            return dy * (cache.gamma * cache.inv_std).astype(dy.dtype)
        sum_dy, sum_dy_xhat = K.batchnorm_backward_sums(dy, cache, ws=state.ws)  # this shard's rows
        grads = {}
        if self.scale:
            grads["gamma"] = sum_dy_xhat.astype(self.params["gamma"].dtype)
        if self.center:
            grads["beta"] = sum_dy.astype(self.params["beta"].dtype)
        state.grads = grads  # local sums: the model adds the shards' gradients
        if not state.need_dx:
            return None  # (need_dx is the same in every shard: none of them reduces)
        c = len(sum_dy)
        total = ctx.reduce(np.concatenate([sum_dy, sum_dy_xhat]))                  # reduce 3, one buffer
        return K.batchnorm_backward(dy, cache, total[:c], total[c:], count, ws=state.ws)

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """{buffer: bytes} the Numba kernels keep (float32 layer): the (chunks, C) float64 partial sums of
        the two statistics and of the backward's two sums; y and xhat (M, C); float64 (C,) copies of
        inv_std, gamma and beta; backward: dx (M, C) and the (C,) factor k when the input gradient is
        needed."""
        c = int(input_shape[-1])
        rows = batch_size * int(np.prod(input_shape[:-1], dtype=np.int64))
        chunks = _n_chunks(rows)
        sizes = {"batchnorm_sum.parts": 8 * chunks * c, "batchnorm_sqdev_sum.parts": 8 * chunks * c,
                 "batchnorm_forward.inv_std": 8 * c, "batchnorm_forward.gamma": 8 * c,
                 "batchnorm_forward.beta": 8 * c, "batchnorm_forward.y": 4 * rows * c,
                 "batchnorm_forward.xhat": 4 * rows * c, "batchnorm_backward_sums.parts": 16 * chunks * c}
        if need_dx:
            sizes.update({"batchnorm_backward.k": 8 * c, "batchnorm_backward.dx": 4 * rows * c})
        return sizes

    def __repr__(self):
        return (f"BatchNormalization(name={self.name!r}, momentum={self.momentum}, epsilon={self.epsilon}, "
                f"center={self.center}, scale={self.scale})")


def _real(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"BatchNormalization: {name} must be a number, got {value!r} ({type(value).__name__})")
    return float(value)


def _check_axis(axis):
    """-1 or a non-negative int (checked against the input's rank at build); a one-element list is one int."""
    if isinstance(axis, (list, tuple)) and len(axis) == 1:
        axis = axis[0]
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"BatchNormalization: axis must be an int (the channel axis, -1), got {axis!r}")
    axis = int(axis)
    if axis != -1 and axis < 1:
        raise ValueError(
            f"BatchNormalization: axis={axis} is not supported: only the channel axis, the last one (axis=-1), "
            "is (inputs are channels last, NHWC)")
    return axis
