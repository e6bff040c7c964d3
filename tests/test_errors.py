"""Bad input gets a clear error before any kernel runs; numbers stay finite; files are never half-written.

Every row of the table in docs/errors.md is one entry of ``CASES`` below: the test runs it, checks the
exception type and message, and checks (with every kernel replaced by a tripwire) that no kernel ran.
``test_docs_table_is_current`` checks that docs/errors.md shows exactly these rows and messages;
regenerate it with ``python tests/test_errors.py``.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import npcnn
from npcnn import kernels as K
from npcnn.callbacks import Callback, History
from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
from npcnn.losses import SparseCategoricalCrossentropy
from npcnn.models import Sequential
from npcnn.optimizers import SGD, Adam
from npcnn.utils import ModelStateError, NotBuiltError, NotCompiledError, check_verbose

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "errors.md")
UNREACHABLE = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # the discard port: refused at once, no network


# ----------------------------------------------------------------------------- fixtures for the cases
def small(compile=True, classes=5):
    """Conv(relu) -> pool -> flatten -> dense(softmax) on 8x8x3 inputs."""
    m = Sequential(
        [
            Conv2D(4, 3, activation="relu", input_shape=(8, 8, 3)),
            MaxPooling2D(2),
            Flatten(),
            Dense(classes, activation="softmax"),
        ]
    )
    if compile:
        m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


X = np.random.default_rng(0).standard_normal((6, 8, 8, 3)).astype(np.float32)
Y = np.arange(6) % 5


def with_value(a, index, value):
    a = a.copy()
    a[index] = value
    return a


def weights_file(tmp, name="w.npz", model=None):
    path = os.path.join(tmp, name)
    (model or small()).save_weights(path)
    return path


def truncated(tmp, name="cut.npz"):
    with open(weights_file(tmp), "rb") as f:
        raw = f.read()
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    return path


def object_npz(tmp):
    import io

    path = os.path.join(tmp, "obj.npz")
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("conv2d/kernel.npy", buf.getvalue())
    return path


def nan_weights_file(tmp):
    m = small()
    m.layers[3].params["bias"][2] = np.nan  # written directly, as a corrupted run would
    return weights_file(tmp, "nan.npz", m)


def other_model_weights(tmp):
    m = Sequential(
        [
            Conv2D(6, 3, activation="relu", input_shape=(8, 8, 3)),
            MaxPooling2D(2),
            Flatten(),
            Dense(5, activation="softmax"),
        ]
    )
    return weights_file(tmp, "other.npz", m)


def fake_cifar(tmp, n=4):
    """The official folder layout with tiny batches (pickled dicts with byte keys)."""
    folder = os.path.join(tmp, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
        }
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=4)
    return folder


def cifar_truncated(tmp):
    folder = fake_cifar(tmp)
    path = os.path.join(folder, "data_batch_3")
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[:100])
    return tmp


def cifar_crafted(tmp):
    folder = fake_cifar(tmp)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    with open(os.path.join(folder, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    return tmp


def cifar_foreign_file(tmp):
    path = os.path.join(tmp, "notes.txt")
    with open(path, "w") as f:
        f.write("hello")
    return path


def load_data_offline(path):
    from npcnn.datasets import cifar10

    old = os.environ.get("NPCNN_CIFAR10_URL")
    os.environ["NPCNN_CIFAR10_URL"] = UNREACHABLE
    try:
        return cifar10.load_data(path)
    finally:
        if old is None:
            del os.environ["NPCNN_CIFAR10_URL"]
        else:
            os.environ["NPCNN_CIFAR10_URL"] = old


def flat(shape, dtype):
    """An initializer that ignores the shape it is asked for."""
    return np.zeros(3)


def other_checkpoint(tmp):
    from npcnn.checkpoint import save_checkpoint

    m = Sequential([Conv2D(6, 3, input_shape=(8, 8, 3)), MaxPooling2D(2), Flatten(), Dense(5)])
    m.compile("adam", "sparse_categorical_crossentropy")
    return save_checkpoint(os.path.join(tmp, "ck.npz"), m, 1)


def checkpoint_api():
    import npcnn.checkpoint

    return npcnn.checkpoint


def trained_layer(layer, x):
    layer.forward(x, training=True)
    return layer


# ----------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    where: str  # the public boundary
    what: str  # the bad input, in words
    exc: type
    match: str  # regex the message must match
    act: Callable  # act(state, tmp) -> must raise
    setup: Callable | None = None  # setup(tmp) -> state; may run kernels (not part of the bad call)


C = Case
CASES = [
    # --- layer constructors
    C(
        "dense-units-zero",
        "Dense",
        "units=0",
        ValueError,
        r"Dense: units must be a positive integer, got 0",
        lambda s, t: Dense(0),
    ),
    C(
        "dense-units-float",
        "Dense",
        "units=3.5",
        TypeError,
        r"units must be a positive integer, got 3\.5 \(float\)",
        lambda s, t: Dense(3.5),
    ),
    C(
        "dense-units-str",
        "Dense",
        "units='10'",
        TypeError,
        r"units must be a positive integer, got '10' \(str\)",
        lambda s, t: Dense("10"),
    ),
    C(
        "conv-filters-negative",
        "Conv2D",
        "filters=-1",
        ValueError,
        r"Conv2D: filters must be a positive integer, got -1",
        lambda s, t: Conv2D(-1, 3),
    ),
    C(
        "conv-kernel-zero",
        "Conv2D",
        "kernel_size=(3, 0)",
        ValueError,
        r"Conv2D: kernel_size must be a positive int or a tuple of 2 positive ints, got \(3, 0\)",
        lambda s, t: Conv2D(4, (3, 0)),
    ),
    C(
        "conv-kernel-three",
        "Conv2D",
        "kernel_size=(3, 3, 3)",
        TypeError,
        r"kernel_size must be .* got \(3, 3, 3\) \(tuple of length 3\)",
        lambda s, t: Conv2D(4, (3, 3, 3)),
    ),
    C(
        "conv-strides-float",
        "Conv2D",
        "strides=1.5",
        TypeError,
        r"strides must be .* got 1\.5",
        lambda s, t: Conv2D(4, 3, strides=1.5),
    ),
    C(
        "conv-strides-zero",
        "Conv2D",
        "strides=0",
        ValueError,
        r"Conv2D: strides must be .* got \(0, 0\)",
        lambda s, t: Conv2D(4, 3, strides=0),
    ),
    C(
        "conv-padding-typo",
        "Conv2D",
        "padding='vaild'",
        ValueError,
        r"padding must be 'valid' or 'same', got 'vaild'. "
        r"Did you mean 'valid'\?",
        lambda s, t: Conv2D(4, 3, padding="vaild"),
    ),
    C(
        "pool-size-zero",
        "MaxPooling2D",
        "pool_size=0",
        ValueError,
        r"MaxPooling2D: pool_size must be .* got \(0, 0\)",
        lambda s, t: MaxPooling2D(0),
    ),
    C(
        "pool-size-str",
        "MaxPooling2D",
        "pool_size=(2, '2')",
        TypeError,
        r"pool_size .* \(an entry is str\)",
        lambda s, t: MaxPooling2D((2, "2")),
    ),
    C(
        "pool-strides-negative",
        "MaxPooling2D",
        "strides=(-1, 1)",
        ValueError,
        r"MaxPooling2D: strides must be .* got \(-1, 1\)",
        lambda s, t: MaxPooling2D(2, strides=(-1, 1)),
    ),
    C(
        "pool-padding-typo",
        "MaxPooling2D",
        "padding='sme'",
        ValueError,
        r"Did you mean 'same'\?",
        lambda s, t: MaxPooling2D(padding="sme"),
    ),
    C(
        "activation-typo",
        "Dense",
        "activation='rellu'",
        ValueError,
        r"Dense: unknown activation 'rellu'. Did you mean 'relu'\?",
        lambda s, t: Dense(3, activation="rellu"),
    ),
    C(
        "activation-type",
        "Dense",
        "activation=3",
        TypeError,
        r"Dense: activation must be a name .* got 3 \(int\)",
        lambda s, t: Dense(3, activation=3),
    ),
    C(
        "initializer-typo",
        "Dense",
        "kernel_initializer='he_normall'",
        ValueError,
        r"Dense: unknown kernel_initializer 'he_normall'. Did you mean 'he_normal'\?",
        lambda s, t: Dense(3, kernel_initializer="he_normall"),
    ),
    C(
        "initializer-type",
        "Dense",
        "kernel_initializer=0.1",
        TypeError,
        r"Dense: kernel_initializer must be a name .* or a callable",
        lambda s, t: Dense(3, kernel_initializer=0.1),
    ),
    C(
        "initializer-bad-shape",
        "Dense (built)",
        "an initializer returning the wrong shape",
        ValueError,
        r"kernel_initializer 'flat' returned an array of shape \(3,\), expected \(4, 3\)",
        lambda s, t: Sequential([Dense(3, kernel_initializer=flat, input_shape=(4,))]),
    ),
    C(
        "input-shape-zero",
        "Dense",
        "input_shape=(0,)",
        ValueError,
        r"input_shape must be a tuple of positive ints, got \(0,\)",
        lambda s, t: Dense(3, input_shape=(0,)),
    ),
    C(
        "input-shape-batch",
        "Conv2D",
        "input_shape=(None, 8, 8, 3)",
        ValueError,
        r"input_shape is one sample's shape, without the batch axis: use input_shape=\(8, 8, 3\)",
        lambda s, t: Conv2D(4, 3, input_shape=(None, 8, 8, 3)),
    ),
    C(
        "layer-dtype",
        "Dense",
        "dtype='int32'",
        TypeError,
        r"Dense: dtype must be 'float32' or 'float64', got 'int32'",
        lambda s, t: Dense(3, dtype="int32"),
    ),
    C(
        "layer-name-type",
        "Dense",
        "name=5",
        TypeError,
        r"Dense: name must be a string, got 5",
        lambda s, t: Dense(3, name=5),
    ),
    C(
        "conv-valid-empty",
        "Sequential.add",
        "a 'valid' 5x5 Conv2D on 4x4 inputs",
        ValueError,
        r"layer 'conv2d' \(Conv2D\): .*'valid' \(5, 5\) kernel does not fit the input \(4, 4\)",
        lambda s, t: Sequential([Conv2D(4, 5, input_shape=(4, 4, 3))]),
    ),
    C(
        "pool-valid-empty",
        "Sequential.add",
        "a 'valid' 3x3 pool on a 2x2 feature map",
        ValueError,
        r"layer 'max_pooling2d' \(MaxPooling2D\): .*'valid' \(3, 3\) pool does not fit the input \(2, 2\)",
        lambda s, t: Sequential([Conv2D(4, 3, input_shape=(4, 4, 3)), MaxPooling2D(3)]),
    ),
    C(
        "conv-after-flatten",
        "Sequential.add",
        "Conv2D after Flatten (rank 1 input)",
        ValueError,
        r"layer 'conv2d' \(Conv2D\): .*expects inputs of shape \(H, W, C\) per sample, got \(192,\)",
        lambda s, t: Sequential([Flatten(input_shape=(8, 8, 3)), Conv2D(4, 3)]),
    ),
    C(
        "add-not-a-layer",
        "Sequential.add",
        "add('dense')",
        TypeError,
        r"Sequential.add expects an npcnn layer, got 'dense'",
        lambda s, t: Sequential().add("dense"),
    ),
    C(
        "build-no-layers",
        "Sequential.build",
        "build on an empty model",
        NotBuiltError,
        r"build: the model has no layers",
        lambda s, t: Sequential().build((None, 8, 8, 3)),
    ),
    # --- optimizers, compile
    C(
        "optimizer-typo",
        "compile",
        "optimizer='adma'",
        ValueError,
        r"compile: unknown optimizer 'adma'. Did you mean 'adam'\?",
        lambda s, t: small(False).compile("adma", "sparse_categorical_crossentropy"),
    ),
    C(
        "optimizer-not-implemented",
        "compile",
        "optimizer='nadam' (a Keras optimizer npcnn does not have)",
        ValueError,
        r"compile: optimizer 'nadam' is not implemented in npcnn; use 'sgd', 'rmsprop', 'adam' or 'adamw'",
        lambda s, t: small(False).compile("nadam", "sparse_categorical_crossentropy"),
    ),
    C(
        "optimizer-type",
        "compile",
        "optimizer=0.01",
        TypeError,
        r"compile: optimizer must be a name .* got 0\.01 \(float\)",
        lambda s, t: small(False).compile(0.01, "sparse_categorical_crossentropy"),
    ),
    C(
        "optimizer-class",
        "compile",
        "optimizer=Adam (the class)",
        TypeError,
        r"got the class Adam; use Adam\(\)",
        lambda s, t: small(False).compile(Adam, "sparse_categorical_crossentropy"),
    ),
    C(
        "loss-typo",
        "compile",
        "loss='sparse_categorical_crossentropie'",
        ValueError,
        r"compile: unknown loss 'sparse_categorical_crossentropie'. Did you mean 'sparse_categorical_crossentropy'\?",
        lambda s, t: small(False).compile("adam", "sparse_categorical_crossentropie"),
    ),
    C(
        "loss-categorical",
        "compile",
        "loss='categorical_hinge' (a Keras loss npcnn does not have)",
        ValueError,
        r"unknown loss 'categorical_hinge'. Did you mean 'categorical_crossentropy'\?",
        lambda s, t: small(False).compile("adam", "categorical_hinge"),
    ),
    C(
        "loss-missing",
        "compile",
        "no loss",
        ValueError,
        r"compile: loss is required",
        lambda s, t: small(False).compile("adam"),
    ),
    C(
        "loss-type",
        "compile",
        "loss=len (a function)",
        TypeError,
        r"compile: loss must be a name",
        lambda s, t: small(False).compile("adam", len),
    ),
    C(
        "metrics-string",
        "compile",
        "metrics='accuracy' (not a list)",
        TypeError,
        r"compile: metrics must be a list such as \['accuracy'\], got 'accuracy'",
        lambda s, t: small(False).compile("adam", "sparse_categorical_crossentropy", metrics="accuracy"),
    ),
    C(
        "metric-typo",
        "compile",
        "metrics=['acuracy']",
        ValueError,
        r"compile: unknown metric 'acuracy'. Did you mean 'accuracy'\?",
        lambda s, t: small(False).compile("adam", "sparse_categorical_crossentropy", metrics=["acuracy"]),
    ),
    C(
        "output-not-flat",
        "compile",
        "a model whose output is (None, 6, 6, 5) (no Flatten)",
        ValueError,
        r"compile: the model's output has shape \(None, 6, 6, 5\), but sparse_categorical_crossentropy needs "
        r"\(None, classes\): add a Flatten\(\)",
        lambda s, t: Sequential([Conv2D(4, 3, input_shape=(8, 8, 3)), Dense(5)]).compile(
            "adam", "sparse_categorical_crossentropy"
        ),
    ),
    C(
        "adam-lr-negative",
        "Adam",
        "learning_rate=-0.001",
        ValueError,
        r"Adam: learning_rate must be a finite number in \(0, inf\), got -0\.001",
        lambda s, t: Adam(-0.001),
    ),
    C(
        "adam-lr-nan",
        "Adam",
        "learning_rate=nan",
        ValueError,
        r"Adam: learning_rate must be a finite number",
        lambda s, t: Adam(float("nan")),
    ),
    C(
        "adam-beta-one",
        "Adam",
        "beta_1=1.0",
        ValueError,
        r"Adam: beta_1 must be a finite number in \[0, 1\), got 1\.0",
        lambda s, t: Adam(beta_1=1.0),
    ),
    C(
        "sgd-momentum-str",
        "SGD",
        "momentum='0.9'",
        TypeError,
        r"SGD: momentum must be a number, got '0\.9' \(str\)",
        lambda s, t: SGD(momentum="0.9"),
    ),
    # --- order of calls
    C(
        "fit-before-compile",
        "fit",
        "fit before compile",
        NotCompiledError,
        r"fit: the model must be compiled first",
        lambda s, t: small(False).fit(X, Y, verbose=0),
    ),
    C(
        "evaluate-before-compile",
        "evaluate",
        "evaluate before compile",
        NotCompiledError,
        r"evaluate: the model must be compiled first",
        lambda s, t: small(False).evaluate(X, Y, verbose=0),
    ),
    C(
        "train-on-batch-before-compile",
        "train_on_batch",
        "train_on_batch before compile",
        NotCompiledError,
        r"train_on_batch: the model must be compiled first",
        lambda s, t: small(False).train_on_batch(X, Y),
    ),
    C(
        "predict-no-layers",
        "predict",
        "predict on an empty model",
        NotBuiltError,
        r"predict: the model has no layers",
        lambda s, t: Sequential().predict(X),
    ),
    # --- data given to fit / evaluate / predict / train_on_batch
    C(
        "x-per-sample-shape",
        "fit",
        "x of shape (6, 7, 8, 3) for a (8, 8, 3) model",
        ValueError,
        r"fit: x has shape \(6, 7, 8, 3\), but the model expects \(N,\) \+ \(8, 8, 3\) .*per-sample shape \(7, 8, 3\)",
        lambda s, t: small().fit(X[:, :7], Y, verbose=0),
    ),
    C(
        "x-channels",
        "evaluate",
        "x with 1 channel for a 3-channel model",
        ValueError,
        r"evaluate: x has shape \(6, 8, 8, 1\), but the model expects \(N,\) \+ \(8, 8, 3\)",
        lambda s, t: small().evaluate(X[..., :1], Y, verbose=0),
    ),
    C(
        "x-single-sample",
        "predict",
        "one sample (8, 8, 3) without the batch axis",
        ValueError,
        r"predict: x has shape \(8, 8, 3\), .*rank 3 .*expected rank 4 "
        r"\(a single sample\? add the batch axis: x\[None\]\)",
        lambda s, t: small().predict(X[0]),
    ),
    C(
        "x-rank-5",
        "fit",
        "x of rank 5",
        ValueError,
        r"fit: x has shape \(6, 1, 8, 8, 3\).*expected rank 4",
        lambda s, t: small().fit(X[:, None], Y, verbose=0),
    ),
    C(
        "xy-lengths",
        "fit",
        "6 images, 5 labels",
        ValueError,
        r"fit: 6 samples but 5 labels; they must have the same length",
        lambda s, t: small().fit(X, Y[:5], verbose=0),
    ),
    C(
        "x-empty",
        "fit",
        "x of shape (0, 8, 8, 3)",
        ValueError,
        r"fit: x is empty \(shape \(0, 8, 8, 3\)\)",
        lambda s, t: small().fit(X[:0], Y[:0], verbose=0),
    ),
    C(
        "x-strings",
        "fit",
        "x of strings",
        TypeError,
        r"fit: x must hold numbers \(uint8 or float\), got dtype <U",
        lambda s, t: small().fit(X.astype(str), Y, verbose=0),
    ),
    C(
        "x-objects",
        "predict",
        "x as an object array",
        TypeError,
        r"predict: x must hold numbers .* got dtype object",
        lambda s, t: small().predict(X.astype(object)),
    ),
    C(
        "x-complex",
        "predict",
        "complex x",
        TypeError,
        r"predict: x must hold numbers .* got dtype complex64",
        lambda s, t: small().predict(X.astype(np.complex64)),
    ),
    C("x-none", "fit", "x=None", ValueError, r"fit: x is required", lambda s, t: small().fit(None, Y, verbose=0)),
    C(
        "x-nan",
        "fit",
        "one NaN pixel in x",
        ValueError,
        r"fit: x contains NaN or Inf values",
        lambda s, t: small().fit(with_value(X, (2, 3, 3, 1), np.nan), Y, verbose=0),
    ),
    C(
        "x-inf",
        "train_on_batch",
        "one Inf pixel in x",
        ValueError,
        r"train_on_batch: x contains NaN or Inf values",
        lambda s, t: small().train_on_batch(with_value(X, (0, 0, 0, 0), np.inf), Y),
    ),
    C(
        "x-nan-predict",
        "predict",
        "NaN in x",
        ValueError,
        r"predict: x contains NaN or Inf values",
        lambda s, t: small().predict(with_value(X, (5, 7, 7, 2), np.nan)),
    ),
    C(
        "x-beyond-float32",
        "predict",
        "float64 x holding 1e300",
        ValueError,
        r"predict: x holds values beyond float32's range",
        lambda s, t: small().predict(with_value(X.astype(np.float64), (0, 0, 0, 0), 1e300)),
    ),
    C(
        "y-none",
        "fit",
        "y=None",
        ValueError,
        r"fit: y \(the labels\) is required",
        lambda s, t: small().fit(X, None, verbose=0),
    ),
    C(
        "labels-too-large",
        "fit",
        "label 7 for 5 classes",
        ValueError,
        r"fit: labels must be in \[0, 5\) for 5 classes; got values from 0 to 7",
        lambda s, t: small().fit(X, with_value(Y, 3, 7), verbose=0),
    ),
    C(
        "labels-negative",
        "train_on_batch",
        "label -1",
        ValueError,
        r"train_on_batch: labels must be in \[0, 5\) for 5 classes; got values from -1 to 4",
        lambda s, t: small().train_on_batch(X, with_value(Y, 0, -1)),
    ),
    C(
        "labels-too-large-evaluate",
        "evaluate",
        "label 5 for 5 classes",
        ValueError,
        r"evaluate: labels must be in \[0, 5\)",
        lambda s, t: small().evaluate(X, with_value(Y, 1, 5), verbose=0),
    ),
    C(
        "labels-fraction",
        "fit",
        "label 0.5",
        ValueError,
        r"fit: labels must be integer class indices, got non-integer values such as 0\.5",
        lambda s, t: small().fit(X, with_value(Y.astype(float), 0, 0.5), verbose=0),
    ),
    C(
        "labels-nan",
        "fit",
        "a NaN label",
        ValueError,
        r"fit: labels contain NaN or Inf",
        lambda s, t: small().fit(X, with_value(Y.astype(float), 0, np.nan), verbose=0),
    ),
    C(
        "labels-strings",
        "fit",
        "labels as strings",
        TypeError,
        r"fit: labels must be integer class indices, got dtype <U",
        lambda s, t: small().fit(X, Y.astype(str), verbose=0),
    ),
    C(
        "labels-one-hot",
        "fit",
        "one-hot labels (N, 5)",
        ValueError,
        r"fit: labels must have shape \(N,\) or \(N, 1\) of class indices, got shape \(6, 5\) \(one-hot labels\? "
        r"use y.argmax\(axis=1\)\)",
        lambda s, t: small().fit(X, np.eye(5)[Y], verbose=0),
    ),
    C(
        "labels-3d",
        "evaluate",
        "labels of shape (6, 1, 1)",
        ValueError,
        r"got shape \(6, 1, 1\)",
        lambda s, t: small().evaluate(X, Y[:, None, None], verbose=0),
    ),
    C(
        "validation-data-tuple",
        "fit",
        "validation_data=(x_val,)",
        ValueError,
        r"fit: validation_data must be a tuple \(x_val, y_val\), got tuple of length 1",
        lambda s, t: small().fit(X, Y, validation_data=(X,), verbose=0),
    ),
    C(
        "validation-data-labels",
        "fit",
        "a label 9 in validation_data",
        ValueError,
        r"fit\(validation_data\): labels must be in \[0, 5\)",
        lambda s, t: small().fit(X, Y, validation_data=(X, with_value(Y, 0, 9)), verbose=0),
    ),
    C(
        "validation-split-one",
        "fit",
        "validation_split=1.0",
        ValueError,
        r"fit: validation_split must be a float in \[0, 1\), got 1\.0",
        lambda s, t: small().fit(X, Y, validation_split=1.0, verbose=0),
    ),
    C(
        "validation-split-empty",
        "fit",
        "validation_split=0.1 of 6 samples",
        ValueError,
        r"fit: validation_split=0\.1 of 6 samples leaves an empty set",
        lambda s, t: small().fit(X, Y, validation_split=0.1, verbose=0),
    ),
    C(
        "batch-size-zero",
        "fit",
        "batch_size=0",
        ValueError,
        r"fit: batch_size must be a positive integer, got 0",
        lambda s, t: small().fit(X, Y, batch_size=0, verbose=0),
    ),
    C(
        "batch-size-float",
        "fit",
        "batch_size=32.0",
        TypeError,
        r"fit: batch_size must be a positive integer, got 32\.0 \(float\)",
        lambda s, t: small().fit(X, Y, batch_size=32.0, verbose=0),
    ),
    C(
        "batch-size-bool",
        "evaluate",
        "batch_size=True",
        TypeError,
        r"evaluate: batch_size must be a positive integer, got True",
        lambda s, t: small().evaluate(X, Y, batch_size=True, verbose=0),
    ),
    C(
        "batch-size-negative-predict",
        "predict",
        "batch_size=-1",
        ValueError,
        r"predict: batch_size must be a positive integer, got -1",
        lambda s, t: small().predict(X, batch_size=-1),
    ),
    C(
        "epochs-zero",
        "fit",
        "epochs=0",
        ValueError,
        r"fit: epochs must be a positive integer, got 0",
        lambda s, t: small().fit(X, Y, epochs=0, verbose=0),
    ),
    C(
        "epochs-str",
        "fit",
        "epochs='10'",
        TypeError,
        r"fit: epochs must be a positive integer, got '10' \(str\)",
        lambda s, t: small().fit(X, Y, epochs="10", verbose=0),
    ),
    C(
        "initial-epoch-negative",
        "fit",
        "initial_epoch=-1",
        ValueError,
        r"fit: initial_epoch must be a non-negative integer",
        lambda s, t: small().fit(X, Y, initial_epoch=-1, verbose=0),
    ),
    C(
        "verbose-3",
        "fit",
        "verbose=3",
        ValueError,
        r"fit: verbose must be 0, 1, 2 or 'auto', got 3",
        lambda s, t: small().fit(X, Y, verbose=3),
    ),
    C(
        "callbacks-single",
        "fit",
        "callbacks=History() (not a list)",
        TypeError,
        r"fit: callbacks must be a list of Callback instances, got a single Callback",
        lambda s, t: small().fit(X, Y, verbose=0, callbacks=History()),
    ),
    C(
        "callbacks-item",
        "fit",
        "callbacks=[print]",
        TypeError,
        r"fit: callbacks must be Callback instances, got <built-in function print>",
        lambda s, t: small().fit(X, Y, verbose=0, callbacks=[print]),
    ),
    C(
        "call-shape",
        "Sequential.__call__",
        "model(x) with x (6, 8, 8, 1)",
        ValueError,
        r"__call__: x has shape \(6, 8, 8, 1\)",
        lambda s, t: small()(X[..., :1]),
    ),
    # --- the loss called directly
    C(
        "loss-labels-out-of-range",
        "SparseCategoricalCrossentropy()",
        "y_true [0, 5] for 3 classes",
        ValueError,
        r"SparseCategoricalCrossentropy: y_true must be in \[0, 3\) for 3 classes; got values from 0 to 5",
        lambda s, t: SparseCategoricalCrossentropy()(np.array([0, 5]), np.full((2, 3), 1 / 3, np.float32)),
    ),
    C(
        "loss-compute-negative",
        "SparseCategoricalCrossentropy.compute",
        "label -1 with logits",
        ValueError,
        r"SparseCategoricalCrossentropy.compute: labels must be in \[0, 3\) for 3 classes; got values from -1 to 0",
        lambda s, t: SparseCategoricalCrossentropy(from_logits=True).compute(
            np.zeros((2, 3), np.float32), np.array([0, -1]), logits=True
        ),
    ),
    C(
        "loss-pred-1d",
        "SparseCategoricalCrossentropy()",
        "y_pred of shape (3,)",
        ValueError,
        r"y_pred must have shape \(N, classes\) with N, classes >= 1, got shape \(3,\)",
        lambda s, t: SparseCategoricalCrossentropy()(np.array([0, 1, 2]), np.full(3, 0.5, np.float32)),
    ),
    C(
        "loss-lengths",
        "SparseCategoricalCrossentropy()",
        "2 predictions, 3 labels",
        ValueError,
        r"2 samples but 3 y_true; they must have the same length",
        lambda s, t: SparseCategoricalCrossentropy()(np.array([0, 1, 2]), np.full((2, 3), 1 / 3, np.float32)),
    ),
    C(
        "loss-from-logits-type",
        "SparseCategoricalCrossentropy",
        "from_logits='yes'",
        TypeError,
        r"from_logits must be True or False, got 'yes'",
        lambda s, t: SparseCategoricalCrossentropy(from_logits="yes"),
    ),
    # --- layers called directly
    C(
        "layer-forward-shape",
        "Layer.forward",
        "a Conv2D built for 3 channels given 1",
        ValueError,
        r"Conv2D 'c': x has shape \(2, 8, 8, 1\), but the layer was built for inputs of shape \(N,\) \+ \(8, 8, 3\)",
        lambda s, t: s.forward(np.zeros((2, 8, 8, 1), np.float32)),
        setup=lambda t: (lambda layer: (layer.build((8, 8, 3)), layer)[1])(Conv2D(4, 3, name="c")),
    ),
    C(
        "layer-forward-int",
        "Layer.forward",
        "an int array",
        TypeError,
        r"Dense 'd': x must be a float NumPy array, got dtype int64",
        lambda s, t: Dense(3, name="d").forward(np.zeros((2, 4), np.int64)),
    ),
    C(
        "layer-backward-shape",
        "Layer.backward",
        "dy of the wrong shape",
        ValueError,
        r"MaxPooling2D 'p': dy has shape \(2, 3, 3, 2\), but the last forward\(training=True\) gave an output of "
        r"shape \(2, 4, 4, 2\)",
        lambda s, t: s.backward(np.ones((2, 3, 3, 2), np.float32)),
        setup=lambda t: trained_layer(MaxPooling2D(2, name="p"), np.ones((2, 8, 8, 2), np.float32)),
    ),
    # --- set_weights / load_weights
    C(
        "set-weights-count",
        "set_weights",
        "2 arrays for a model with 4",
        ValueError,
        r"(?s)set_weights: weights do not match:\n  expected 4 arrays, got 2\n.*array 2 \(layer 'dense' kernel, "
        r"shape \(36, 5\)\): missing\n  array 3 \(layer 'dense' bias, shape \(5,\)\): missing",
        lambda s, t: s.set_weights(s.get_weights()[:2]),
        setup=lambda t: small(),
    ),
    C(
        "set-weights-shapes",
        "set_weights",
        "two arrays of the wrong shape",
        ValueError,
        r"(?s)array 1 \(layer 'conv2d' bias\): expected shape \(4,\), got \(3,\)\n  "
        r"array 2 \(layer 'dense' kernel\): expected shape \(36, 5\), got \(5, 36\)",
        lambda s, t: s.set_weights([s.get_weights()[0], np.zeros(3), np.zeros((5, 36)), np.zeros(5)]),
        setup=lambda t: small(),
    ),
    C(
        "set-weights-nan",
        "set_weights",
        "a NaN in one array",
        ValueError,
        r"array 3 \(layer 'dense' bias\): contains NaN or Inf",
        lambda s, t: s.set_weights(s.get_weights()[:3] + [np.full(5, np.nan)]),
        setup=lambda t: small(),
    ),
    C(
        "set-weights-strings",
        "set_weights",
        "an array of strings",
        TypeError,
        r"set_weights: array 0 \(layer 'conv2d' kernel\) must hold numbers, got dtype <U",
        lambda s, t: s.set_weights([w.astype(str) for w in s.get_weights()]),
        setup=lambda t: small(),
    ),
    C(
        "set-weights-not-list",
        "set_weights",
        "one array instead of a list",
        TypeError,
        r"set_weights: weights must be a list of arrays, got ndarray",
        lambda s, t: s.set_weights(np.zeros(3)),
        setup=lambda t: small(),
    ),
    C(
        "set-weights-unbuilt",
        "set_weights",
        "a model without input shape",
        NotBuiltError,
        r"set_weights: the model is not built yet",
        lambda s, t: Sequential([Dense(3)]).set_weights([]),
    ),
    C(
        "load-weights-missing",
        "load_weights",
        "a path that does not exist",
        FileNotFoundError,
        r"load_weights: no such file: '<tmp>/nope.npz'",
        lambda s, t: small().load_weights(os.path.join(t, "nope.npz")),
    ),
    C(
        "load-weights-truncated",
        "load_weights",
        "a weights file cut in half",
        ValueError,
        r"load_weights: '<tmp>/cut.npz' is not an npcnn weights file .*truncated or corrupt",
        lambda s, t: small().load_weights(s),
        setup=truncated,
    ),
    C(
        "load-weights-npy",
        "load_weights",
        "a .npy file",
        ValueError,
        r"'<tmp>/a.npy' is not an npcnn weights file .*: a .npy array",
        lambda s, t: small().load_weights(s),
        setup=lambda t: (np.save(os.path.join(t, "a.npy"), np.zeros(3)), os.path.join(t, "a.npy"))[1],
    ),
    C(
        "load-weights-text",
        "load_weights",
        "a text file",
        ValueError,
        r"'<tmp>/notes.txt' is not an npcnn weights file .*not a zip",
        lambda s, t: small().load_weights(s),
        setup=cifar_foreign_file,
    ),
    C(
        "load-weights-pickle",
        "load_weights",
        "an .npz holding an object array (needs pickle)",
        ValueError,
        r"'<tmp>/obj.npz' is not an npcnn weights file .*it holds pickled objects, which npcnn never loads",
        lambda s, t: small().load_weights(s),
        setup=object_npz,
    ),
    C(
        "load-weights-directory",
        "load_weights",
        "a directory",
        ValueError,
        r"'<tmp>' is not an npcnn weights file .*: it is a directory",
        lambda s, t: small().load_weights(t),
    ),
    C(
        "load-weights-other-model",
        "load_weights",
        "weights of a model with 6 filters instead of 4",
        ValueError,
        r"(?s)load_weights\('<tmp>/other.npz'\): weights do not match the model:\n  conv2d/kernel: expected shape "
        r"\(3, 3, 3, 4\), got \(3, 3, 3, 6\)\n  conv2d/bias: expected shape \(4,\), got \(6,\)\n  dense/kernel",
        lambda s, t: small().load_weights(s),
        setup=other_model_weights,
    ),
    C(
        "load-weights-nan",
        "load_weights",
        "a weights file holding NaN",
        ValueError,
        r"dense/bias: contains NaN or Inf",
        lambda s, t: small().load_weights(s),
        setup=nan_weights_file,
    ),
    # --- checkpoints (npcnn.checkpoint)
    C(
        "checkpoint-truncated",
        "load_checkpoint",
        "a checkpoint cut in half",
        ValueError,
        r"<tmp>/cut.npz: not a readable npcnn checkpoint",
        lambda s, t: checkpoint_api().load_checkpoint(s),
        setup=truncated,
    ),
    C(
        "checkpoint-foreign",
        "load_checkpoint",
        "a weights file given as a checkpoint",
        ValueError,
        r"<tmp>/w.npz: not an npcnn checkpoint \(no valid 'meta' entry",
        lambda s, t: checkpoint_api().load_checkpoint(s),
        setup=weights_file,
    ),
    C(
        "checkpoint-other-model",
        "restore_checkpoint",
        "a checkpoint of another model",
        ValueError,
        r"(?s)<tmp>/ck.npz: checkpoint does not fit this model:\n  "
        r"weights conv2d/kernel: model has shape \(3, 3, 3, 4\), checkpoint \(3, 3, 3, 6\)",
        lambda s, t: checkpoint_api().restore_checkpoint(s, small()),
        setup=other_checkpoint,
    ),
    # --- load_data (npcnn.datasets.cifar10)
    C(
        "load-data-truncated",
        "cifar10.load_data",
        "a truncated data_batch_3",
        ValueError,
        r"<tmp>/cifar-10-batches-py/data_batch_3: not a valid CIFAR-10 batch file \(.*truncated",
        lambda s, t: load_data_offline(s),
        setup=cifar_truncated,
    ),
    C(
        "load-data-crafted",
        "cifar10.load_data",
        "a pickle that would call os.system",
        ValueError,
        r"<tmp>/cifar-10-batches-py/data_batch_1: not a valid CIFAR-10 batch file \(refused or malformed pickle: "
        r"forbidden global posix.system",
        lambda s, t: load_data_offline(s),
        setup=cifar_crafted,
    ),
    C(
        "load-data-foreign",
        "cifar10.load_data",
        "path= a text file",
        ValueError,
        r"<tmp>/notes.txt: expected a folder or cifar-10-python.tar.gz, got another file",
        lambda s, t: load_data_offline(s),
        setup=cifar_foreign_file,
    ),
    C(
        "load-data-missing",
        "cifar10.load_data",
        "an empty folder, no network",
        OSError,
        r"CIFAR-10 is not available: no local copy in <tmp>/empty and the download from "
        r"http://127.0.0.1:9/cifar-10-python.tar.gz failed",
        lambda s, t: load_data_offline(s),
        setup=lambda t: (os.makedirs(os.path.join(t, "empty")), os.path.join(t, "empty"))[1],
    ),
]

# ------------------------------------------------------------------------------ running a case
KERNEL_NAMES = [
    n for n in K.__all__ if n not in ("register", "get_kernel", "conv_geometry", "output_size", "normalize_padding")
]


class KernelReached(AssertionError):
    pass


def _tripwire(name):
    def trip(*args, **kwargs):
        raise KernelReached(f"kernel {name} ran on bad input")

    return trip


def arm_tripwires(monkeypatch):
    """Replace every kernel (the dispatchers, the Numba functions, and their NumPy twins) by a tripwire."""
    import importlib

    for name in KERNEL_NAMES:
        monkeypatch.setattr(K, name, _tripwire(name))
    monkeypatch.setattr(K, "get_kernel", lambda name, backend=None: _tripwire(name))
    for modname in ("activations", "conv", "dense", "im2col", "pool", "softmax_ce"):
        mod = importlib.import_module(f"npcnn.kernels.{modname}")
        for attr in list(vars(mod)):
            obj = getattr(mod, attr)
            if attr.endswith(("_numpy", "_numba", "_nb")) or attr in ("dense_forward", "dense_backward", "gemm"):
                if callable(obj):
                    monkeypatch.setattr(mod, attr, _tripwire(f"{modname}.{attr}"))


def normalise(message, tmp):
    """Paths under ``tmp`` become <tmp>; the network library's own words (version-dependent) are elided."""
    message = message.replace(os.fspath(tmp), "<tmp>")
    return re.sub(r"failed \(.*?\)\. Download", "failed (<the network error>). Download", message, flags=re.S)


