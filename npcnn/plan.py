"""A model's plan: its layers compiled once into steps, and a loss head.

``Sequential`` never loops over layers directly: it runs a :class:`Plan`, built from the layer list
(and the loss) the first time it is needed and again whenever they change. A plan is

* a list of **steps**, each with the same contract as a layer's op (``forward(x, state, ctx)``,
  ``backward(dy, state, ctx)``, one :class:`~npcnn.layers.base.LayerState` per step, owned by the
  caller). A layer with an activation is two steps, its op then the activation; a few patterns run
  as one fused step instead (decided here, and only here):

  =============================================  ==========================================
  layers                                         step
  =============================================  ==========================================
  Conv2D + ReLU                                  :class:`ConvReLU` (the ReLU inside the conv kernel)
  Conv2D + ReLU + MaxPooling2D (not the last)    :class:`ConvReLUMaxPool` (:mod:`npcnn.kernels.fused`)
  Conv2D + BatchNorm + ReLU (+ MaxPooling2D)     :class:`ConvBNReLU` (in training the conv, then BN with
                                                 the ReLU in its kernel (:class:`BNReLU`), then the pool;
                                                 in inference one op, the normalisation folded in)
  anything else                                  :class:`OpStep` (one layer's op, or one activation)
  =============================================  ==========================================

  The ReLU may be the Conv2D's ``activation``, an ``Activation('relu')`` or a ``ReLU()`` layer: the
  function is the same. ``NPCNN_FUSE=0`` (or :func:`set_fusion`) turns the conv + ReLU + max-pool
  block off (the ReLU inside the conv kernel stays: it is the same arithmetic as a separate ReLU).

* a **loss head**: when the last step is a softmax and the loss is the cross-entropy on
  probabilities, the head owns that softmax: training and ``evaluate`` stop before it and compute
  softmax + cross-entropy from the logits in one stable kernel (gradient (p - onehot) / N);
  ``predict`` runs it.

Example::

    plan = compile_plan(model.layers, model.loss)
    print(plan)        # Plan(ConvReLUMaxPool(conv2d, max_pooling2d), ..., OpStep(dense_1), head: softmax + CE)
"""

from __future__ import annotations

import numpy as np

from npcnn import kernels as K
from npcnn import losses as losses_mod
from npcnn.kernels.workspace import Workspace
from npcnn.layers.activations import ReLU, Softmax
from npcnn.layers.base import Layer, LayerState
from npcnn.layers.convolutional import Conv2D
from npcnn.layers.normalization import BatchNormalization
from npcnn.layers.pooling import MaxPooling2D
from npcnn.utils import env_flag

FUSE = env_flag("NPCNN_FUSE", True)


def set_fusion(enabled) -> bool:
    """Turn the conv + ReLU + max-pool block on or off for plans compiled from now on; returns the
    previous setting. Results differ only by float rounding (see npcnn.kernels.fused)."""
    global FUSE
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"set_fusion: enabled must be True or False, got {enabled!r}")
    previous, FUSE = FUSE, bool(enabled)
    return previous


# ---------------------------------------------------------------------------------------- steps
class Step:
    """One unit of a plan. Subclasses set ``layers`` (the model layers it covers, for messages and
    the summary), ``param_layer`` (the layer whose params its ``state.grads`` and whose buffers its
    ``state.updates`` refer to, or None) and implement ``forward``/``backward``."""

    layers: tuple = ()
    param_layer = None

    def forward(self, x, state, ctx):
        raise NotImplementedError

    def backward(self, dy, state, ctx):
        raise NotImplementedError

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """{buffer name: bytes} that this step's kernels keep in its workspace after a training step
        of ``batch_size`` float32 samples of shape ``input_shape`` (Numba backend)."""
        return {}

    def param_slots(self):
        """[(layer, inner)]: the layers whose params this step trains, and where their gradients are:
        ``state.grads`` (inner None) or ``state.inner[inner].grads`` (a block run step by step)."""
        return [(self.param_layer, None)] if self.param_layer is not None else []

    def label(self):
        return ", ".join(layer.name or type(layer).__name__ for layer in self.layers)

    def __repr__(self):
        return f"{type(self).__name__}({self.label()})"


