"""Sequential: a Keras-compatible stack of layers that owns the training loop.

Data flows one way: the model's plan (:mod:`npcnn.plan`) runs its steps forward, the loss head
computes the loss and its gradient, the steps run backward in reverse (each fills its state's
``grads``), the shards' gradients are summed, then the optimizer updates every parameter in place
and the declared buffer updates are applied.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from contextlib import contextmanager

import numpy as np

from npcnn import callbacks as cbks
from npcnn import distributed, parallel, saving
from npcnn import kernels as K
from npcnn import losses as losses_mod
from npcnn import metrics as metrics_mod
from npcnn import optimizers as optimizers_mod
from npcnn import plan as plan_mod
from npcnn.layers.base import Context, Layer, _check_input_shape
from npcnn.threads import get_num_threads
from npcnn.utils import (
    NotBuiltError,
    NotCompiledError,
    check_verbose,
    get_rng,
    positive_int,
    snake_case,
)

_NUMERIC_KINDS = "biuf"
_METRICS = metrics_mod.NAMES  # the metric names compile accepts (npcnn.metrics)
_MODELS = weakref.WeakSet()  # every model, so a forked child gets fresh locks


def _check_fits(layer, shape):
    """Raise ValueError if ``layer`` was built for another input shape than ``shape``."""
    if layer.built and tuple(layer.built_input_shape) != tuple(shape):
        raise ValueError(f"it was built for inputs of shape {layer.built_input_shape}, but here it receives "
                         f"{tuple(shape)}")


def _after_fork_in_child():
    for model in list(_MODELS):
        model._state_lock = threading.Lock()
        model._fit_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Sequential:
    """A linear stack of layers.

    Example::

        model = Sequential()
        model.add(Conv2D(32, (3, 3), activation='relu', input_shape=(32, 32, 3)))
        model.add(MaxPooling2D((2, 2)))
        model.add(Flatten())
        model.add(Dense(10, activation='softmax'))
        model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
        history = model.fit(x, y, epochs=10, validation_data=(x_val, y_val))

    How it runs: the layers are compiled once into a :class:`npcnn.plan.Plan` (steps, fused blocks,
    the loss head); each call runs the plan with per-call state (:class:`npcnn.layers.LayerState`
    per step) taken from a pool the model keeps, so several threads may call ``predict`` or
    ``evaluate`` on one model at once and get exactly the results of serial calls. ``fit`` on a
    model already training in another thread raises ``RuntimeError``.
    """

    def __init__(self, layers=None, name="sequential"):
        self.name = name
        self.layers: list[Layer] = []
        self.input_shape = None  # per-sample shape, no batch axis
        self.output_shape = None
        self.optimizer = None
        self.loss = None
        self.metrics = []
        self._metric_objects = []  # npcnn.metrics.Metric per entry of metrics (compile)
        self.compiled = False
        self.stop_training = False
        self.history = None
        self._name_counts = {}
        self._plan = None
        self._plan_key = None
        self._free_states = []  # pooled per-call states (one list of LayerState per step), reused
        self._last_train = None  # (states, ctx) of the last forward(training=True), for backward()
        self._flat = None  # MPI: the one float32 buffer of a step's gradients and statistics (Allreduce)
        self._locks()
        for layer in layers or []:
            self.add(layer)

    def _locks(self):
        self._state_lock = threading.Lock()
        self._fit_lock = threading.Lock()
        _MODELS.add(self)

    def __getstate__(self):  # copy/deepcopy/pickle: weights and settings, no locks or run states
        state = dict(vars(self))
        for k in ("_state_lock", "_fit_lock", "_free_states", "_last_train", "_plan", "_plan_key", "_flat"):
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        vars(self).update(state)
        self._plan = self._plan_key = self._last_train = self._flat = None
        self._free_states = []
        self._locks()

    # ------------------------------------------------------------------ building
    def add(self, layer):
        """Append a layer; build it at once if the input shape is known. A failed add changes nothing.

        An :func:`npcnn.layers.Input` (first, as in Keras 3: ``Sequential([Input(shape=(32, 32, 3)), ...])``)
        sets the model's input shape instead of adding a layer.

        Raises:
            TypeError: not an npcnn layer.
            ValueError: a duplicate name, the layer does not fit the previous layer's output, or an Input
                that does not come first.
        """
        from npcnn.layers.input import InputLayer

        if isinstance(layer, InputLayer):
            if self.layers or self.input_shape is not None:
                raise ValueError(f"Sequential.add: an Input must come first (this model already has "
                                 f"{'layers' if self.layers else 'an input shape'}); give the model one Input, "
                                 "before its layers")
            self.input_shape = layer.per_sample
            self.output_shape = layer.per_sample
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects an npcnn layer, got {layer!r} ({type(layer).__name__})")
        if any(existing is layer for existing in self.layers):
            raise ValueError(f"Sequential.add: layer {layer.name!r} is already in the model (add a new instance)")
        name, counts = layer.name, dict(self._name_counts)
        if name is None:
            base = snake_case(type(layer).__name__)
            n = counts.get(base, 0)
            name = base if n == 0 else f"{base}_{n}"
            counts[base] = n + 1
        if any(existing.name == name for existing in self.layers):
            raise ValueError(f"Sequential.add: a layer named {name!r} is already in the model")
        input_shape = self.input_shape
        if not self.layers and layer.input_shape is not None:
            input_shape = layer.input_shape
        given_name, layer.name = layer.name, name
        if input_shape is not None:
            shape = input_shape if not self.layers else self.layers[-1].output_shape
            try:
                _check_fits(layer, shape)
                out = layer.build(shape) if not layer.built else layer.compute_output_shape(shape)
            except ValueError as e:
                layer.name = given_name
                raise ValueError(f"layer {name!r} ({type(layer).__name__}): {e}") from None
            except BaseException:
                layer.name = given_name
                raise
            self.output_shape = tuple(out)
        self._name_counts = counts
        self.input_shape = input_shape
        self.layers.append(layer)

    def build(self, input_shape):
        """Build every layer for inputs of shape ``input_shape`` (with or without a leading None)."""
        try:
            shape = tuple(input_shape)
        except TypeError:
            raise TypeError(f"build: input_shape must be a tuple such as (None, 32, 32, 3), got {input_shape!r}") \
                from None
        if shape and shape[0] is None:
            shape = shape[1:]
        if not self.layers:
            raise NotBuiltError("build: the model has no layers; add some with model.add(...)")
        self.input_shape = _check_input_shape(shape, "build")
        try:
            self._build_from(0)
        except Exception:
            self.input_shape = None
            raise

    def _build_from(self, start):
        shape = self.input_shape if start == 0 else self.layers[start - 1].output_shape
        for layer in self.layers[start:]:
            try:
                _check_fits(layer, shape)
                shape = layer.build(shape) if not layer.built else layer.compute_output_shape(shape)
            except ValueError as e:
                raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}): {e}") from None
        self.output_shape = shape

    @property
    def built(self):
        return self.input_shape is not None and all(layer.built for layer in self.layers)

    # ------------------------------------------------------------------ the plan and its states
    @property
    def plan(self):
        """The compiled :class:`npcnn.plan.Plan` (recompiled when the layers, the loss or the fusion
        switch change)."""
        key = (tuple((id(layer), id(layer.activation)) for layer in self.layers), id(self.loss), plan_mod.FUSE)
        if self._plan is None or key != self._plan_key:
            with self._state_lock:
                self._plan, self._plan_key = plan_mod.compile_plan(self.layers, self.loss), key
                self._free_states = []
                self._last_train = None
        return self._plan

    @contextmanager
    def _states(self, plan, count, parallel):
        """``count`` per-call state lists for ``plan``, from the pool (their workspaces are reused
        call after call), returned to it afterwards."""
        with self._state_lock:
            taken = [self._free_states.pop() for _ in range(min(count, len(self._free_states)))]
        taken += [plan.new_states() for _ in range(count - len(taken))]
        for states in taken:
            for st in states:
                if st.ws is not None:
                    st.ws.parallel = parallel
        try:
            yield taken
        finally:
            with self._state_lock:
                if self._plan is plan:
                    self._free_states.extend(taken)

    # ------------------------------------------------------------------ weights
    @property
    def params(self):
        """Every trainable array, in Keras order (layer by layer, kernel then bias)."""
        return [p for layer in self.layers for p in layer.params.values()]

    @property
    def grads(self):
        """The gradients of the last training step, aligned with :attr:`params`."""
        return [layer.grads[k] for layer in self.layers for k in layer.params]

    @property
    def trainable_weights(self):
        """The arrays the optimizer trains: the params of every trainable layer, in Keras order."""
        return [p for layer in self.layers if layer.trainable for p in layer.params.values()]

    @property
    def non_trainable_weights(self):
        """Saved but untrained arrays, in Keras order: a frozen layer's params (``trainable=False``), then
        every layer's buffers (e.g. BatchNormalization's moving statistics)."""
        return ([p for layer in self.layers if not layer.trainable for p in layer.params.values()]
                + [b for layer in self.layers for b in layer.buffers.values()])

    @property
    def weights(self):
        return [a for layer in self.layers for _, a, _ in layer.weight_items()]

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    def get_weights(self):
        """Copies of all weights, in Keras order and layouts (Conv2D kernel (KH, KW, C, F), Dense (D, U))."""
        return saving.get_weights(self)

    def set_weights(self, weights):
        """Copy a list of arrays (Keras order and layouts) into the model, all or nothing.

        Raises:
            ValueError: wrong count, shapes or non-finite values; every mismatch is listed by layer.
            TypeError: not a list of numeric arrays.
        """
        saving.set_weights(self, weights)

    def save_weights(self, filepath):
        """Write every weight to an .npz file (no pickle), atomically (see :mod:`npcnn.saving`)."""
        saving.save_weights(self, filepath)

    def load_weights(self, filepath):
        """Read weights written by :meth:`save_weights`, checked whole before any is changed
        (see :func:`npcnn.saving.load_weights`); a ``.h5`` file (``x.weights.h5``) is read as Keras 3's
        ``save_weights`` writes it, for a model with the same layers
        (:func:`npcnn.saving.load_keras_weights`; needs h5py: ``pip install -e ".[keras]"``)."""
        if os.fspath(filepath).lower().endswith((".h5", ".hdf5")):
            saving.load_keras_weights(self, filepath)
            return
        saving.load_weights(self, filepath)

    # ------------------------------------------------------------------ configs and model files
    def get_config(self):
        """{'name', 'layers': [{'class_name', 'config'}, ...], 'build_input_shape'} (Keras's keys):
        the architecture without weights; :func:`model_from_json` of :meth:`to_json` rebuilds it."""
        from npcnn.layers import serialize

        shape = None if self.input_shape is None else (None,) + tuple(self.input_shape)
        return {"name": self.name, "layers": [serialize(layer) for layer in self.layers],
                "build_input_shape": shape}

    @classmethod
    def from_config(cls, config):
        """A new (uncompiled) model from :meth:`get_config`'s dict, as Keras's ``Sequential.from_config``."""
        return _model_from_dict({"class_name": "Sequential", "config": config}, "Sequential.from_config")

    def to_json(self, **kwargs):
        """The architecture as a JSON string ``{'class_name': 'Sequential', 'config': get_config()}``
        (``kwargs`` go to ``json.dumps``, e.g. ``indent=2``)."""
        import json

        from npcnn import __version__

        return json.dumps({"class_name": "Sequential", "config": self.get_config(), "npcnn_version": __version__},
                          **kwargs)

    def save(self, filepath, include_optimizer=True):
        """Architecture, weights and (when compiled) the compile settings and the optimizer's state in
        one ``.npz`` file written atomically, never pickled (e.g. ``model.save("model.npcnn")``);
        :func:`load_model` reads it back. See :func:`npcnn.saving.save_model` and docs/saving.md."""
        return saving.save_model(self, filepath, include_optimizer=include_optimizer)

    # ------------------------------------------------------------------ summary
    def summary(self, print_fn=None, batch_size=32):
        """Print Keras's table: Layer (type) | Output Shape | Param #, then the totals.

        A last line gives the memory of the im2col columns at ``batch_size`` (float32) and of the
        other scratch buffers a training step keeps (Numba backend), as each step of the plan
        reports them (:meth:`npcnn.plan.Plan.workspace_bytes`).
        """
        self._require_built("summary")
        print_fn = print_fn or print
        longest = max(len(f"{layer.name} ({type(layer).__name__})") for layer in self.layers)
        width = (max(33, longest + 2), 26, 12)  # Keras's widths, wider when a name needs it
        line = "_" * sum(width)
        rows = [f'Model: "{self.name}"', line,
                _row(("Layer (type)", "Output Shape", "Param #"), width), "=" * sum(width)]
        for i, layer in enumerate(self.layers):
            shape = str((None,) + tuple(layer.output_shape))
            rows.append(_row((f"{layer.name} ({type(layer).__name__})", shape, f"{layer.count_params():,}"), width))
            rows.append("=" * sum(width) if i == len(self.layers) - 1 else "")
        trainable = sum(layer.count_trainable() for layer in self.layers)
        total = self.count_params()
        fixed = total - trainable
        im2col, train = self._workspace_bytes(batch_size)
        rows += [f"Total params: {total:,} ({_bytes(total * 4)})",
                 f"Trainable params: {trainable:,} ({_bytes(trainable * 4)})",
                 f"Non-trainable params: {fixed:,} ({_bytes(fixed * 4)})",
                 f"im2col columns at batch {batch_size}: {_bytes(im2col)} "
                 f"(a training step keeps {_bytes(train)} more in scratch buffers)", line]
        for r in rows:
            print_fn(r)

    def _workspace_bytes(self, batch_size):
        """(im2col columns, other scratch buffers) in bytes that one training step of ``batch_size``
        float32 images keeps in its workspaces on the Numba backend (one shard: with several, the
        shards share these sizes out)."""
        sizes = self.plan.workspace_bytes(self.input_shape, batch_size)
        cols = sum(n for (_, name), n in sizes.items() if name == "im2col.cols")
        return cols, sum(sizes.values()) - cols

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None):
        """Choose the optimizer ('sgd', 'rmsprop' (Keras's default), 'adam', 'adamw' or an instance), the
        loss ('sparse_categorical_crossentropy', 'categorical_crossentropy' or an instance) and the
        metrics (names such as 'accuracy' or 'sparse_top_k_categorical_accuracy', or
        :mod:`npcnn.metrics` objects), reported under their names.

        Raises:
            ValueError: an unknown or unimplemented name (the closest valid one is suggested),
                a missing loss, or a built model whose output does not fit the loss.
            TypeError: an argument of the wrong type (e.g. metrics='accuracy' instead of a list).
        """
        optimizer = optimizers_mod.get(optimizer)
        if loss is None:
            raise ValueError("compile: loss is required, e.g. loss='sparse_categorical_crossentropy'")
        loss = losses_mod.get(loss)
        if metrics is None:
            metrics = []
        if isinstance(metrics, str) or not isinstance(metrics, (list, tuple)):
            raise TypeError(f"compile: metrics must be a list such as ['accuracy'], got {metrics!r}")
        label_kind = getattr(loss, "label_kind", "sparse")
        metric_objects = [metrics_mod.get(m, label_kind, "compile") for m in metrics]
        names = [m.name for m in metric_objects]
        if len(set(names)) != len(names) or "loss" in names:
            raise ValueError(f"compile: metrics {names!r} name a metric twice (or use the name 'loss')")
        if self.output_shape is not None:
            self._check_output_for_loss("compile", loss)
        self.optimizer, self.loss = optimizer, loss
        self.metrics = list(metrics)  # as given; reported under their names, as Keras does
        self._metric_objects = metric_objects
        self.compiled = True

    # ------------------------------------------------------------------ passes
    def _parallel_kernels(self):
        """Whether this call's kernels may split work across threads (unsharded, several threads)."""
        return get_num_threads() > 1 and not parallel.forked_child()

    def forward(self, x, training=False, logits=False):
        """The model's output for one batch (float32 (N,) + input_shape, already checked).

        With ``logits=True`` a final softmax owned by the loss is skipped (outputs are logits).
        ``training=True`` runs one unsharded training forward and keeps its state for
        :meth:`backward`; inference may run in data-parallel shards (:mod:`npcnn.parallel`).
        The result is the caller's own array.
        """
        if tuple(np.shape(x)[1:]) != tuple(self.input_shape or ()):
            raise ValueError(f"forward: x has shape {np.shape(x)}, but the model expects (N,) + {self.input_shape}")
        plan = self.plan
        if training:
            states = plan.new_states() if self._last_train is None else self._last_train[0]
            ctx = Context(True, seed=self._step_seed(plan), batch_size=len(x))
            with parallel.compute_section():
                for st in states:
                    if st.ws is not None:
                        st.ws.parallel = self._parallel_kernels()
                out = plan.forward(x, states, ctx, logits)
            self._last_train = (states, ctx)
            return out.copy()
        return self._infer(plan, x, logits)

    def _infer(self, plan, x, logits):
        shards = self._shards(len(x))
        with parallel.compute_section():
            if shards > 1:
                with self._states(plan, shards, parallel=False) as states:
                    return parallel.forward(plan, states, x, logits)
            with self._states(plan, 1, parallel=self._parallel_kernels()) as (states,):
                return plan.forward(x, states, Context(False, batch_size=len(x)), logits).copy()

    def backward(self, dy, logits=False, input_grad=False):
        """Backpropagate ``dy`` (w.r.t. the output of the last ``forward(training=True)``, or its
        logits when ``logits``); publishes each layer's ``grads``; returns d loss / d input when
        ``input_grad`` (else None: the first layer skips it, as in training)."""
        if self._last_train is None:
            raise RuntimeError("backward() needs a preceding forward(x, training=True)")
        plan, (states, ctx) = self.plan, self._last_train
        states[0].need_dx = bool(input_grad)
        try:
            with parallel.compute_section():
                dx = plan.backward(dy, states, ctx, logits)
        finally:
            states[0].need_dx = False
        self._publish(plan, [plan.grads(states)])
        return None if dx is None else np.array(dx, copy=True)

    def _shards(self, n_images):
        """How many data-parallel shards a batch of ``n_images`` runs in (1: unsharded)."""
        return parallel.shard_count(n_images) if self.built else 1

    def _step_seed(self, plan):
        """The step's random seed for layers that draw random numbers (drawn from npcnn's generator
        only when the plan has such layers, so other models' random streams are untouched)."""
        return int(get_rng().integers(0, 2**63)) if plan.needs_rng else 0

    def _publish(self, plan, shard_grads):
        """Sum the shards' gradients (shard 0 + shard 1 + ..., a fixed order) into each layer's ``grads``."""
        for j, layer in enumerate(plan.param_layers):
            per_shard = [g[j] for g in shard_grads]
            if len(per_shard) == 1:
                layer.grads = dict(zip(layer.params, per_shard[0]))
            else:
                layer.grads = {k: K.add_arrays([g[i] for g in per_shard]) for i, k in enumerate(layer.params)}

    def _loss_and_grad(self, x, labels, total=None, offset=0):
        """Loss and output of a training step on a checked batch; the (summed) gradients land in every
        layer's ``grads`` and the declared buffer updates are returned, not applied.

        Under MPI, x is this rank's slice of a global batch of ``total`` samples starting at ``offset``:
        the gradients are scaled by len(x) / total (the ranks' sum is the batch's mean gradient) and the
        batch statistics of BatchNormalization are summed over the ranks too; the loss is x's mean."""
        plan = self.plan
        n = len(x)
        total = n if total is None else total
        world = distributed.world()
        outer = world.allreduce if world.active else None
        shards = self._shards(n)
        seed = self._step_seed(plan)
        with parallel.compute_section():
            if shards > 1:
                with self._states(plan, shards, parallel=False) as states:
                    loss, out = parallel.loss_and_grad(plan, states, x, labels, seed, total, offset, outer)
                    grads = [plan.grads(s) for s in states]
                    updates = plan.updates(states[0])  # every shard declares the same (whole-batch statistics)
            else:
                with self._states(plan, 1, parallel=self._parallel_kernels()) as (states,):
                    ctx = Context(True, seed=seed, sample_offset=offset, batch_size=total, reduce=outer)
                    loss, out = plan.loss_and_grad(x, labels, states, ctx, scale=n / total)
                    grads = [plan.grads(states)]
                    updates = plan.updates(states)
            self._publish(plan, grads)
        return loss, out, updates

    def _train_step(self, x, labels, where="train_on_batch", epoch=None, step=0, total=None, offset=0):
        """One update; returns (loss, metric hit counts) of the batch. The loss and gradients are checked
        for NaN/Inf *before* the optimizer runs, so a bad batch raises FloatingPointError and leaves the
        weights of the last good step.

        Under MPI (x: this rank's slice of a global batch of ``total`` samples starting at ``offset``)
        the gradients, the loss and the hit counts of all ranks are summed by one Allreduce before the
        check, so every rank checks and applies the same numbers."""
        loss, out, updates = self._loss_and_grad(x, labels, total, offset)
        hits = self._hits(out, labels)
        if distributed.world().active:
            loss, hits = self._allreduce_step(loss * len(x), hits, len(x) if total is None else total)
        grads = self.grads
        self._check_finite_step(loss, grads, where, epoch, step)
        self._check_updates(updates, where)
        trained = [(p, g) for layer in self.layers if layer.trainable for p, g in
                   ((layer.params[k], layer.grads[k]) for k in layer.params)]
        self.optimizer.apply([p for p, _ in trained], [g for _, g in trained])
        self._apply_updates(updates)
        return loss, hits

    def _allreduce_step(self, loss_sum, hits, total):
        """MPI: add every rank's trained gradients, loss sum and hit counts with one in-place Allreduce on
        one contiguous buffer; the layers' ``grads`` become views of it. Returns (mean loss, hits)."""
        keys = [(layer, k) for layer in self.layers if layer.trainable for k in layer.params]
        sizes = [layer.params[k].size for layer, k in keys]
        n_grads = int(sum(sizes))
        dtype = np.result_type(*[layer.params[k].dtype for layer, k in keys]) if keys else np.float32
        need = n_grads + 1 + len(hits)
        if self._flat is None or self._flat.size != need or self._flat.dtype != dtype:
            self._flat = np.empty(need, dtype=dtype)
        flat, pos = self._flat, 0
        for (layer, k), size in zip(keys, sizes):
            flat[pos:pos + size] = layer.grads[k].reshape(-1)
            pos += size
        flat[n_grads] = loss_sum
        flat[n_grads + 1:] = hits
        distributed.world().allreduce_(flat)
        pos = 0
        for (layer, k), size in zip(keys, sizes):
            layer.grads[k] = flat[pos:pos + size].reshape(layer.params[k].shape)
            pos += size
        return float(flat[n_grads]) / total, [float(h) for h in flat[n_grads + 1:]]

    def _check_updates(self, updates, where):
        """Refuse NaN/Inf buffer values a training forward declared (e.g. a moving variance that overflowed)
        before anything changes, as for the gradients."""
        for layer, new in updates:
            for k, v in new.items():
                if not K.all_finite(v):
                    self.stop_training = True
                    raise FloatingPointError(
                        f"{where}: the new {layer.name}/{k} became NaN or Inf; training stopped before this update. "
                        "Scale the inputs (e.g. x / 255) or lower the learning rate.")

    @staticmethod
    def _apply_updates(updates):
        for layer, new in updates:
            for k, v in new.items():
                layer.buffers[k][...] = v

    def trace(self, x, y=None):
        """Per-layer activations and gradients for one batch (see :func:`npcnn.introspect.trace`)."""
        from npcnn.introspect import trace

        return trace(self, x, y)

    def __call__(self, x, training=False):
        """Outputs for one batch (checked like :meth:`predict`). With ``training=True`` the layers run in
        training mode and, as in Keras, the buffers they declare (BatchNormalization's moving statistics)
        are updated; no weight is trained."""
        x = self._check_x(x, "__call__")
        out = self.forward(np.ascontiguousarray(x, dtype=np.float32), training=training)
        if training:
            updates = self.plan.updates(self._last_train[0])
            self._check_updates(updates, "__call__")
            self._apply_updates(updates)
        return out

    # ------------------------------------------------------------------ public loops
    def train_on_batch(self, x, y):
        """One update on one batch; returns [loss, metrics...] measured before the update.

        Under MPI x is the global batch and each rank trains on its slice (one Allreduce); unlike ``fit``
        it does not copy rank 0's weights first: call ``npcnn.distributed.sync_model(model)`` once before."""
        self._require_compiled("train_on_batch")
        x, y = self._check_xy(x, y, "train_on_batch")
        with self._training("train_on_batch"):
            # under MPI, x is the global batch: this rank trains on its slice (see npcnn.distributed)
            distributed.check_global_batches(len(x), len(x), "train_on_batch")
            a, b = distributed.split(len(x))
            loss, hits = self._train_step(self._batch(x, np.arange(a, b)), y[a:b], "train_on_batch",
                                          total=len(x), offset=a)
        return self._result(loss, [h / len(x) for h in hits])

    def test_on_batch(self, x, y):
        """[loss, metrics...] on one batch, no update."""
        return self.evaluate(x, y, batch_size=len(x), verbose=0)

    @contextmanager
    def _training(self, where):
        """Hold the model's training lock: one fit (or train_on_batch) at a time per model."""
        if not self._fit_lock.acquire(blocking=False):
            if getattr(self, "_fit_thread", None) == threading.get_ident():
                raise RuntimeError(f"{where}: called while this model is training in the same thread (from a "
                                   "callback?); stop the running fit first (model.stop_training = True)")
            raise RuntimeError(f"{where}: this model is already training in another thread; wait for that "
                               "fit to finish, or train a copy (copy.deepcopy(model))")
        self._fit_thread = threading.get_ident()
        try:
            yield
        finally:
            self._fit_thread = None
            self._fit_lock.release()

    def fit(self, x=None, y=None, batch_size=32, epochs=1, verbose=1, callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        """Train for ``epochs`` epochs; returns a :class:`npcnn.callbacks.History`.

        Args:
            x: (N, H, W, C) uint8 or float images (cast to float32 batch by batch).
            y: (N,) or (N, 1) integer labels.
            batch_size: samples per update (the last batch may be smaller).
            verbose: 0 silent, 1 progress bar (one line per epoch when not a terminal), 2 one line per epoch.
            callbacks: Callback instances, called in order after the progress bar and before the
                History (Keras's order).
            validation_split: fraction of the *last* samples held out before shuffling (as Keras).
            validation_data: (x_val, y_val) evaluated after each epoch.
            shuffle: a fresh permutation of the training samples every epoch.
            initial_epoch: epoch to start from (to resume a run).
        Raises:
            FloatingPointError: the loss or a gradient became NaN or Inf (names the epoch and batch);
                the weights are those of the last good batch, and no callback sees the bad epoch's end.
            NotCompiledError: called before ``compile`` (a RuntimeError and a ValueError).
            RuntimeError: the model is already training in another thread.
            ValueError, TypeError: bad data or arguments (see docs/errors.md), found before any
                kernel runs: the whole of x and y is checked once per call.
        """
        self._require_compiled("fit")
        with self._training("fit"), _rank0_output():
            return self._fit(x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data,
                             shuffle, initial_epoch)

    def _fit(self, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
             initial_epoch):
        batch_size = 32 if batch_size is None else positive_int(batch_size, "batch_size", "fit")  # Keras: None = 32
        epochs = positive_int(epochs, "epochs", "fit")
        verbose = check_verbose(verbose, "fit")
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)):
            raise TypeError(f"fit: initial_epoch must be a non-negative integer, got {initial_epoch!r}")
        if initial_epoch < 0:
            raise ValueError(f"fit: initial_epoch must be a non-negative integer, got {initial_epoch!r}")
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float, np.floating)):
            raise TypeError(f"fit: validation_split must be a float in [0, 1), got {validation_split!r}")
        if not 0 <= validation_split < 1:
            raise ValueError(f"fit: validation_split must be a float in [0, 1), got {validation_split!r}")
        callbacks = _check_callbacks(callbacks)
        x, y = self._check_xy(x, y, "fit")
        if validation_data is None and validation_split > 0:
            n_val = int(len(x) * validation_split)
            if n_val == 0 or n_val == len(x):
                raise ValueError(f"fit: validation_split={validation_split} of {len(x)} samples leaves an empty set")
            validation_data = (x[-n_val:], y[-n_val:])
            x, y = x[:-n_val], y[:-n_val]
        if validation_data is not None:
            if isinstance(validation_data, (tuple, list)) and len(validation_data) == 3:
                raise ValueError("fit: validation_data=(x_val, y_val, sample_weight): npcnn has no sample weights; "
                                 "pass (x_val, y_val)")
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError(
                    f"fit: validation_data must be a tuple (x_val, y_val), got {type(validation_data).__name__}"
                    + (f" of length {len(validation_data)}" if isinstance(validation_data, (tuple, list)) else "")
                )
            validation_data = self._check_xy(validation_data[0], validation_data[1], "fit(validation_data)")

        n = len(x)
        steps = -(-n // batch_size)
        world = distributed.world()
        if world.active:  # MPI: same data and batches everywhere, rank 0's weights, optimizer and RNG
            distributed.check_global_batches(n, batch_size, "fit")
            distributed.check_same_data("fit", x, y, *(validation_data or ()))
            distributed.sync_model(self)
            verbose = verbose if world.is_root else 0  # one progress bar, rank 0's
        history = cbks.History()
        cb_list = [cbks.ProgbarLogger(verbose, steps=steps, epochs=epochs)] if verbose else []
        cb_list += callbacks + [history]  # Keras's order: the progress bar first, History last
        cb = cbks.CallbackList(cb_list, self)
        self.history = history
        self.stop_training = False
        cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            if self.stop_training:  # a callback stopped it before this epoch (e.g. a resumed EarlyStopping)
                break
            cb.on_epoch_begin(epoch)
            order = get_rng().permutation(n) if shuffle else np.arange(n)
            seen = loss_sum = 0.0
            hit_sums = [0.0] * len(self._metric_objects)
            logs = {}
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                if shuffle:
                    idx = np.sort(idx)  # same batch content; sorted reads are faster
                cb.on_train_batch_begin(step)
                a, b = distributed.split(len(idx))  # under MPI this rank's slice; the step sums over the ranks
                loss, hits = self._train_step(self._batch(x, idx[a:b]), y[idx[a:b]], "fit", epoch, step,
                                              total=len(idx), offset=a)
                seen += len(idx)
                loss_sum += loss * len(idx)
                hit_sums = [a + b for a, b in zip(hit_sums, hits)]
                logs = self._logs(loss_sum / seen, [h / seen for h in hit_sums])
                cb.on_train_batch_end(step, logs)
                if self.stop_training:
                    break
            distributed.check_in_sync(self, f"fit (epoch {epoch + 1})")
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=batch_size, verbose=0, _checked=True)
                val = val if isinstance(val, list) else [val]
                logs.update({"val_" + k: v for k, v in zip(self._metric_names(), val)})
            cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cb.on_train_end()
        return history

    def evaluate(self, x=None, y=None, batch_size=32, verbose=1, _checked=False):
        """Loss and metrics over (x, y) in batches: [loss, metric...] in compile's order (the loss
        alone without metrics)."""
        self._require_compiled("evaluate")
        batch_size = 32 if batch_size is None else positive_int(batch_size, "batch_size", "evaluate")
        verbose = check_verbose(verbose, "evaluate")
        if not _checked:
            x, y = self._check_xy(x, y, "evaluate")
            distributed.check_same_data("evaluate", x, y)
        n = len(x)
        world = distributed.world()
        # under MPI each rank evaluates its slice of x; the sums are added over the ranks at the end
        first, last = distributed.split(n)
        local_n = last - first
        steps = -(-local_n // batch_size)
        plan = self.plan
        logits = plan.logits_loss
        # verbose=1: a live bar on a terminal; verbose=2 (or not a terminal): one final line (rank 0 only)
        bar = cbks.Progbar(steps, live=None if verbose == 1 else False) if verbose and world.is_root else None
        loss_sum = 0.0
        hit_sums = [0.0] * len(self._metric_objects)
        for step in range(steps):
            sl = slice(first + step * batch_size, min(last, first + (step + 1) * batch_size))
            out = self._infer(plan, self._batch(x, sl), logits)
            loss, _ = losses_mod.unchecked_compute(self.loss)(out, y[sl], logits=logits)
            loss_sum += float(loss) * len(out)
            hit_sums = [a + b for a, b in zip(hit_sums, self._hits(out, y[sl]))]
            if bar is not None:
                done = min(local_n, (step + 1) * batch_size)
                bar.update(step + 1, self._logs(loss_sum / done, [h / done for h in hit_sums]))
        if world.active:
            total = world.allreduce(np.array([loss_sum] + hit_sums, dtype=np.float64))
            loss_sum, hit_sums = float(total[0]), [float(h) for h in total[1:]]
        loss_mean = loss_sum / n + plan.penalty()  # Keras's evaluate reports the loss with the weight penalties
        result = self._result(loss_mean, [h / n for h in hit_sums])
        if bar is not None:
            bar.close(self._logs(loss_mean, [h / n for h in hit_sums]))
        return result

    def predict(self, x, batch_size=32, verbose=0):
        """Model outputs for x, in batches: (N,) + output_shape float32 (probabilities after a softmax)."""
        batch_size = 32 if batch_size is None else positive_int(batch_size, "batch_size", "predict")  # Keras: None = 32
        verbose = check_verbose(verbose, "predict")
        x = self._check_x(x, "predict")
        distributed.check_same_data("predict", x)
        world = distributed.world()
        plan = self.plan
        first, last = distributed.split(len(x))  # under MPI: this rank's slice, gathered at the end
        steps = -(-(last - first) // batch_size)
        out = np.empty((last - first,) + tuple(self.output_shape), dtype=np.float32)
        bar = cbks.Progbar(steps) if verbose == 1 and world.is_root else None
        for step in range(steps):
            sl = slice(step * batch_size, min(last - first, (step + 1) * batch_size))
            out[sl] = self._infer(plan, self._batch(x, slice(first + sl.start, first + sl.stop)), False)
            if bar is not None:
                bar.update(step + 1, {})
        if bar is not None:
            bar.close({})
        return world.gather_rows(out, len(x)) if world.active else out

    def predict_on_batch(self, x):
        x = self._check_x(x, "predict_on_batch")
        return self.predict(x, batch_size=len(x))

    # ------------------------------------------------------------------ helpers
    def _metric_names(self):
        return ["loss"] + [m.name for m in self._metric_objects]

    def _hits(self, out, labels):
        """Each metric's count of hits in a batch (out: outputs or logits (N, K); labels as the loss takes)."""
        return [m.hits(out, labels) for m in self._metric_objects]

    def _logs(self, loss, values):
        """{'loss': loss, metric name: value, ...} (values: one per metric, in compile's order)."""
        logs = {"loss": loss}
        for m, v in zip(self._metric_objects, values):
            logs[m.name] = v
        return logs

    def _result(self, loss, values):
        return [loss] + list(values) if self._metric_objects else loss

    @staticmethod
    def _batch(x, idx):
        return np.ascontiguousarray(x[idx], dtype=np.float32)

    def _check_finite_step(self, loss, grads, where, epoch, step):
        """Raise FloatingPointError if the loss or any gradient is NaN/Inf (before the update).

        One pass per tensor (``kernels.all_finite``: on the Numba backend an integer test of the
        exponent bits).
        """
        bad = None
        if not np.isfinite(loss):
            bad = f"the loss became {loss}"
        else:
            for i, g in enumerate(grads):
                if not K.all_finite(g):
                    name = [f"{layer.name}/{k}" for layer in self.layers for k in layer.params][i]
                    bad = f"the gradient of {name} became NaN or Inf (loss {loss:.6g})"
                    break
        if bad is None:
            return
        at = f"epoch {epoch + 1}, batch {step + 1}" if epoch is not None else "this batch"
        self.stop_training = True
        raise distributed.collective(FloatingPointError(
            f"{where}: {bad} at {at}; training stopped before this update, so the weights are those of "
            "the last good batch. Lower the learning rate, scale the inputs (e.g. x / 255) or check the "
            "data for extreme values."
        ))

    def _require_compiled(self, where):
        if not self.compiled:
            raise NotCompiledError(
                f"{where}: the model must be compiled first: call model.compile(optimizer='adam', "
                "loss='sparse_categorical_crossentropy', metrics=['accuracy'])"
            )

    def _require_built(self, where):
        if not self.layers:
            raise NotBuiltError(f"{where}: the model has no layers; add some with model.add(...)")
        if not self.built:
            raise NotBuiltError(
                f"{where}: the model is not built yet; give the first layer input_shape=(H, W, C) "
                "or call model.build((None, H, W, C))"
            )

    def _check_x(self, x, where):
        """x as an array of shape (N,) + input_shape with numeric dtype and finite values, or raise.

        The NaN/Inf scan runs once per call over the whole array (in chunks), never per step.
        """
        if x is None:
            raise ValueError(f"{where}: x is required")
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception as e:  # ragged lists and the like
                raise TypeError(f"{where}: x must be a numeric array, could not convert it: {e}") from None
        if x.dtype.kind not in _NUMERIC_KINDS:
            raise TypeError(f"{where}: x must hold numbers (uint8 or float), got dtype {x.dtype}")
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(f"{where}: x is empty (shape {x.shape}); pass at least one sample")
        if not self.layers:
            raise NotBuiltError(f"{where}: the model has no layers; add some with model.add(...)")
        if self.input_shape is None:
            self.build(x.shape[1:])
        expected = tuple(self.input_shape)
        if tuple(x.shape[1:]) != expected:
            if x.ndim - 1 != len(expected):
                what = f"rank {x.ndim} (batch + {x.ndim - 1} axes); expected rank {len(expected) + 1}"
                if x.ndim == len(expected):
                    what += " (a single sample? add the batch axis: x[None])"
            else:
                what = "per-sample shape " + str(tuple(x.shape[1:])) + ", expected " + str(expected)
            raise ValueError(
                f"{where}: x has shape {x.shape}, but the model expects (N,) + {expected} "
                f"(batch first, channels last): {what}"
            )
        if x.dtype.kind == "f":
            lo, hi = _value_range(x)
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError(f"{where}: x contains NaN or Inf values; clean or impute them first")
            if x.dtype.itemsize > 4 and max(-lo, hi) > np.finfo(np.float32).max:
                raise ValueError(f"{where}: x holds values beyond float32's range (|x| > 3.4e38)")
        return x

    def _check_output_for_loss(self, where, loss=None):
        loss = loss if loss is not None else self.loss
        if len(self.output_shape) != 1:
            raise ValueError(
                f"{where}: the model's output has shape {(None,) + tuple(self.output_shape)}, but "
                f"{getattr(loss, 'name', 'the loss')} needs (None, classes): add a Flatten() before the "
                "last Dense layer"
            )

    def _check_xy(self, x, y, where):
        """x as in :meth:`_check_x`; y as the loss takes its labels (checked once per call): int64 (N,)
        labels in [0, classes) for a sparse loss, float32 (N, classes) rows for a categorical one."""
        x = self._check_x(x, where)
        if y is None:
            raise ValueError(f"{where}: y (the labels) is required")
        self._check_output_for_loss(where)
        if isinstance(self.loss, losses_mod.Loss):
            y = self.loss.check_labels(y, len(x), self.output_shape[-1], where, "labels")
        else:
            y = losses_mod.check_labels(y, len(x), self.output_shape[-1], where, "labels")
        return x, y


@contextmanager
def _rank0_output():
    """Under MPI, the ranks other than 0 print nothing to stdout (progress, callbacks' messages) in the block."""
    if distributed.writes_here():
        yield
        return
    import contextlib

    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def _check_callbacks(callbacks):
    if callbacks is None:
        return []
    if isinstance(callbacks, cbks.Callback):
        raise TypeError("fit: callbacks must be a list of Callback instances, got a single Callback; "
                        "use callbacks=[...]")
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"fit: callbacks must be a list of Callback instances, got {type(callbacks).__name__}")
    for cb in callbacks:
        if not isinstance(cb, cbks.Callback):
            raise TypeError(f"fit: callbacks must be Callback instances, got {cb!r} ({type(cb).__name__})")
    return list(callbacks)


def cifar10_cnn(input_shape=(32, 32, 3), filters=(32, 64, 64), units=64, classes=10, compile=True):
    """The Keras CIFAR-10 tutorial's CNN (122,570 parameters at the defaults), optionally shrunk.

    Conv2D(f1, 3x3, relu) -> MaxPooling2D(2) -> Conv2D(f2, 3x3, relu) -> MaxPooling2D(2) ->
    Conv2D(f3, 3x3, relu) -> Flatten -> Dense(units, relu) -> Dense(classes, softmax); compiled
    (when ``compile``) with 'adam', 'sparse_categorical_crossentropy' and accuracy. Inputs need
    H, W >= 18 for the third convolution to fit.
    """
    from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D

    f1, f2, f3 = filters
    model = Sequential([
        Conv2D(f1, (3, 3), activation="relu", input_shape=tuple(input_shape)),
        MaxPooling2D((2, 2)),
        Conv2D(f2, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Conv2D(f3, (3, 3), activation="relu"),
        Flatten(),
        Dense(units, activation="relu"),
        Dense(classes, activation="softmax"),
    ])
    if compile:
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _value_range(x, chunk=1 << 22):
    """(min, max) of a float array, chunk by chunk (no temporary the size of x; the whole CIFAR-10
    training set in float64 is 1.2 GB). A NaN anywhere makes both NaN, an inf makes one infinite."""
    flat = x.reshape(-1)
    lo, hi = np.inf, -np.inf
    for i in range(0, flat.size, chunk):
        part = flat[i:i + chunk]
        part_lo, part_hi = part.min(), part.max()
        if np.isnan(part_lo) or np.isnan(part_hi):  # (Python's min/max would drop a NaN)
            return np.nan, np.nan
        lo, hi = min(lo, part_lo), max(hi, part_hi)
    return lo, hi


def _row(cols, width):
    return "".join(f" {str(c):<{w - 1}}" for c, w in zip(cols, width))


def _bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}"
        n /= 1024


def model_from_json(json_string):
    """A new (uncompiled) :class:`Sequential` from :meth:`Sequential.to_json`'s string; built when the
    saved model was, with freshly initialised weights.

    Raises:
        ValueError: not JSON, not a Sequential's config, an unknown layer class or a layer config the
            layer refuses (named).
    """
    import json

    try:
        data = json.loads(json_string)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model_from_json: not a model's JSON ({e})") from None
    return _model_from_dict(data, "model_from_json")


def _model_from_dict(data, where):
    from npcnn.layers import deserialize

    if not isinstance(data, dict) or data.get("class_name") != "Sequential" or not isinstance(data.get("config"), dict):
        raise ValueError(f"{where}: expected {{'class_name': 'Sequential', 'config': {{...}}}}, got "
                         f"{str(data)[:200]}")
    config = data["config"]
    layers = config.get("layers")
    if not isinstance(layers, list):
        raise ValueError(f"{where}: the model's config has no 'layers' list")
    name = config.get("name") or "sequential"
    model = Sequential(name=str(name))
    for i, layer_config in enumerate(layers):
        try:
            if isinstance(layer_config, dict) and layer_config.get("class_name") == "InputLayer":  # Keras 3's JSON
                from npcnn.layers.input import InputLayer

                model.add(InputLayer.from_config(layer_config.get("config") or {}))
                continue
            model.add(deserialize(layer_config))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: layer {i}: {e}") from None
    shape = config.get("build_input_shape")
    if shape is not None and not model.built:
        model.build(tuple(shape))
    counts = {}  # so that a layer added later gets a fresh default name, as in the saved model
    for layer in model.layers:
        m = re.fullmatch(r"(.+?)(?:_(\d+))?", layer.name)
        base, n = m.group(1), int(m.group(2) or 0)
        counts[base] = max(counts.get(base, 0), n + 1)
    model._name_counts = counts
    return model


def load_model(filepath, compile=True):
    """The model saved by :meth:`Sequential.save`: architecture, weights and, when it was compiled and
    ``compile``, compiled again with the saved optimizer (its state restored when saved), loss and
    metrics. Never unpickles; the file is checked whole first.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an npcnn model file (a weights file, a checkpoint, a Keras file, ...), or its
            parts do not fit together (every mismatch listed).
    """
    from npcnn import serialization

    filepath = os.fspath(filepath)
    where = f"load_model({filepath!r})"
    meta, weights, opt_state = saving.read_model_file(filepath, "load_model")
    model = _model_from_dict(meta["model"], where)
    if not model.built:
        raise ValueError(f"{where}: the saved architecture has no input shape; cannot place its weights")
    saving.assign_weight_dict(model, weights, where)
    settings = meta.get("compile")
    if compile and settings:
        optimizer = serialization.deserialize_object(settings.get("optimizer"), ["npcnn.optimizers"], "optimizer",
                                                     where)
        loss = serialization.deserialize_object(settings.get("loss"), ["npcnn.losses"], "loss", where)
        metrics = [m if isinstance(m, str) else serialization.deserialize_object(m, ["npcnn.metrics"], "metric", where)
                   for m in settings.get("metrics") or []]
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
        if opt_state:
            try:
                model.optimizer.set_state(model.params, opt_state)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{where}: the saved optimizer state does not fit: {e}") from None
    return model



def cifar10_deep(input_shape=(32, 32, 3), classes=10, compile=True, augment=True, learning_rate=1e-3,
                 decay_steps=30 * 782, weight_decay=0.05, name="cifar10_deep"):
    """The deeper CIFAR-10 model of issue 14 (552,874 parameters, 1,152 of them non-trainable), in
    Keras notation::

        block(f, d) = Conv2D(f, 3x3, 'same') -> BatchNormalization -> Activation('relu')
                   -> Conv2D(f, 3x3, 'same') -> BatchNormalization -> Activation('relu')
                   -> MaxPooling2D(2) -> Dropout(d)
        [RandomFlip('horizontal'), RandomTranslation(0.1, 0.1)]   (training only; left out if not augment)
        -> block(32, 0.2) -> block(64, 0.3) -> block(128, 0.4)
        -> Flatten -> Dense(128) -> BatchNormalization -> Activation('relu') -> Dropout(0.5)
        -> Dense(classes, softmax)

    Glorot-uniform kernels and zero biases (Keras's defaults). Compiled (when ``compile``) with AdamW
    (decoupled ``weight_decay``: each update first does ``w -= lr * weight_decay * w``, every trained
    array) whose learning rate follows ``npcnn.schedules.CosineDecay(learning_rate, decay_steps)`` (from
    ``learning_rate`` to 0 over ``decay_steps`` updates; the default, 30 * 782, is 30 epochs of batch 64
    on 50,000 images; ``decay_steps=None``: a constant rate), 'sparse_categorical_crossentropy' and accuracy.
    ``weight_decay=0`` or None: plain Adam (the recipe before 2026-12-02, about 1 % less test accuracy
    after 30 epochs: 0.831 / 0.833 against 0.841 / 0.838 for seeds 0 / 1, README "A deeper model").
    ``augment=False`` leaves the two augmentation layers out (for timing: they do nothing at inference).
    """
    from npcnn.layers import (
        Activation,
        BatchNormalization,
        Conv2D,
        Dense,
        Dropout,
        Flatten,
        MaxPooling2D,
        RandomFlip,
        RandomTranslation,
    )

    first = {"input_shape": tuple(input_shape)}
    layers = []
    if augment:
        layers += [RandomFlip("horizontal", **first), RandomTranslation(0.1, 0.1)]
        first = {}
    for filters, rate in ((32, 0.2), (64, 0.3), (128, 0.4)):
        for _ in range(2):
            layers += [Conv2D(filters, (3, 3), padding="same", **first), BatchNormalization(), Activation("relu")]
            first = {}
        layers += [MaxPooling2D((2, 2)), Dropout(rate)]
    layers += [Flatten(), Dense(128), BatchNormalization(), Activation("relu"), Dropout(0.5),
               Dense(classes, activation="softmax")]
    model = Sequential(layers, name=name)
    if compile:
        from npcnn.optimizers import Adam, AdamW
        from npcnn.schedules import CosineDecay

        lr = learning_rate if decay_steps is None else CosineDecay(learning_rate, decay_steps)
        optimizer = AdamW(lr, weight_decay=weight_decay) if weight_decay else Adam(learning_rate=lr)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


__all__ = ["Sequential", "cifar10_cnn", "cifar10_deep", "model_from_json", "load_model"]