def run_case(case, tmp):
    """Run ``case`` in folder ``tmp``; return the exception it raised (or None)."""
    state = case.setup(tmp) if case.setup else None
    try:
        case.act(state, tmp)
    except Exception as e:  # noqa: BLE001 - the point is to see what comes out
        return e
    return None


@pytest.fixture(autouse=True)
def _seed():
    npcnn.set_random_seed(0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_error(case, tmp_path, monkeypatch):
    state = case.setup(str(tmp_path)) if case.setup else None
    arm_tripwires(monkeypatch)
    with pytest.raises(case.exc) as info:
        case.act(state, str(tmp_path))
    assert not isinstance(info.value, KernelReached), str(info.value)
    assert isinstance(info.value, (ValueError, TypeError, OSError)), type(info.value)
    message = normalise(str(info.value), tmp_path)
    assert re.search(case.match, message), f"{case.id}: {message!r} does not match {case.match!r}"


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_model_state_errors_are_runtime_and_value_errors():
    assert issubclass(NotCompiledError, RuntimeError) and issubclass(NotCompiledError, ValueError)
    assert issubclass(NotBuiltError, ModelStateError)


def test_crafted_pickle_ran_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="forbidden global"):
        load_data_offline(cifar_crafted(str(tmp_path)))
    assert not (tmp_path / "pwned").exists()