class OpStep(Step):
    """One op: a layer's own op (``op is layer``) or its activation (``op is layer.activation``)."""

    def __init__(self, op, layer):
        self.op, self.layers = op, (layer,)
        self.param_layer = layer if op is layer else None

    def forward(self, x, state, ctx):
        return self.op.forward_op(x, state, ctx)

    def backward(self, dy, state, ctx):
        return self.op.backward_op(dy, state, ctx)

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        return self.op.workspace_bytes(input_shape, batch_size, need_dx)

    def __repr__(self):
        what = self.layers[0].name if self.op is self.layers[0] else f"{self.layers[0].name}.activation"
        return f"OpStep({what}: {type(self.op).__name__})"


class ConvReLU(Step):
    """Conv2D then ReLU with the ReLU inside the convolution kernel (bias + max(., 0) in one pass;
    backward masks dy with [y > 0] in the bias-gradient pass)."""

    def __init__(self, conv, relu_layer):
        self.conv, self.param_layer = conv, conv
        self.layers = (conv,) if relu_layer is conv else (conv, relu_layer)

    def forward(self, x, state, ctx):
        return self.conv.forward_op(x, state, ctx, relu=True)

    def backward(self, dy, state, ctx):
        return self.conv.backward_op(dy, state, ctx)

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        return self.conv.workspace_bytes(input_shape, batch_size, need_dx, relu=True)


class BNReLU(Step):
    """BatchNormalization then ReLU with the ReLU inside the normalisation kernel (an inner step of
    :class:`ConvBNReLU` in training): max(., 0) in the pass that writes y, and the backward kernels
    read dy * [y > 0] instead of a masked copy. The same bits as the two ops one after the other."""

    def __init__(self, bn, relu_owner):
        self.op = self.bn = self.param_layer = bn
        self.layers = (bn,) if relu_owner is bn else (bn, relu_owner)

    def forward(self, x, state, ctx):
        return self.bn.forward_op(x, state, ctx, relu=True)

    def backward(self, dy, state, ctx):
        return self.bn.backward_op(dy, state, ctx)

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        return self.bn.workspace_bytes(input_shape, batch_size, need_dx)


