"""Losses and metrics of issue 13 item 7: categorical cross-entropy (from_logits, label_smoothing) against
PyTorch and the formula, its gradients by central differences, the fused softmax head, top-k metrics
against a direct computation, and the metrics as the model reports them."""

import copy
import io

import numpy as np
import pytest

import npcnn
from npcnn import losses, metrics
from npcnn.gradcheck import numerical_gradient, relative_error
from npcnn.layers import Dense, Flatten
from npcnn.layers.base import Context
from npcnn.losses import CategoricalCrossentropy, SparseCategoricalCrossentropy
from npcnn.metrics import SparseTopKCategoricalAccuracy, TopKCategoricalAccuracy
from npcnn.models import Sequential

try:  # PyTorch is optional (pip install torch==2.13.0): the tests that compare with it skip without it
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed (pip install torch==2.13.0)")


def onehot(y, k):
    return np.eye(k)[y]


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------ categorical cross-entropy
@needs_torch
@pytest.mark.parametrize("ls", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("n,k", [(1, 2), (6, 5), (9, 10)])
def test_categorical_from_logits_agrees_with_torch(rng, ls, n, k):
    z, y = rng.standard_normal((n, k)) * 3, rng.integers(0, k, n)
    loss, grad = CategoricalCrossentropy(from_logits=True, label_smoothing=ls).compute(z, onehot(y, k), logits=True)
    zt = torch.tensor(z, requires_grad=True)
    ref = F.cross_entropy(zt, torch.tensor(y), label_smoothing=ls)  # torch smooths the same way: y(1-ls) + ls/K
    ref.backward()
    assert abs(loss - ref.item()) < 1e-12
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-10, atol=1e-15)


@needs_torch
def test_categorical_soft_targets_agree_with_torch_probability_targets(rng):
    z = rng.standard_normal((7, 4))
    t = rng.random((7, 4))
    t /= t.sum(axis=1, keepdims=True)
    loss, grad = CategoricalCrossentropy(from_logits=True, label_smoothing=0.2).compute(z, t, logits=True)
    zt = torch.tensor(z, requires_grad=True)
    ref = F.cross_entropy(zt, torch.tensor(t), label_smoothing=0.2)
    ref.backward()
    assert abs(loss - ref.item()) < 1e-12
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-10, atol=1e-15)