def test_checks_leave_the_model_unchanged(tmp_path):
    """A rejected set_weights / load_weights changes nothing, even when some arrays were fine."""
    m = small()
    before = m.get_weights()
    with pytest.raises(ValueError):
        m.set_weights([np.ones_like(before[0]), np.ones(3)] + before[2:])
    with pytest.raises(ValueError):
        m.load_weights(other_model_weights(str(tmp_path)))
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_valid_inputs_still_accepted():
    """The checks refuse what is wrong, not what Keras accepts: (N, 1) labels, float labels holding
    integers, uint8 images, numpy integer arguments, verbose='auto', acc as a metric name."""
    m = small(False)
    m.compile(Adam(), SparseCategoricalCrossentropy(), metrics=["acc"])
    h = m.fit(
        (X * 40 + 128).clip(0, 255).astype(np.uint8),
        Y[:, None].astype(float),
        batch_size=np.int64(4),
        epochs=np.int32(1),
        verbose=0,
    )
    assert np.isfinite(h.history["loss"][0])
    assert m.predict(X, verbose=0).shape == (6, 5)
    assert check_verbose("auto") == 1 and check_verbose(np.int64(2)) == 2
    assert len(m.evaluate(X, Y.astype(np.uint8), verbose=0)) == 2


# ------------------------------------------------------------------------------ numerical safety
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e4, -1e4, 1e30])
def test_fused_loss_finite_for_huge_logits(backend, dtype, scale):
    z = np.array([[scale, 0.0, -scale], [0.0, scale, 1.0], [scale, scale, scale]], dtype=dtype)
    y = np.array([2, 0, 1])
    loss, dz = SparseCategoricalCrossentropy(from_logits=True).compute(z, y, logits=True)
    assert np.isfinite(loss) and np.isfinite(dz).all()
    np.testing.assert_allclose(dz.sum(axis=1), 0, atol=1e-6)


