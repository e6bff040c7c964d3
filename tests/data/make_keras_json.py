"""Make the Keras 3 architecture fixtures (``model.to_json()``) that tests/test_keras_json.py loads with
``npcnn.models.model_from_json``. Run it in a throwaway environment, never in CI (the files are committed)::

    KERAS_BACKEND=torch /tmp/kvenv/bin/python tests/data/make_keras_json.py

The committed files were made with Keras 3.15.1 and torch 2.13.0+cpu. It writes, next to itself:

* ``keras_cifar10_small.json`` and ``keras_bn_model.json``: the architectures of make_keras_weights.py's
  two models, whose weights (``*.weights.h5``) and predictions (``*_pred.npy``) are committed beside;
* ``keras_cifar10_deep.json``: issue 14's network (``npcnn.models.cifar10_deep``), as Keras writes it.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
from keras import layers  # noqa: E402
from make_keras_weights import bn_model, cifar10_small  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def deep():
    def block(f, d):
        return [layers.Conv2D(f, (3, 3), padding="same"), layers.BatchNormalization(), layers.Activation("relu"),
                layers.Conv2D(f, (3, 3), padding="same"), layers.BatchNormalization(), layers.Activation("relu"),
                layers.MaxPooling2D((2, 2)), layers.Dropout(d)]

    return keras.Sequential(
        [keras.Input((32, 32, 3)), layers.RandomFlip("horizontal"), layers.RandomTranslation(0.1, 0.1)]
        + block(32, 0.2) + block(64, 0.3) + block(128, 0.4)
        + [layers.Flatten(), layers.Dense(128), layers.BatchNormalization(), layers.Activation("relu"),
           layers.Dropout(0.5), layers.Dense(10, activation="softmax")], name="cifar10_deep")


def main():
    print("keras", keras.__version__)
    for name, model in (("keras_cifar10_small", cifar10_small()), ("keras_bn_model", bn_model()),
                        ("keras_cifar10_deep", deep())):
        with open(os.path.join(HERE, name + ".json"), "w") as f:
            f.write(model.to_json(indent=1))
        print(name, model.count_params())


if __name__ == "__main__":
    main()