@needs_torch
@pytest.mark.parametrize("ls", [0.0, 0.3])
def test_categorical_on_probabilities_is_keras_formula(rng, ls):
    """Keras: rows divided by their sum, clipped to [1e-7, 1 - 1e-7], then -sum y log p, averaged."""
    k = 6
    p = rng.random((5, k)) + 0.05  # rows that do not sum to 1
    p[0, 2] = 1e-12  # clipped entry
    y = onehot(rng.integers(0, k, 5), k)
    y[0] = onehot(np.array([2]), k)  # the clipped entry is the target
    loss, grad = CategoricalCrossentropy(label_smoothing=ls).compute(p, y)
    t = y * (1 - ls) + ls / k
    q = np.clip(p / p.sum(axis=1, keepdims=True), 1e-7, 1 - 1e-7)
    assert abs(loss - np.mean(-(t * np.log(q)).sum(axis=1))) < 1e-12
    # the gradient, through the normalisation (torch autograd of the same expression; zero where clipped)
    pt = torch.tensor(p, requires_grad=True)
    qt = torch.clamp(pt / pt.sum(dim=1, keepdim=True), 1e-7, 1 - 1e-7)
    (-(torch.tensor(t) * torch.log(qt)).sum(dim=1).mean()).backward()
    np.testing.assert_allclose(grad, pt.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_categorical_gradient_by_central_differences(rng, from_logits, ls):
    k = 5
    y = onehot(rng.integers(0, k, 4), k)
    v = rng.standard_normal((4, k)) if from_logits else rng.random((4, k)) * 0.8 + 0.1
    loss = CategoricalCrossentropy(from_logits=from_logits, label_smoothing=ls)
    _, analytic = loss.compute(v, y, logits=from_logits)
    numeric = numerical_gradient(lambda: float(loss.compute(v, y, logits=from_logits)[0]), v)
    assert relative_error(analytic, numeric) < 1e-7


@needs_torch
def test_keras_functions_give_per_sample_losses(rng):
    z, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    per = losses.categorical_crossentropy(onehot(y, 3), z, from_logits=True, label_smoothing=0.1)
    np.testing.assert_allclose(per, F.cross_entropy(torch.tensor(z), torch.tensor(y), label_smoothing=0.1,
                                                    reduction="none").numpy(), rtol=1e-12)
    sp = losses.sparse_categorical_crossentropy(y, z, from_logits=True)
    np.testing.assert_allclose(sp, F.cross_entropy(torch.tensor(z), torch.tensor(y), reduction="none").numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(losses.sparse_categorical_crossentropy(y, softmax(z)), sp, rtol=1e-10)
    assert abs(CategoricalCrossentropy(True, 0.1)(onehot(y, 3), z) - per.mean()) < 1e-12


@needs_torch
def test_sparse_from_logits_still_agrees_with_torch(backend, rng):
    z, y = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    loss, grad = SparseCategoricalCrossentropy(from_logits=True).compute(z, y, logits=True)
    zt = torch.tensor(z, requires_grad=True)
    ref = F.cross_entropy(zt, torch.tensor(y))
    ref.backward()
    assert abs(loss - ref.item()) < 1e-12
    np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_categorical_arguments_and_labels():
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        CategoricalCrossentropy(label_smoothing=1.5)
    with pytest.raises(TypeError, match="from_logits must be True or False"):
        CategoricalCrossentropy(from_logits="yes")
    loss = CategoricalCrossentropy()
    with pytest.raises(ValueError, match="takes one-hot labels of shape \\(N, 3\\).*sparse_categorical_crossentropy"):
        loss.compute(np.full((2, 3), 1 / 3), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"must have shape \(N, 3\)"):
        loss.compute(np.full((2, 3), 1 / 3), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="contain NaN or Inf"):
        loss.compute(np.full((2, 3), 1 / 3), np.array([[0, 1, np.nan], [1, 0, 0]]))
    assert isinstance(losses.get("categorical_crossentropy"), CategoricalCrossentropy)
    assert isinstance(losses.get(losses.categorical_crossentropy), CategoricalCrossentropy)


# ------------------------------------------------------------------------------ the model and the fused head
def small(loss, activation="softmax", metrics_=("accuracy",)):
    npcnn.set_random_seed(0)
    model = Sequential([Flatten(input_shape=(3, 3, 2)), Dense(6, activation="relu"), Dense(4, activation=activation)])
    model.compile(optimizer="sgd", loss=loss, metrics=list(metrics_))
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(2)
    return rng.random((20, 3, 3, 2), dtype=np.float32), rng.integers(0, 4, 20)


def test_fused_head_gives_the_categorical_loss_logits(data, monkeypatch):
    x, y = data
    model = small(CategoricalCrossentropy(label_smoothing=0.1))
    assert model.plan.owns_softmax and model.plan.logits_loss
    seen = []
    original = CategoricalCrossentropy._compute

    def spy(self, out, labels, logits=False):
        seen.append((out.copy(), logits))
        return original(self, out, labels, logits)

    monkeypatch.setattr(CategoricalCrossentropy, "_compute", spy)
    model.evaluate(x, onehot(y, 4), verbose=0)
    out, logits = seen[-1]
    assert logits
    np.testing.assert_allclose(out, model.forward(x[-len(out):].astype(np.float32), logits=True), rtol=1e-6)
    np.testing.assert_allclose(softmax(out.astype(np.float64)), model.predict(x[-len(out):]), rtol=1e-5, atol=1e-7)
    assert not small(CategoricalCrossentropy(from_logits=True), activation=None).plan.owns_softmax


def test_onehot_categorical_trains_like_sparse(backend, data):
    """Same model, one-hot labels with categorical CE vs integer labels with sparse CE: the same run."""
    x, y = data
    a, b = small("categorical_crossentropy"), small("sparse_categorical_crossentropy")
    ha = a.fit(x, onehot(y, 4).astype(np.float32), epochs=2, batch_size=5, verbose=0, shuffle=False)
    hb = b.fit(x, y, epochs=2, batch_size=5, verbose=0, shuffle=False)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-5)
    assert ha.history["accuracy"] == hb.history["accuracy"]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("ls", [0.0, 0.25])
@pytest.mark.parametrize("activation,from_logits", [("softmax", False), (None, True), ("sigmoid", False)])
def test_whole_model_gradient_with_categorical_loss(backend, data, ls, activation, from_logits):
    """Central differences through the whole model in float64 (fused head, logits and probabilities)."""
    x, y = data
    model = copy.deepcopy(small(CategoricalCrossentropy(from_logits=from_logits, label_smoothing=ls), activation))
    for layer in model.layers:
        for key in layer.params:
            layer.params[key] = layer.params[key].astype(np.float64)
    x, t = x[:6].astype(np.float64), onehot(y[:6], 4)
    plan, ctx = model.plan, Context(True, seed=0, batch_size=6)
    states = plan.new_states(workspaces=False)
    plan.loss_and_grad(x, t, states, ctx)
    grads = plan.grads(states)

    def f():
        out = plan.forward(x, plan.new_states(workspaces=False), ctx, logits=plan.logits_loss)
        return float(model.loss._compute(out, t, logits=plan.logits_loss)[0])

    for layer, g in zip(plan.param_layers, grads):
        for (key, p), a in zip(layer.params.items(), g):
            assert relative_error(a, numerical_gradient(f, p)) < 1e-6, (layer.name, key)


def test_label_check_depends_on_the_loss(data):
    x, y = data
    cat = small("categorical_crossentropy")
    with pytest.raises(ValueError, match=r"fit: labels have shape \(20,\), but categorical_crossentropy takes"):
        cat.fit(x, y, verbose=0)
    sparse = small("sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="one-hot labels\\? use y.argmax"):
        sparse.fit(x, onehot(y, 4), verbose=0)


# ------------------------------------------------------------------------------ metrics
def direct_in_top_k(out, labels, k):
    """Keras's in_top_k, sample by sample: fewer than k classes strictly above the label's value."""
    return np.array([sum(v > row[c] for v in row) < k for row, c in zip(out, labels)])


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_top_k_against_a_direct_computation(rng, k):
    out = rng.integers(0, 4, (200, 6)).astype(np.float32)  # many ties
    labels = rng.integers(0, 6, 200)
    want = direct_in_top_k(out, labels, k)
    np.testing.assert_array_equal(metrics.sparse_top_k_categorical_accuracy(labels, out, k=k), want)
    np.testing.assert_array_equal(metrics.top_k_categorical_accuracy(onehot(labels, 6), out, k=k), want)
    assert SparseTopKCategoricalAccuracy(k).hits(out, labels) == want.sum()
    assert TopKCategoricalAccuracy(k).hits(out, onehot(labels, 6)) == want.sum()
    if k == 1:  # without ties at the top, top-1 is the accuracy
        distinct = rng.standard_normal((50, 6))
        lab = rng.integers(0, 6, 50)
        np.testing.assert_array_equal(metrics.sparse_top_k_categorical_accuracy(lab, distinct, 1),
                                      metrics.sparse_categorical_accuracy(lab, distinct))


def test_top_k_ties_at_the_kth_place_count_as_in():
    out = np.array([[0.5, 0.2, 0.2, 0.1], [0.5, 0.2, 0.2, 0.1], [0.4, 0.4, 0.1, 0.1]])
    assert list(metrics.sparse_top_k_categorical_accuracy([2, 3, 1], out, k=2)) == [1.0, 0.0, 1.0]
    assert list(metrics.sparse_top_k_categorical_accuracy([1, 0, 2], out, k=1)) == [0.0, 1.0, 0.0]
    # argmax accuracy takes the first of tied maxima
    assert list(metrics.sparse_categorical_accuracy([0, 0, 1], out)) == [1.0, 1.0, 0.0]


def test_metric_objects_standalone():
    m = SparseTopKCategoricalAccuracy(k=2)
    m.update_state([0, 1], np.array([[0.1, 0.5, 0.4], [0.2, 0.3, 0.5]]))
    m.update_state([2], np.array([[0.9, 0.05, 0.05]]))
    assert m.result() == pytest.approx(2 / 3) and m.name == "sparse_top_k_categorical_accuracy"
    m.reset_state()
    assert m.result() == 0.0
    with pytest.raises(ValueError, match="k must be a positive integer"):
        SparseTopKCategoricalAccuracy(k=0)


def test_model_reports_each_metric_under_its_name(backend, data):
    x, y = data
    names = ["acc", "sparse_top_k_categorical_accuracy", SparseTopKCategoricalAccuracy(k=2, name="top2")]
    model = small("sparse_categorical_crossentropy", metrics_=names)
    hist = model.fit(x, y, epochs=2, batch_size=8, verbose=0, validation_data=(x, y))
    assert list(hist.history) == ["loss", "acc", "sparse_top_k_categorical_accuracy", "top2", "val_loss", "val_acc",
                                  "val_sparse_top_k_categorical_accuracy", "val_top2"]
    assert hist.history["sparse_top_k_categorical_accuracy"] == [1.0, 1.0]  # k=5 > 4 classes
    loss, acc, top5, top2 = model.evaluate(x, y, verbose=0)
    out = model.predict(x)
    assert acc == np.mean(out.argmax(axis=1) == y)
    assert top2 == np.mean(direct_in_top_k(out, y, 2))
    assert hist.history["val_top2"][-1] == top2 and top5 == 1.0
    assert model.train_on_batch(x, y)[3] == np.mean(direct_in_top_k(out, y, 2))  # measured before the update


def test_categorical_metrics_in_the_model(data, capsys):
    x, y = data
    model = small("categorical_crossentropy", metrics_=["accuracy", "categorical_accuracy",
                                                        "top_k_categorical_accuracy",
                                                        TopKCategoricalAccuracy(2, name="top2")])
    t = onehot(y, 4)
    result = model.evaluate(x, t, verbose=2)
    out = model.predict(x)
    assert result[1] == result[2] == np.mean(out.argmax(axis=1) == y)
    assert result[3] == 1.0 and result[4] == np.mean(direct_in_top_k(out, y, 2))
    line = capsys.readouterr().out
    assert "- accuracy: " in line and "- categorical_accuracy: " in line and "- top_k_categorical_accuracy: " in line
    stream = io.StringIO()
    from npcnn.callbacks import ProgbarLogger

    model.fit(x, t, epochs=1, verbose=0, callbacks=[ProgbarLogger(2, steps=1, epochs=1, stream=stream)],
              batch_size=20)
    assert "top_k_categorical_accuracy: 1.0000" in stream.getvalue()


def test_metric_names_are_checked():
    with pytest.raises(ValueError, match="unknown metric 'acuracy'. Did you mean 'accuracy'"):
        small("sparse_categorical_crossentropy", metrics_=["acuracy"])
    with pytest.raises(ValueError, match="takes integer class labels.*use 'top_k_categorical_accuracy'"):
        small("categorical_crossentropy", metrics_=["sparse_top_k_categorical_accuracy"])
    with pytest.raises(ValueError, match="takes one-hot labels.*use 'sparse_categorical_accuracy'"):
        small("sparse_categorical_crossentropy", metrics_=["categorical_accuracy"])
    with pytest.raises(ValueError, match="name a metric twice"):
        small("sparse_categorical_crossentropy", metrics_=["accuracy", "accuracy"])
    with pytest.raises(TypeError, match="got the class SparseTopKCategoricalAccuracy"):
        small("sparse_categorical_crossentropy", metrics_=[SparseTopKCategoricalAccuracy])
    with pytest.raises(TypeError, match="metrics must be names such as 'accuracy' or npcnn.metrics objects"):
        small("sparse_categorical_crossentropy", metrics_=[lambda a, b: 0])
    model = small("sparse_categorical_crossentropy", metrics_=[metrics.sparse_top_k_categorical_accuracy])
    assert model._metric_names() == ["loss", "sparse_top_k_categorical_accuracy"]