def test_loss_finite_when_probabilities_underflow(backend):
    """A softmax whose label probability underflows to exactly 0: the fused loss (from the logits) is
    finite and so is its gradient; the probability loss clips to 1e-7 as Keras does."""
    z = np.array([[0.0, 200.0], [-1e4, 1e4]], dtype=np.float32)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert p[0, 0] == 0 and p[1, 0] == 0
    y = np.array([0, 0])
    loss, dz = SparseCategoricalCrossentropy(from_logits=True).compute(z, y, logits=True)
    assert np.isfinite(loss) and np.isfinite(dz).all() and loss == pytest.approx((200 + 2e4) / 2, rel=1e-5)
    loss_p, dp = SparseCategoricalCrossentropy().compute(p, y)
    assert np.isfinite(loss_p) and np.isfinite(dp).all() and loss_p == pytest.approx(-np.log(1e-7), rel=1e-3)


def test_training_with_huge_logits_stays_finite(backend):
    """A final Dense whose kernel makes logits of order 1e4: fit gives finite losses and weights."""
    m = small()
    m.layers[-1].params["kernel"][...] = np.sign(m.layers[-1].params["kernel"]) * 3000
    assert np.abs(m.forward(X, logits=True)).max() > 1e3
    h = m.fit(X, Y, batch_size=3, epochs=2, verbose=0)
    assert all(np.isfinite(v) for v in h.history["loss"])
    assert all(np.isfinite(w).all() for w in m.get_weights())


