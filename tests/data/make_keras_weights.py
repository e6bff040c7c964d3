"""Make the Keras 3 weight fixtures that tests/test_keras_weights.py loads into npcnn models.

Run it in a throwaway environment, never in CI (the files it writes are committed)::

    python3 -m venv /tmp/kvenv
    /tmp/kvenv/bin/pip install keras torch==2.13.0 h5py
    KERAS_BACKEND=torch /tmp/kvenv/bin/python tests/data/make_keras_weights.py

The committed files were made with Keras 3.15.1, torch 2.13.0+cpu (the torch backend), h5py 3.16.0,
NumPy 2.4.6, Python 3.11. It writes, next to itself:

* ``keras_cifar10_small.weights.h5``: the Keras CIFAR-10 tutorial's model shrunk (filters 4, 6, 5,
  Dense 8, inputs 18x18x3), i.e. ``npcnn.models.cifar10_cnn(input_shape=(18, 18, 3), filters=(4, 6, 5),
  units=8)``, saved by ``model.save_weights``; its Keras layer names are Keras's defaults (conv2d,
  conv2d_1, ...);
* ``keras_bn_model.weights.h5``: Conv2D(4, 3, 'same') -> BatchNormalization -> ReLU -> MaxPooling2D ->
  Conv2D(6, 3) -> BatchNormalization -> Dropout -> Flatten -> Dense(5, softmax) on 10x10x3 inputs,
  built after a throwaway model, so that its Keras layer names (conv2d_6, dense_4, ..., kept in the
  file as the ``name`` attribute of each ``vars`` group) are not npcnn's: Keras 3 addresses a layer by
  its class and its position among the layers of that class (groups ``layers/conv2d``,
  ``layers/conv2d_1``, ...), and npcnn pairs them the same way;
* ``keras_input.npy``: the fixed inputs (4 images of 18x18x3, uniform [0, 1), NumPy seed 0);
  the BN model reads their top-left 10x10 corner;
* ``keras_cifar10_small_pred.npy`` and ``keras_bn_model_pred.npy``: Keras's ``predict`` on them.

Every weight is set from NumPy's seeded generator (not left at Keras's initial values, whose biases
are 0 and whose moving statistics are 0 and 1), so a wrong pairing or variable order cannot pass.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from keras import layers  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def set_random_weights(model, rng):
    """Every variable from ``rng``: kernels and biases N(0, 0.3), BatchNormalization's gamma in
    [0.5, 1.5], beta N(0, 0.3), moving_mean N(0, 0.3), moving_variance in [0.5, 2]."""
    for layer in model.layers:
        new = []
        for w in layer.weights:
            name = w.path.split("/")[-1]
            shape = tuple(w.shape)
            if name == "gamma":
                v = rng.uniform(0.5, 1.5, shape)
            elif name == "moving_variance":
                v = rng.uniform(0.5, 2.0, shape)
            else:
                v = rng.normal(0.0, 0.3, shape)
            new.append(v.astype("float32"))
        if new:
            layer.set_weights(new)


def cifar10_small():
    return keras.Sequential([
        keras.Input((18, 18, 3)),
        layers.Conv2D(4, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(6, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(5, (3, 3), activation="relu"),
        layers.Flatten(),
        layers.Dense(8, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])


def bn_model():
    return keras.Sequential([
        keras.Input((10, 10, 3)),
        layers.Conv2D(4, 3, padding="same"),
        layers.BatchNormalization(),
        layers.ReLU(),
        layers.MaxPooling2D(),
        layers.Conv2D(6, 3),
        layers.BatchNormalization(),
        layers.Dropout(0.3),
        layers.Flatten(),
        layers.Dense(5, activation="softmax"),
    ])


def main():
    print("keras", keras.__version__, "torch", torch.__version__, "h5py", h5py.__version__, "numpy", np.__version__)
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((4, 18, 18, 3)).astype("float32")
    np.save(os.path.join(HERE, "keras_input.npy"), x)

    rng = np.random.default_rng(1)
    small = cifar10_small()
    set_random_weights(small, rng)
    small.save_weights(os.path.join(HERE, "keras_cifar10_small.weights.h5"))
    np.save(os.path.join(HERE, "keras_cifar10_small_pred.npy"), small.predict(x, verbose=0).astype("float32"))
    print("cifar10_small:", [layer.name for layer in small.layers])

    cifar10_small()  # a throwaway model: the next one's layers get other names (conv2d_3, ...)
    bn = bn_model()
    set_random_weights(bn, rng)
    bn.save_weights(os.path.join(HERE, "keras_bn_model.weights.h5"))
    np.save(os.path.join(HERE, "keras_bn_model_pred.npy"), bn.predict(x[:, :10, :10, :], verbose=0).astype("float32"))
    print("bn_model:", [layer.name for layer in bn.layers])


if __name__ == "__main__":
    main()
