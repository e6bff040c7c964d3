"""The Keras CIFAR-10 tutorial program, as printed in the README, runs on npcnn with only its imports changed.

The README's program is read from README.md and executed as it stands, on a CIFAR-10 folder in the
official layout written from the bundled real sample (1,000 training / 200 test images), so
``cifar10.load_data()`` reads real files through the same code path as the full data set.
"""

import os
import pickle
import re

import numpy as np
import pytest

from npcnn.datasets import cifar10

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")

# The Keras program (keras.io / TensorFlow tutorial form), as users have it.
KERAS_PROGRAM = """\
from keras.datasets import cifar10
from keras.models import Sequential
from keras.layers import Conv2D, MaxPooling2D, Flatten, Dense

(train_images, train_labels), (test_images, test_labels) = cifar10.load_data()
train_images, test_images = train_images / 255.0, test_images / 255.0

model = Sequential()
model.add(Conv2D(32, (3, 3), activation='relu', input_shape=(32, 32, 3)))
model.add(MaxPooling2D((2, 2)))
model.add(Conv2D(64, (3, 3), activation='relu'))
model.add(MaxPooling2D((2, 2)))
model.add(Conv2D(64, (3, 3), activation='relu'))
model.add(Flatten())
model.add(Dense(64, activation='relu'))
model.add(Dense(10, activation='softmax'))
model.summary()

model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
history = model.fit(train_images, train_labels, epochs=10,
                    validation_data=(test_images, test_labels))
test_loss, test_acc = model.evaluate(test_images, test_labels, verbose=2)
"""


def readme_program():
    text = open(README, encoding="utf8").read()
    section = text.split("## The Keras program, on npcnn", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def body(program):
    """The program without its import lines and comments."""
    lines = [ln.split("#", 1)[0].rstrip() for ln in program.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith(("from ", "import "))]


def imports(program):
    return [ln.split("#", 1)[0].strip() for ln in program.splitlines() if ln.startswith(("from ", "import "))]


def write_official_layout(root):
    """root/cifar-10-batches-py/ from the bundled sample: 5 training batches of 200 and a test batch."""
    (x_train, y_train), (x_test, y_test) = cifar10.load_sample()
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)

    def dump(name, x, y):
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)  # official rows are channel-first
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in y.reshape(-1)], b"data": rows,
             b"filenames": [f"{name}_{i}.png".encode() for i in range(len(x))]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=4)

    for i, name in enumerate(cifar10.TRAIN_FILES):
        dump(name, x_train[i * 200:(i + 1) * 200], y_train[i * 200:(i + 1) * 200])
    dump(cifar10.TEST_FILE, x_test, y_test)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in cifar10.CLASS_NAMES], b"num_cases_per_batch": 200,
                     b"num_vis": 3072}, f, protocol=4)
    return (x_train, y_train), (x_test, y_test)


def test_readme_program_is_the_keras_program_with_imports_changed():
    program = readme_program()
    assert body(program) == body(KERAS_PROGRAM)
    assert imports(program) == [ln.replace("keras.", "npcnn.") for ln in imports(KERAS_PROGRAM)]


@pytest.mark.slow
def test_readme_program_runs_and_learns(tmp_path, monkeypatch, capsys):
    import npcnn

    (x_train, y_train), _ = write_official_layout(str(tmp_path))
    monkeypatch.setenv("NPCNN_DATA_DIR", str(tmp_path))
    npcnn.set_random_seed(0)
    ns = {}
    exec(compile(readme_program(), "README.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "Total params: 122,570" in out
    np.testing.assert_array_equal(ns["train_images"], x_train / 255.0)  # load_data read the real files
    hist = ns["history"].history
    assert set(hist) == {"loss", "accuracy", "val_loss", "val_accuracy"} and len(hist["loss"]) == 10
    assert ns["history"].epoch == list(range(10))
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["val_loss"][-1] == pytest.approx(ns["test_loss"], rel=1e-5)  # same test set, same weights
    probs = ns["model"].predict(ns["test_images"])
    assert probs.shape == (200, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    # 1,000 real training images, 10 epochs: clearly above chance (0.1) on the 200 test images
    assert 0.2 < ns["test_acc"] <= 1 and np.isfinite(ns["test_loss"])