class NaNAt(SparseCategoricalCrossentropy):
    """A loss that turns NaN at one (epoch, batch): stands for any numerical blow-up."""

    def __init__(self, epoch, batch, what="loss"):
        super().__init__()
        self.at, self.what, self.calls = (epoch, batch), what, []

    def _compute(self, y_pred, labels, logits=False):
        loss, d = super()._compute(y_pred, labels, logits)
        if self.calls and self.calls[-1] == self.at:
            if self.what == "loss":
                loss = loss.dtype.type(np.nan)
            else:
                d = d.copy()
                d[0, 0] = np.inf
        return loss, d


class Position(Callback):
    def __init__(self, loss):
        self.loss = loss

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.loss.calls.append((self.epoch, batch))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the injected Inf, on its way
@pytest.mark.parametrize(
    "what,message",
    [
        ("loss", r"fit: the loss became nan at epoch 2, batch 3; training stopped before this update"),
        ("grad", r"fit: the gradient of (conv2d|dense)/(kernel|bias) became NaN or Inf .* at epoch 2, batch 3"),
    ],
)
def test_nan_stops_fit_naming_epoch_and_batch_and_keeps_last_good_state(tmp_path, what, message):
    """TerminateOnNaN behaviour: the error names epoch and batch (1-based, as Keras prints them); the
    weights are those after the last good batch; the checkpoint of the last finished epoch is intact."""
    from npcnn.checkpoint import TrainingCheckpoint, load_checkpoint

    m = small(False)
    loss = NaNAt(epoch=1, batch=2, what=what)
    m.compile("adam", loss, metrics=["accuracy"])
    ckpt = TrainingCheckpoint(tmp_path)
    snapshots = []

    class Snap(Callback):
        def on_train_batch_end(self, batch, logs=None):
            snapshots.append(m.get_weights())

    with pytest.raises(FloatingPointError, match=message):
        m.fit(X, Y, batch_size=2, epochs=3, verbose=0, shuffle=False, callbacks=[Position(loss), ckpt, Snap()])
    assert m.stop_training
    for a, b in zip(snapshots[-1], m.get_weights()):  # nothing changed after the last good batch
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(w).all() for w in m.get_weights())
    state = load_checkpoint(ckpt.path)
    assert state.epoch == 1 and all(np.isfinite(v).all() for v in state.weights.values())
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_nan_in_train_on_batch(monkeypatch):
    m = small()
    monkeypatch.setattr(m.loss, "_compute", lambda p, y, logits=False: (np.float32(np.inf), np.zeros_like(p)))
    before = m.get_weights()
    with pytest.raises(FloatingPointError, match="train_on_batch: the loss became inf at this batch"):
        m.train_on_batch(X, Y)
    for a, b in zip(before, m.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------ files
def test_save_weights_failure_keeps_the_old_file(tmp_path, monkeypatch):
    m = small()
    path = tmp_path / "w.npz"
    m.save_weights(path)
    before = path.read_bytes()

    def half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        m.save_weights(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.npz"]  # the temporary file is gone


def test_load_weights_never_unpickles(tmp_path, monkeypatch):
    calls = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: calls.append(k) or real(*a, **k))
    m = small()
    m.save_weights(tmp_path / "w.npz")
    m.load_weights(tmp_path / "w.npz")
    assert calls and all(k.get("allow_pickle") is False for k in calls)
    from npcnn.checkpoint import restore_checkpoint, save_checkpoint

    calls.clear()
    restore_checkpoint(save_checkpoint(tmp_path / "c.npz", m, 1), m)
    assert calls and all(k.get("allow_pickle") is False for k in calls)


CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import npcnn
    from npcnn.checkpoint import TrainingCheckpoint, restore_checkpoint
    from npcnn.layers import Conv2D, Dense, Flatten, MaxPooling2D
    from npcnn.models import Sequential

    ck_dir, mode, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    npcnn.set_random_seed(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 5, 24)
    model = Sequential([Conv2D(4, 3, activation="relu", input_shape=(8, 8, 3)), MaxPooling2D(2), Flatten(),
                        Dense(5, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    ckpt = TrainingCheckpoint(ck_dir)
    initial = 0
    if mode == "resume":
        state = restore_checkpoint(ckpt.path, model)
        initial, ckpt.history = state.epoch, state.history
        print("resumed at", initial, flush=True)
    real_savez = np.savez
    writes = [0]

    def savez(f, **arrays):
        writes[0] += 1
        if writes[0] == kill_at:          # this checkpoint write dies half-way
            real_savez(f, **arrays)
            f.flush()
            f.truncate(f.tell() // 2)
            f.flush()
            os.fsync(f.fileno())
            if mode == "signal":
                os.kill(os.getpid(), signal.SIGKILL)
            open(os.path.join(ck_dir, "WRITING"), "w").close()
            import time
            time.sleep(60)                 # the parent kills us here
        return real_savez(f, **arrays)

    np.savez = savez
    model.fit(x, y, batch_size=6, epochs=4, initial_epoch=initial, verbose=0, shuffle=True, callbacks=[ckpt])
    real_savez(os.path.join(ck_dir, "final.npz"), *model.get_weights())
""")


def _child(tmp_path, *args):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("how", ["signal", "parent"])
def test_sigkill_during_checkpoint_write_then_resume(tmp_path, how):
    """A run killed (SIGKILL) while its epoch-2 checkpoint is half written leaves the epoch-1 checkpoint
    intact; resuming from it finishes the run with exactly the weights of an uninterrupted run."""
    import time

    from npcnn.checkpoint import load_checkpoint

    ref_dir, ck_dir = tmp_path / "ref", tmp_path / "ck"
    ref = _child(tmp_path, ref_dir, "fresh", 0)
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err.decode()

    proc = _child(tmp_path, ck_dir, "signal" if how == "signal" else "fresh", 2)
    if how == "parent":  # kill from outside while the child sits inside the half-written write
        deadline = time.time() + 120
        while not (ck_dir / "WRITING").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1].decode()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode()

    # the half-written temporary file exists; the checkpoint itself is the complete epoch-1 one
    leftovers = [p for p in os.listdir(ck_dir) if p.endswith(".tmp")]
    assert leftovers, os.listdir(ck_dir)
    state = load_checkpoint(ck_dir / "checkpoint.npz")
    assert state.epoch == 1 and len(state.history["loss"]) == 1

    res = _child(tmp_path, ck_dir, "resume", 0)
    out, err = res.communicate(timeout=300)
    assert res.returncode == 0, err.decode()
    assert b"resumed at 1" in out
    assert load_checkpoint(ck_dir / "checkpoint.npz").epoch == 4
    with np.load(ref_dir / "final.npz") as a, np.load(ck_dir / "final.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------------------ docs/errors.md
BEGIN, END = "<!-- BEGIN TABLE (generated by `python tests/test_errors.py`) -->", "<!-- END TABLE -->"


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def render_table(tmp):
    rows = ["| id | where | bad input | error | message |", "|---|---|---|---|---|"]
    for case in CASES:
        err = run_case(case, tmp)
        message = normalise(str(err), tmp) if err is not None else "(no error)"
        name = type(err).__name__ if err is not None else "-"
        rows.append(f"| `{case.id}` | `{case.where}` | {_cell(case.what)} | `{name}` | {_cell(message)} |")
    return "\n".join(rows)


def _fixed_tmp(tmp_path):
    """Messages name files: render them from one folder so the table does not depend on pytest's tmp."""
    tmp = tmp_path / "t"
    tmp.mkdir()
    return str(tmp)


def test_docs_table_is_current(tmp_path):
    npcnn.set_random_seed(0)
    table = render_table(_fixed_tmp(tmp_path))
    with open(DOC, encoding="utf8") as f:
        text = f.read()
    assert BEGIN in text and END in text, "docs/errors.md has no generated table"
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert current == table, "docs/errors.md is out of date: run `python tests/test_errors.py`"


if __name__ == "__main__":  # regenerate the table in docs/errors.md
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        npcnn.set_random_seed(0)
        table = render_table(_fixed_tmp(Path(d)))
    with open(DOC, encoding="utf8") as f:
        text = f.read()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(DOC, "w", encoding="utf8") as f:
        f.write(head + BEGIN + "\n" + table + "\n" + END + tail)
    print(f"wrote {len(CASES)} rows to {DOC}")


def test_conv2d_relu_direct_forward_checks_its_input(monkeypatch):
    layer = Conv2D(4, 3, activation="relu", name="c")
    layer.build((8, 8, 3))
    arm_tripwires(monkeypatch)
    with pytest.raises(ValueError, match=r"Conv2D 'c': x has shape \(2, 8, 8, 1\)"):
        layer.forward(np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(TypeError, match="float NumPy array"):
        layer.forward(np.zeros((2, 8, 8, 3), np.int64))


def test_atomic_write_keeps_permissions(tmp_path):
    from npcnn.utils import atomic_write

    path = tmp_path / "f.bin"
    with atomic_write(path) as f:
        f.write(b"one")
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask  # not mkstemp's 0600
    os.chmod(path, 0o640)
    with atomic_write(path) as f:
        f.write(b"two")
    assert path.read_bytes() == b"two" and (path.stat().st_mode & 0o777) == 0o640
    assert os.listdir(tmp_path) == ["f.bin"]
