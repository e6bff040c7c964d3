"""The layer / state / plan contract (issue 10) and the model API fixes of issue 11 (items 5, 11, 12).

* a kernel swapped in with ``npcnn.kernels.override`` reaches the layers, the fused steps and the
  model, so a learner's broken kernel makes gradcheck fail;
* layers keep no per-call state: a model's passes leave every layer's fields as they were;
* the plan decides fusion and the softmax head once;
* no import circles between npcnn's modules, and no module shadows the standard library;
* History is the last callback, as in Keras;
* NPCNN_FUSE / NPCNN_DATA_PARALLEL accept only on/off values, naming the variable otherwise;
* a failed ``add`` changes nothing; metrics are reported under the names given.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import seed_model

import npcnn
from npcnn import callbacks as cbks
from npcnn import gradcheck
from npcnn import plan as plan_mod
from npcnn.layers import Activation, Conv2D, Dense, Flatten, MaxPooling2D, ReLU, Softmax
from npcnn.models import Sequential

PACKAGE = Path(npcnn.__file__).parent


# ------------------------------------------------------------------ kernels a learner swaps in
def _halved(fn):
    def broken(*args, **kwargs):
        return fn(*args, **kwargs) * 0.5

    return broken


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_an_overridden_col2im_reaches_conv2d_and_gradcheck_fails(backend_name):
    layer = Conv2D(3, (3, 2), strides=(2, 1), padding="same")
    with npcnn.use_backend(backend_name):
        assert all(r.passed for r in gradcheck.check_layer(layer, (7, 6, 2)))
        broken = _halved(npcnn.kernels.get_kernel("col2im", backend_name))
        with npcnn.kernels.override("col2im", broken):
            rows = {r.tensor: r for r in gradcheck.check_layer(layer, (7, 6, 2))}
        assert not rows["input"].passed  # dx = col2im(...) is halved
        assert rows["kernel"].passed and rows["bias"].passed  # the weight gradients do not use col2im
        assert all(r.passed for r in gradcheck.check_layer(layer, (7, 6, 2)))  # restored


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_an_overridden_kernel_reaches_the_models_fused_steps(backend_name):
    """The seed model runs conv + ReLU + pool as one fused step; its input gradient still goes through
    the registered col2im, so halving it breaks the whole-model check of the earlier layers."""
    npcnn.set_random_seed(0)
    model = seed_model(input_shape=(18, 18, 3), filters=(3, 4, 3), units=5, classes=4)
    assert isinstance(model.plan.steps[1], plan_mod.ConvReLUMaxPool)
    x = gradcheck.spread_input((3, 18, 18, 3), np.random.default_rng(0))
    y = np.array([0, 3, 1])
    with npcnn.use_backend(backend_name):
        assert all(r.passed for r in gradcheck.check_model(model, x, y))
        with npcnn.kernels.override("col2im", _halved(npcnn.kernels.get_kernel("col2im", backend_name))):
            rows = gradcheck.check_model(model, x, y)
    failed = {r.layer for r in rows if not r.passed}
    assert failed == {"conv2d", "conv2d_1"}  # the layers before the last col2im; the rest are untouched


def test_an_overridden_relu_backward_reaches_dense_activations():
    model = Sequential([Flatten(input_shape=(3, 3, 2)), Dense(5, activation="relu"), Dense(4)])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = gradcheck.spread_input((4, 3, 3, 2), np.random.default_rng(1))
    y = np.array([0, 1, 2, 3])
    with npcnn.use_backend("numpy"):
        with npcnn.kernels.override("relu_backward", _halved(npcnn.kernels.get_kernel("relu_backward"))):
            rows = gradcheck.check_model(model, x, y)
    assert {r.layer for r in rows if not r.passed} == {"dense"}


# ------------------------------------------------------------------ no per-call state on layers
def test_training_and_inference_leave_the_layers_fields_alone(backend, rng):
    model = seed_model(input_shape=(18, 18, 3), filters=(4, 6, 5), units=8)
    x = rng.random((16, 18, 18, 3), dtype=np.float32)
    y = rng.integers(0, 10, 16)
    model.train_on_batch(x, y)
    before = [{k: v for k, v in vars(layer).items() if k != "grads"} for layer in model.layers]
    model.train_on_batch(x, y)
    model.predict(x)
    model.evaluate(x, y, verbose=0)
    after = [{k: v for k, v in vars(layer).items() if k != "grads"} for layer in model.layers]
    assert before == after  # the same objects: weights are updated in place, nothing else is written


def test_the_plan_decides_fusion_and_the_softmax_head_once():
    model = seed_model(input_shape=(18, 18, 3), filters=(4, 6, 5), units=8)
    plan = model.plan
    kinds = [type(s).__name__ for s in plan.steps]
    assert kinds == ["ConvReLUMaxPool", "ConvReLUMaxPool", "ConvReLU", "OpStep", "OpStep", "OpStep", "OpStep",
                     "OpStep"]
    assert plan.owns_softmax and plan.logits_loss and isinstance(plan.steps[-1].op, Softmax)
    assert model.plan is plan  # compiled once
    model.add(Activation("linear"))  # the layers changed: a new plan, whose last step is no softmax
    assert model.plan is not plan and not model.plan.owns_softmax


@pytest.mark.parametrize("layers", [
    lambda: [Conv2D(2, 3, input_shape=(8, 8, 1)), Activation("relu"), MaxPooling2D(), Flatten()],
    lambda: [Conv2D(2, 3, input_shape=(8, 8, 1)), ReLU(), MaxPooling2D(), Flatten()],
], ids=["Activation('relu')", "ReLU()"])
def test_a_separate_relu_layer_fuses_like_the_activation_argument(layers):
    model = Sequential(layers())
    step = model.plan.steps[0]
    assert isinstance(step, plan_mod.ConvReLUMaxPool) and len(step.layers) == 3
    reference = Sequential([Conv2D(2, 3, activation="relu", input_shape=(8, 8, 1)), MaxPooling2D(), Flatten()])
    reference.set_weights(model.get_weights())
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), reference.predict(x))


def test_softmax_tail_variants_train_alike(rng):
    """Dense(softmax), Dense + Activation('softmax') and Dense + Softmax() are one function, and the
    loss head owns the softmax in each."""
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = np.arange(6) % 3
    results = []
    for tail in ([Dense(3, activation="softmax", input_shape=(4,))],
                 [Dense(3, input_shape=(4,)), Activation("softmax")],
                 [Dense(3, input_shape=(4,)), Softmax()]):
        npcnn.set_random_seed(5)
        model = Sequential(tail)
        model.compile("sgd", "sparse_categorical_crossentropy")
        assert model.plan.owns_softmax
        model.train_on_batch(x, y)
        results.append((model.get_weights(), model.predict(x)))
    for w, p in results[1:]:
        for a, b in zip(results[0][0], w):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(results[0][1], p)


# ------------------------------------------------------------------ imports
def _module_imports(path):
    """npcnn modules imported at module level (not inside functions) by the file at ``path``."""
    tree = ast.parse(path.read_text())
    found = set()
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(package.split(".")[:-node.level] + [node.module])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        found |= {n for n in names if n.startswith("npcnn")}
    return found


def test_no_import_circles():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {m: {i for i in _module_imports(p) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how packages work: not a circle
    for m in graph:
        graph[m] = {i for i in graph[m] if not (modules[m].name == "__init__.py" and i.startswith(m + "."))}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for i in sorted(graph[m]):
            if state.get(i) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(i):] + [i]))
            if i not in state:
                visit(i)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_module_shadows_the_standard_library():
    names = {p.stem for p in PACKAGE.rglob("*.py")}
    assert not names & set(sys.stdlib_module_names)  # npcnn/inspect.py was one
    assert "npcnn.introspect" in sys.modules or __import__("npcnn.introspect")


# ------------------------------------------------------------------ callbacks
def test_history_is_the_last_callback_as_in_keras(rng):
    seen = []

    class Spy(cbks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append([type(c).__name__ for c in self.model._callbacks_seen])

    model = Sequential([Flatten(input_shape=(2, 2, 1)), Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    original = cbks.CallbackList.__init__

    def record(self, callbacks, m):
        m._callbacks_seen = list(callbacks)
        original(self, callbacks, m)

    cbks.CallbackList.__init__ = record
    try:
        model.fit(rng.random((4, 2, 2, 1)), [0, 1, 2, 0], epochs=1, verbose=1, callbacks=[Spy()])
    finally:
        cbks.CallbackList.__init__ = original
    assert seen == [["ProgbarLogger", "Spy", "History"]]


# ------------------------------------------------------------------ environment switches
@pytest.mark.parametrize("var", ["NPCNN_FUSE", "NPCNN_DATA_PARALLEL"])
@pytest.mark.parametrize("value,ok", [("0", True), ("off", True), ("TRUE", True), ("", True), ("garbage", False),
                                      ("2", False)])
def test_switches_accept_only_on_off_values(var, value, ok):
    env = dict(os.environ, **{var: value})
    proc = subprocess.run([sys.executable, "-c", "import npcnn.models"], env=env, capture_output=True, text=True,
                          timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0
        assert var in proc.stderr and "on/off" in proc.stderr


def test_switches_take_effect():
    env = dict(os.environ, NPCNN_FUSE="no", NPCNN_DATA_PARALLEL="off")
    code = ("import npcnn, npcnn.plan as p; from npcnn.models import cifar10_cnn;"
            "print(npcnn.get_data_parallel(), type(cifar10_cnn().plan.steps[0]).__name__)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "ConvReLU"], out.stderr


# ------------------------------------------------------------------ issue 11 items 11 and 12
def test_a_failed_add_changes_nothing():
    model = Sequential([Conv2D(2, 3, input_shape=(4, 4, 1))])
    before = (list(model.layers), model.output_shape, dict(model._name_counts))
    bad = Conv2D(2, 5)  # does not fit the (2, 2) map
    with pytest.raises(ValueError, match="does not fit"):
        model.add(bad)
    assert (list(model.layers), model.output_shape, dict(model._name_counts)) == before
    assert bad.name is None and not bad.built
    model.add(Flatten())  # a later valid add works
    model.add(Dense(3))
    assert [layer.name for layer in model.layers] == ["conv2d", "flatten", "dense"]
    assert model.output_shape == (3,)


@pytest.mark.parametrize("metrics", [["accuracy"], ["acc"], ["sparse_categorical_accuracy"],
                                     ["accuracy", "sparse_categorical_accuracy"]])
def test_metrics_are_reported_under_the_names_given(metrics, rng):
    model = Sequential([Flatten(input_shape=(2, 2, 1)), Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=metrics)
    x, y = rng.random((8, 2, 2, 1)), np.arange(8) % 3
    history = model.fit(x, y, epochs=2, verbose=0, validation_data=(x, y))
    assert set(history.history) == {"loss", "val_loss"} | set(metrics) | {"val_" + m for m in metrics}
    result = model.evaluate(x, y, verbose=0)
    assert len(result) == 1 + len(metrics)
    assert result[1] == pytest.approx(np.mean(model.predict(x).argmax(1) == y))
    assert all(r == result[1] for r in result[1:])


# ------------------------------------------------------------------ weight penalties (the hook)
class _L2:
    """A minimal regularizer: R(w) = l2 * sum(w^2), dR/dw = 2 l2 w (the contract npcnn.regularizers follows)."""

    def __init__(self, l2):
        self.l2 = l2

    def __call__(self, w):
        return float(self.l2 * np.sum(np.square(w, dtype=np.float64)))

    def gradient(self, w):
        return (2 * self.l2 * w).astype(w.dtype)


def test_weight_penalties_join_the_loss_and_the_gradients(rng):
    x = gradcheck.spread_input((4, 3, 3, 2), rng)
    y = np.array([0, 1, 2, 0])
    npcnn.set_random_seed(2)
    model = Sequential([Flatten(input_shape=(3, 3, 2)), Dense(5, activation="relu"), Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    plain = model.evaluate(x, y, verbose=0)
    model.layers[1].regularizers = {"kernel": _L2(0.1)}
    penalty = 0.1 * float(np.sum(model.layers[1].params["kernel"].astype(np.float64) ** 2))
    assert model.evaluate(x, y, verbose=0) == pytest.approx(plain + penalty, rel=1e-6)
    assert all(r.passed for r in gradcheck.check_model(model, x, y))  # d(loss + R)/dw, both sides
    loss, _, _ = model._loss_and_grad(x.astype(np.float32), y)
    assert loss == pytest.approx(plain + penalty, rel=1e-5)


def test_summary_widens_for_long_layer_names():
    from npcnn.layers import BatchNormalization

    model = Sequential([Conv2D(4, 3, input_shape=(8, 8, 3)), BatchNormalization()])
    lines = []
    model.summary(print_fn=lines.append)
    header = next(line for line in lines if "Layer (type)" in line)
    row = next(line for line in lines if "batch_normalization (BatchNormalization)" in line)
    assert row.index("(None, 6, 6, 4)") == header.index("Output Shape")
    assert any(line.startswith("Non-trainable params: 8 ") for line in lines)


def test_a_standalone_random_layer_draws_a_new_mask_each_call():
    from npcnn.layers import Dropout

    layer = Dropout(0.5)
    x = np.ones((4, 50), np.float32)
    a, b = layer.forward(x, training=True), layer.forward(x, training=True)
    assert not np.array_equal(a, b)
    npcnn.set_random_seed(3)
    c = layer.forward(x, training=True)
    npcnn.set_random_seed(3)
    np.testing.assert_array_equal(c, layer.forward(x, training=True))  # seeded: reproducible


@pytest.mark.parametrize("threads", [1, 2])
def test_resume_with_batchnorm_and_dropout_is_bit_identical(tmp_path, backend, threads):
    """Moving statistics (buffers) and the step seeds of Dropout (drawn from npcnn's generator, whose
    state the checkpoint keeps) resume exactly: 1 + 2 epochs end where 3 uninterrupted epochs do."""
    from npcnn.checkpoint import TrainingCheckpoint, restore_checkpoint
    from npcnn.layers import BatchNormalization, Dropout

    def build():
        npcnn.set_random_seed(4)
        model = Sequential([Conv2D(4, 3, padding="same", use_bias=False, input_shape=(8, 8, 3)),
                            BatchNormalization(), Activation("relu"), MaxPooling2D(), Flatten(), Dropout(0.3),
                            Dense(5, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    rng = np.random.default_rng(0)
    x, y = rng.random((48, 8, 8, 3), dtype=np.float32), rng.integers(0, 5, 48)
    previous = npcnn.get_num_threads()
    npcnn.set_num_threads(min(threads, npcnn.threads.max_threads()))
    try:
        ref = build()
        ref.fit(x, y, batch_size=16, epochs=3, verbose=0)
        first = build()
        first.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[TrainingCheckpoint(tmp_path)])
        npcnn.set_random_seed(99)  # a fresh process would have another generator state
        resumed = build()
        state = restore_checkpoint(tmp_path / "checkpoint.npz", resumed)
        resumed.fit(x, y, batch_size=16, epochs=3, initial_epoch=state.epoch, verbose=0)
    finally:
        npcnn.set_num_threads(previous)
    assert len(ref.non_trainable_weights) == 2
    for a, b in zip(ref.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("patience,epochs_run", [(0, 2), (1, 2), (2, 3), (3, 4)])
def test_early_stopping_counts_patience_as_keras(patience, epochs_run, rng):
    """Keras 3: wait += 1 on each epoch without improvement; stop once wait >= patience (epoch > 0). With a
    min_delta no epoch can beat, epoch 1 sets the best and the run stops `max(patience, 1)` epochs later."""
    model = Sequential([Flatten(input_shape=(2, 2, 1)), Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    early = cbks.EarlyStopping(monitor="loss", min_delta=100, patience=patience)
    history = model.fit(rng.random((8, 2, 2, 1)), np.arange(8) % 3, epochs=10, verbose=0, callbacks=[early])
    assert len(history.epoch) == epochs_run and early.stopped_epoch == epochs_run - 1


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_whole_model_gradcheck_with_a_categorical_loss(smoothing, rng):
    from npcnn.losses import CategoricalCrossentropy

    model = Sequential([Flatten(input_shape=(3, 3, 2)), Dense(5, activation="tanh"), Dense(4, activation="softmax")])
    model.compile("adam", CategoricalCrossentropy(label_smoothing=smoothing))
    assert model.plan.owns_softmax
    x = gradcheck.spread_input((3, 3, 3, 2), rng)
    y = np.eye(4)[[0, 3, 1]]
    assert all(r.passed for r in gradcheck.check_model(model, x, y))
    records = model.trace(x.astype(np.float32), y)  # trace takes one-hot labels too
    assert records.loss == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-5)


def test_one_set_of_names_for_the_pooling_window_and_the_pooled_grid():
    """PH x PW is the pooling window everywhere (docs/maxpool2d.md); nothing calls a pooled output (N, PH, PW, F)."""
    root = PACKAGE.parent
    texts = [p.read_text() for p in list((root / "docs").glob("*.md")) + list(PACKAGE.rglob("*.py"))]
    assert not [t for t in texts if "(N, PH, PW, F)" in t or "(N, PH, PW, C)" in t]


# ------------------------------------------------------------------ found by trying npcnn as a Keras user
def test_sparse_ce_on_probabilities_divides_each_row_by_its_sum_as_keras():
    """A sigmoid last layer: Keras's sparse and categorical cross-entropies both give 1.04025 here
    (each row divided by its sum before the clip and the log); npcnn gave 0.19608 for the sparse one."""
    from npcnn.losses import CategoricalCrossentropy

    m = Sequential([Dense(3, activation="sigmoid", input_shape=(4,))])
    m.set_weights([np.array([[1, 0, -1], [0, 1, 0], [.5, 0, 0], [0, 0, 1]], "float32"), np.zeros(3, "float32")])
    x = np.array([[1, 2, 3, 4], [0, 1, 0, 1]], "float32")
    y = np.array([0, 2])
    m.compile("sgd", "sparse_categorical_crossentropy")
    sparse = m.evaluate(x, y, verbose=0)
    m.compile("sgd", CategoricalCrossentropy())
    assert sparse == pytest.approx(m.evaluate(x, np.eye(3)[y], verbose=0), rel=1e-6)
    assert sparse == pytest.approx(1.04025, abs=5e-5)
    m.compile("sgd", "sparse_categorical_crossentropy")
    assert all(r.passed for r in gradcheck.check_model(m, x.astype(np.float64), y))


def _es_fit(callbacks, epochs=8, initial_epoch=0, model=None, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.random((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    if model is None:
        npcnn.set_random_seed(1)
        model = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
        model.compile(npcnn.optimizers.SGD(2.0), "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=epochs, batch_size=20, verbose=0, validation_split=0.5, shuffle=False,
                        callbacks=callbacks, initial_epoch=initial_epoch)
    return model, history


def test_early_stopping_restores_the_best_weights_at_the_end_even_without_stopping():
    """Keras 3 restores best_weights in on_train_end, stopped early or not."""
    snapshots = []

    class Keep(cbks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append((logs["val_loss"], self.model.get_weights()))

    es = cbks.EarlyStopping(monitor="val_loss", patience=100, restore_best_weights=True)
    model, history = _es_fit([Keep(), es])
    assert len(history.epoch) == 8 and es.stopped_epoch == 0
    best_loss, best_weights = min(snapshots, key=lambda s: s[0])
    assert snapshots[-1][0] != best_loss  # the last epoch is not the best one here
    assert es.best == best_loss
    for a, b in zip(model.get_weights(), best_weights):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_best_is_the_logged_value_in_max_mode():
    es = cbks.EarlyStopping(monitor="val_accuracy", patience=100)
    model = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    _, history = _es_fit([es], epochs=3, model=model)
    assert es.best == max(history.history["val_accuracy"]) and es.best >= 0


def test_a_run_resumed_at_the_epoch_where_early_stopping_stopped_trains_no_further(tmp_path):
    from npcnn.checkpoint import TrainingCheckpoint, restore_checkpoint

    def run(epochs, resume=False):
        es = cbks.EarlyStopping(monitor="val_loss", min_delta=10, patience=2, restore_best_weights=True)
        npcnn.set_random_seed(1)
        model = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
        model.compile("adam", "sparse_categorical_crossentropy")
        initial = 0
        if resume:
            initial = restore_checkpoint(tmp_path / "checkpoint.npz", model, callbacks=[es]).epoch
        _, history = _es_fit([es, TrainingCheckpoint(tmp_path)], epochs=epochs, initial_epoch=initial, model=model)
        return model, history, es

    ref, ref_history, ref_es = run(10)
    assert ref_es.stopped_epoch == 2 and len(ref_history.epoch) == 3  # the checkpoint holds epoch 3, stopped
    resumed, history, es = run(10, resume=True)
    assert history.epoch == [] and es.stopped_epoch == 2
    for a, b in zip(ref.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_baseline_and_start_from_epoch_as_keras():
    # baseline: an improvement that does not beat the baseline still counts as waiting
    es = cbks.EarlyStopping(monitor="val_loss", patience=2, baseline=-1.0)  # a loss never below -1
    _, history = _es_fit([es], epochs=10)
    assert len(history.epoch) == 3 and es.stopped_epoch == 2
    # start_from_epoch: the first epochs are not watched at all
    es = cbks.EarlyStopping(monitor="val_loss", min_delta=10, patience=1, start_from_epoch=4)
    _, history = _es_fit([es], epochs=10)
    assert len(history.epoch) == 6 and es.stopped_epoch == 5
    with pytest.raises(ValueError, match="start_from_epoch"):
        cbks.EarlyStopping(start_from_epoch=-1)
    with pytest.raises(ValueError, match="baseline"):
        cbks.EarlyStopping(baseline=float("nan"))


@pytest.mark.parametrize("name", ["m.weights.h5", "m.h5", "m.keras", "m.HDF5"])
def test_save_weights_refuses_keras_file_names(tmp_path, name):
    model = Sequential([Dense(3, input_shape=(4,))])
    with pytest.raises(ValueError, match="npcnn writes its weights as .npz"):
        model.save_weights(tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_frozen_layers_are_not_trained_and_counted_as_keras(rng):
    from npcnn.layers import BatchNormalization

    npcnn.set_random_seed(0)
    model = Sequential([Conv2D(2, 3, input_shape=(6, 6, 2), trainable=False), BatchNormalization(trainable=False),
                        Flatten(), Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    lines = []
    model.summary(print_fn=lines.append)
    assert any(line.startswith("Trainable params: 99 ") for line in lines)  # Dense (4*4*2)*3 + 3
    assert any(line.startswith("Non-trainable params: 46 ") for line in lines)  # conv 3*3*2*2 + 2 = 38, BN 2*4
    frozen = [w.copy() for w in model.get_weights()[:6]]
    x, y = rng.random((8, 6, 6, 2)).astype(np.float32), np.arange(8) % 3
    dense_before = model.layers[-1].params["kernel"].copy()
    model.fit(x, y, epochs=2, verbose=0)
    for a, b in zip(frozen, model.get_weights()[:6]):  # conv kernel, bias; BN gamma, beta, moving mean, var
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(dense_before, model.layers[-1].params["kernel"])
    assert len(model.trainable_weights) == 2 and len(model.non_trainable_weights) == 6
    # the frozen BN runs in inference mode (Keras 3), and its backward is checked like any other
    assert all(r.passed for r in gradcheck.check_model(model, gradcheck.spread_input((3, 6, 6, 2), rng),
                                                      np.array([0, 1, 2])))
    assert model.layers[0].get_config()["trainable"] is False


def test_model_call_in_training_mode_updates_batchnorm_statistics_as_keras():
    from npcnn.layers import BatchNormalization

    model = Sequential([BatchNormalization(input_shape=(4,))])
    x = np.random.default_rng(0).random((8, 4)).astype(np.float32) * 5
    model(x, training=True)
    np.testing.assert_allclose(model.get_weights()[2], 0.01 * x.mean(0), rtol=1e-5)  # momentum 0.99
    np.testing.assert_allclose(model.get_weights()[3], 0.99 + 0.01 * x.var(0), rtol=1e-5)
    before = [w.copy() for w in model.get_weights()]
    model(x)  # inference: nothing changes
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_channels_first_is_refused_with_a_sentence():
    assert Conv2D(2, 3, data_format="channels_last").built is False
    with pytest.raises(ValueError, match="channels last"):
        Conv2D(2, 3, data_format="channels_first")
    with pytest.raises(ValueError, match="channels last"):
        MaxPooling2D(data_format="channels_first")


def test_small_keras_compatibilities(rng):
    from npcnn.layers import BatchNormalization, RandomTranslation

    npcnn.set_random_seed(0)
    model = Sequential([Conv2D(3, 3, input_shape=(6, 6, 2)), BatchNormalization(), ReLU(), Flatten(),
                        Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = rng.random((8, 6, 6, 2)).astype(np.float32), np.arange(8) % 3
    # batch_size=None is Keras's default, 32
    assert len(model.fit(x, y, batch_size=None, epochs=1, verbose=0).epoch) == 1
    assert model.predict(x, batch_size=None).shape == (8, 3)
    # sample weights are not silently ignored
    with pytest.raises(ValueError, match="sample weights"):
        model.fit(x, y, epochs=1, verbose=0, validation_data=(x, y, np.ones(8)))
    # a (lower, upper) pair in the wrong order is refused, as Keras does
    with pytest.raises(ValueError, match="lower <= upper"):
        RandomTranslation((0.3, -0.2), 0.1)
    # Sequential.from_config(get_config()) rebuilds the architecture
    clone = Sequential.from_config(model.get_config())
    assert [type(layer).__name__ for layer in clone.layers] == [type(layer).__name__ for layer in model.layers]
    # a conv bias right before BatchNormalization has a true gradient of 0: the whole-model check no longer
    # reports rounding noise against rounding noise as a failure
    rows = gradcheck.check_model(model, gradcheck.spread_input((3, 6, 6, 2), rng), np.array([0, 1, 2]))
    assert all(r.passed for r in rows), rows


def test_gradcheck_floor_still_catches_a_small_broken_gradient(monkeypatch, rng):
    """The model-wide floor (1e-2 of the largest gradient) does not hide a 1% error in an ordinary tensor."""
    model = Sequential([Flatten(input_shape=(3, 3, 2)), Dense(5, activation="tanh"), Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    orig = Dense.backward_op

    def broken(self, dy, state, ctx):
        dx = orig(self, dy, state, ctx)
        if self.name == "dense":  # (gradcheck works on a copy of the model)
            state.grads["bias"] = state.grads["bias"] * 1.01
        return dx

    monkeypatch.setattr(Dense, "backward_op", broken)
    rows = gradcheck.check_model(model, gradcheck.spread_input((4, 3, 3, 2), rng), np.array([0, 1, 2, 0]))
    assert {(r.layer, r.tensor) for r in rows if not r.passed} == {("dense", "bias")}