class ConvReLUMaxPool(Step):
    """Conv2D, ReLU and MaxPooling2D as one op (:mod:`npcnn.kernels.fused`): the conv output is
    pooled before the bias and the ReLU, which then run on the pooled values only.

    Shapes: x (N, H, W, C) -> p (N, QH, QW, F): QH x QW the pooled grid (PH x PW is the pooling window)."""

    def __init__(self, conv, relu_layer, pool):
        self.conv, self.pool, self.param_layer = conv, pool, conv
        self.layers = (conv, pool) if relu_layer is conv else (conv, relu_layer, pool)

    def forward(self, x, state, ctx):
        conv, pool = self.conv, self.pool
        oh, ow, pads = conv.geometry(x.shape)
        poh, pow_, ppads = pool.geometry((x.shape[0], oh, ow, conv.filters))
        p, cache = K.conv2d_relu_maxpool_forward(
            x, conv.params["kernel"], conv.params.get("bias"), conv.strides, pads, (oh, ow),
            pool.pool_size, pool.strides, ppads, (poh, pow_), ws=state.ws)
        state.cache = cache if ctx.training else None
        return p

    def backward(self, dp, state, ctx):
        dx, dk, db = K.conv2d_relu_maxpool_backward(dp, state.need_cache(self.label()), state.need_dx, ws=state.ws)
        state.grads = self.conv.grads_of(dk, db)
        return dx

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        conv, pool = self.conv, self.pool
        oh, ow, _ = conv.geometry((batch_size,) + tuple(input_shape))
        poh, pow_, _ = pool.geometry((batch_size, oh, ow, conv.filters))
        z = batch_size * oh * ow * conv.filters
        p = batch_size * poh * pow_ * conv.filters
        sizes = {"pool.out": p, "pool.argmax": p, "fused.dp_masked": p,
                 "fused.db_partial": 2 * min(64, p // conv.filters) * conv.filters, "pool.dx": z}
        if not conv.use_bias:
            sizes["fused.no_bias"] = conv.filters
        sizes = {k: 4 * v for k, v in sizes.items()}
        sizes.update(conv.algorithm_workspace_bytes(input_shape, batch_size, need_dx))
        return sizes


class ConvBNReLU(Step):
    """Conv2D, BatchNormalization, ReLU (and a MaxPooling2D): in training the ops one by one
    (BatchNormalization needs the batch's statistics), the ReLU inside the normalisation kernel
    (:class:`BNReLU`), in inference one op with the normalisation folded into the convolution::

        s = gamma / sqrt(moving_variance + epsilon)            (F,)
        kernel' = kernel * s          bias' = (bias - moving_mean) * s + beta

    so relu(BN(conv(x))) = relu(conv(x, kernel') + bias'), which is the conv kernel with its fused
    ReLU, or the conv + ReLU + max-pool op (:mod:`npcnn.kernels.fused`) when a pooling follows: the
    scale s sits inside the convolution's output, so pooling before the bias and the ReLU stays
    exact whatever the sign of gamma. The fold is recomputed at each call from the current weights
    (a few thousand values); inference results differ from the unfused layers by float rounding.
    """

    def __init__(self, conv, bn, relu_owner, pool=None):
        self.conv, self.bn, self.pool = conv, bn, pool
        self.layers = (conv, bn) + ((relu_owner,) if relu_owner is not bn else ()) + ((pool,) if pool else ())
        self.inner_steps = [OpStep(conv, conv), BNReLU(bn, relu_owner)] + (
            [OpStep(pool, pool)] if pool is not None else [])

    def param_slots(self):
        return [(self.conv, 0), (self.bn, 1)]

    def _inner(self, state):
        if state.inner is None:
            state.inner = [LayerState(ws=None if state.ws is None else Workspace(parallel=state.ws.parallel))
                           for _ in self.inner_steps]
        for j, st in enumerate(state.inner):
            st.need_dx = state.need_dx if j == 0 else True
            if st.ws is not None:
                st.ws.parallel = state.ws.parallel
        return state.inner

    def _folded(self):
        conv, bn = self.conv, self.bn
        f = conv.filters
        gamma = bn.params["gamma"] if bn.scale else np.ones(f)
        beta = bn.params["beta"] if bn.center else np.zeros(f)
        s = gamma.astype(np.float64) / np.sqrt(bn.buffers["moving_variance"].astype(np.float64) + bn.epsilon)
        bias = conv.params["bias"].astype(np.float64) if conv.use_bias else 0.0
        dtype = conv.params["kernel"].dtype
        kernel = (conv.params["kernel"].astype(np.float64) * s).astype(dtype)
        return kernel, ((bias - bn.buffers["moving_mean"]) * s + beta).astype(dtype)

    def forward(self, x, state, ctx):
        if ctx.training:
            inner = self._inner(state)
            for step, st in zip(self.inner_steps, inner):
                x = step.forward(x, st, ctx)
                st.out_shape = x.shape
            return x
        state.cache = None
        conv, pool = self.conv, self.pool
        kernel, bias = self._folded()
        oh, ow, pads = conv.geometry(x.shape)
        if pool is None:
            y, _ = K.conv2d_forward(x, kernel, bias, conv.strides, pads, (oh, ow), relu=True, ws=state.ws)
            return y
        poh, pow_, ppads = pool.geometry((x.shape[0], oh, ow, conv.filters))
        p, _ = K.conv2d_relu_maxpool_forward(x, kernel, bias, conv.strides, pads, (oh, ow), pool.pool_size,
                                             pool.strides, ppads, (poh, pow_), ws=state.ws)
        return p

    def backward(self, dy, state, ctx):
        inner = state.inner
        if inner is None or any(st.out_shape is None for st in inner):
            raise RuntimeError(f"{self}: backward() needs a preceding forward(x, training=True)")
        for step, st in zip(reversed(self.inner_steps), reversed(inner)):
            dy = step.backward(dy, st, ctx)
        return dy

    def workspace_bytes(self, input_shape, batch_size, need_dx=True):
        """The training path's buffers: each inner step's (their names do not collide)."""
        sizes, shape = {}, tuple(input_shape)
        for j, step in enumerate(self.inner_steps):
            sizes.update(step.workspace_bytes(shape, batch_size, need_dx if j == 0 else True))
            shape = tuple(step.op.compute_output_shape(shape))
        return sizes


# ----------------------------------------------------------------------------------------- plan
def _ops(layers):
    """[(op, layer)]: each layer's op, then its activation (an Activation layer is its activation)."""
    ops = []
    for layer in layers:
        if type(layer).forward_op is not Layer.forward_op:  # skip identity ops (Activation)
            ops.append((layer, layer))
        if layer.activation is not None:
            ops.append((layer.activation, layer))
    return ops


def compile_plan(layers, loss=None, fuse=None):
    """The steps (and loss head) that run ``layers``; see the module docstring for the rules."""
    fuse = FUSE if fuse is None else fuse
    ops = _ops(layers)
    steps = []
    i = 0
    while i < len(ops):
        op, layer = ops[i]
        nxt = ops[i + 1][0] if i + 1 < len(ops) else None
        if (fuse and type(op) is Conv2D and op.activation is None and type(nxt) is BatchNormalization
                and i + 2 < len(ops) and type(ops[i + 2][0]) is ReLU and ops[i + 1][0].activation is None):
            relu_owner = ops[i + 2][1]
            after = ops[i + 3][0] if i + 3 < len(ops) else None
            pool = after if (type(after) is MaxPooling2D and after is not layers[-1]
                             and after.activation is None) else None
            steps.append(ConvBNReLU(op, nxt, relu_owner, pool))
            i += 4 if pool is not None else 3
            continue
        if type(op) is Conv2D and type(nxt) is ReLU:
            relu_owner = ops[i + 1][1]
            after = ops[i + 2][0] if i + 2 < len(ops) else None
            if fuse and type(after) is MaxPooling2D and after is not layers[-1] and after.activation is None:
                steps.append(ConvReLUMaxPool(op, relu_owner, after))
                i += 3
                continue
            steps.append(ConvReLU(op, relu_owner))
            i += 2
            continue
        steps.append(OpStep(op, layer))
        i += 1
    return Plan(steps, loss)


class Plan:
    """Steps and loss head of a model (see the module docstring). Shapes: x (N,) + input shape."""

    def __init__(self, steps, loss=None):
        self.steps = steps
        self.loss = loss
        from_logits = bool(getattr(loss, "from_logits", False))
        last = steps[-1] if steps else None
        ends_in_softmax = isinstance(last, OpStep) and isinstance(last.op, Softmax) and last.op.over_last_axis()
        #: the loss applies the final softmax itself (fused softmax + cross-entropy from the logits)
        self.owns_softmax = loss is not None and ends_in_softmax and not from_logits
        #: the loss reads logits (the owned softmax's input, or the outputs with from_logits=True)
        self.logits_loss = self.owns_softmax or from_logits
        self.needs_rng = any(getattr(layer, "needs_rng", False) for step in steps for layer in step.layers)
        #: (step index, layer, inner index): where each trained layer's gradients land, in layer order
        self._slots = [(i, layer, j) for i, s in enumerate(steps) for layer, j in s.param_slots()]


    def new_states(self, parallel=None, workspaces=True):
        """One fresh :class:`LayerState` per step (the first step computes no input gradient);
        ``workspaces``: give each a reusable :class:`Workspace` (else every array is fresh)."""
        return [LayerState(ws=Workspace(parallel=parallel) if workspaces else None, need_dx=i > 0)
                for i in range(len(self.steps))]

    def _count(self, logits):
        return len(self.steps) - 1 if logits and self.owns_softmax else len(self.steps)

    def forward(self, x, states, ctx, logits=False):
        """Run the steps; with ``logits`` (and an owned softmax) stop before the final softmax."""
        for step, st in zip(self.steps[:self._count(logits)], states):
            x = step.forward(x, st, ctx)
            st.out_shape = x.shape if ctx.training else None
        return x

    def backward(self, dy, states, ctx, logits=False):
        """Backpropagate dy (w.r.t. the output, or the logits with ``logits``); returns dx or None.

        Raises:
            RuntimeError: no training forward ran with these states.
            ValueError: a gradient's shape differs from the output of the step's training forward.
        """
        n = self._count(logits)
        for i in range(n - 1, -1, -1):
            step, st = self.steps[i], states[i]
            if st.out_shape is None:
                raise RuntimeError(f"{step}: backward() needs a preceding forward(x, training=True)")
            if np.shape(dy) != st.out_shape:
                raise ValueError(f"{step}: dy has shape {np.shape(dy)}, but the last forward(training=True) "
                                 f"gave an output of shape {st.out_shape}")
            dy = step.backward(dy, st, ctx)
        return dy

    def loss_and_grad(self, x, labels, states, ctx, scale=1.0):
        """Loss and output of one (shard of a) batch; gradients land in the states' ``grads``.

        The loss gradient is multiplied by ``scale`` (a shard's share n_shard / N of the batch, so
        that the shards' gradients add up to the batch's). Returns (loss, out); out holds logits
        when :attr:`logits_loss`."""
        out = self.forward(x, states, ctx, logits=self.logits_loss)
        loss, dout = losses_mod.unchecked_compute(self.loss)(out, labels, logits=self.logits_loss)
        if scale != 1.0:
            dout = dout * dout.dtype.type(scale)
        self.backward(dout, states, ctx, logits=self.logits_loss)
        if self._regularized:  # weight penalties: the loss gets R(w), the gradients scale * dR/dw
            for i, layer, j in self._slots:
                st = states[i] if j is None else states[i].inner[j]
                if not getattr(layer, "regularizers", None):
                    continue
                for key, reg in layer.regularizers.items():
                    g = reg.gradient(layer.params[key])
                    st.grads[key] = st.grads[key] + (g * g.dtype.type(scale) if scale != 1.0 else g)
            loss = float(loss) + self.penalty()
        return float(loss), out

    def penalty(self):
        """Sum of the layers' weight penalties R(w) (kernel_regularizer and the like); 0.0 without any.

        A regularizer is any object with ``reg(w) -> float`` and ``reg.gradient(w) -> dR/dw``
        (:mod:`npcnn.regularizers`), kept in ``layer.regularizers`` {param name: regularizer}."""
        return float(sum(reg(layer.params[key]) for layer in self._regularized
                         for key, reg in layer.regularizers.items()))

    def _state(self, states, i, j):
        return states[i] if j is None else states[i].inner[j]

    def grads(self, states):
        """[[gradient per param of the layer, in params order] per trained layer (:attr:`param_layers`)]."""
        return [[self._state(states, i, j).grads[k] for k in layer.params] for i, layer, j in self._slots]

    def updates(self, states):
        """[(layer, {buffer: new value})] declared by the last training forward."""
        out = []
        for i, layer, j in self._slots:
            st = self._state(states, i, j)
            if st.updates:
                out.append((layer, st.updates))
        return out

    @property
    def _regularized(self):
        """The layers with weight penalties (read at each call: they may be set after compiling)."""
        return [layer for _, layer, _ in self._slots if getattr(layer, "regularizers", None)]

    @property
    def param_layers(self):
        """The layers that a step trains (every model layer with an op of its own), in layer order."""
        return [layer for _, layer, _ in self._slots]

    def workspace_bytes(self, input_shape, batch_size):
        """{(step index, buffer name): bytes} over every step, for a training step of ``batch_size``."""
        out = {}
        shape = tuple(input_shape)
        for i, step in enumerate(self.steps[:self._count(self.logits_loss)]):  # as training runs them
            for name, n in step.workspace_bytes(shape, batch_size, need_dx=i > 0).items():
                out[(i, name)] = n
            shape = tuple(step.layers[-1].output_shape)
        return out

    def __repr__(self):
        head = ", head: softmax + cross-entropy" if self.owns_softmax else ""
        return "Plan(" + ", ".join(map(repr, self.steps)) + head + ")"
