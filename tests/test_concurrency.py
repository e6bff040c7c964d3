"""One model, several Python threads or processes (issue 10, item 6).

Per-call state lives in objects the caller owns (a model keeps a pool of them), and one
multi-threaded computation runs at a time per process, so:

* ``predict``/``evaluate`` from several threads at once return exactly the serial results, on both
  backends, with data parallelism on or off, at batch sizes that shard (32) and that do not (8);
* ``fit`` on a model that is already training in another thread raises a clear RuntimeError;
* two different models trained in two threads end bit-identical to training them one after the other;
* ``predict`` in a child forked after a ``fit`` (whose shard pool threads do not survive the fork) works.
"""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest
from conftest import seed_model

import npcnn
from npcnn import parallel, threads


@pytest.fixture(params=[True, False], ids=["data-parallel", "intra-op"])
def threading_mode(request):
    """Two threads (where the machine has them), with data parallelism on or off."""
    before_threads, before_dp = npcnn.get_num_threads(), npcnn.get_data_parallel()
    npcnn.set_num_threads(min(2, threads.max_threads()))
    npcnn.set_data_parallel(request.param)
    yield request.param
    npcnn.set_num_threads(before_threads)
    npcnn.set_data_parallel(before_dp)


def _small(seed=0):
    npcnn.set_random_seed(seed)
    return seed_model(input_shape=(18, 18, 3), filters=(4, 6, 5), units=8)


def _data(n, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((n, 18, 18, 3), dtype=np.float32), rng.integers(0, 10, n)


def _in_threads(fn, workers=4, repeats=3):
    """fn() run ``repeats`` times in each of ``workers`` threads started together; every result."""
    results, errors = [], []
    start = threading.Barrier(workers)

    def work():
        try:
            start.wait()
            for _ in range(repeats):
                results.append(fn())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(workers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in ts), "a thread hung"
    assert not errors, errors
    return results


@pytest.mark.parametrize("batch", [8, 32])
def test_predict_from_threads_equals_serial(backend, threading_mode, batch):
    model = _small()
    x, y = _data(64)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # trained weights, pooled training states exist
    serial = model.predict(x, batch_size=batch)
    for out in _in_threads(lambda: model.predict(x, batch_size=batch)):
        np.testing.assert_array_equal(out, serial)


@pytest.mark.parametrize("batch", [8, 32])
def test_evaluate_from_threads_equals_serial(backend, threading_mode, batch):
    model = _small()
    x, y = _data(48)
    serial = model.evaluate(x, y, batch_size=batch, verbose=0)
    for result in _in_threads(lambda: model.evaluate(x, y, batch_size=batch, verbose=0)):
        assert result == serial


def test_fit_while_training_in_another_thread_is_refused(threading_mode):
    model = _small()
    x, y = _data(32)
    inside, release = threading.Event(), threading.Event()

    class Hold(npcnn.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                inside.set()
                release.wait(timeout=60)

    worker = threading.Thread(target=lambda: model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                                                        callbacks=[Hold()]))
    worker.start()
    try:
        assert inside.wait(timeout=120)
        with pytest.raises(RuntimeError, match="already training in another thread"):
            model.fit(x, y, epochs=1, verbose=0)
        with pytest.raises(RuntimeError, match="already training"):
            model.train_on_batch(x, y)
        model.predict(x)  # inference is not refused (it reads the weights as they are)
    finally:
        release.set()
        worker.join(timeout=120)
    assert not worker.is_alive()
    model.fit(x, y, epochs=1, verbose=0)  # free again


def test_two_models_in_two_threads_equal_one_after_the_other(backend, threading_mode):
    """Both models read npcnn's one random generator only when built (here, before the threads); with
    shuffle=False nothing else is drawn, so the threads' interleaving cannot change the result. (With
    shuffle=True two concurrent fits draw their permutations from the one global stream in whatever
    order they reach it, as Keras's global seed does.)"""
    x, y = _data(48)

    def train(model, seed_labels):
        model.fit(x, (y + seed_labels) % 10, batch_size=16, epochs=2, verbose=0, shuffle=False)
        return model.get_weights()

    alone = [train(_small(s), s) for s in (0, 1)]
    models = [_small(s) for s in (0, 1)]
    together = [None, None]
    ts = [threading.Thread(target=lambda i=i: together.__setitem__(i, train(models[i], i))) for i in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    for a, b in zip(alone, together):
        assert b is not None
        for wa, wb in zip(a, b):
            np.testing.assert_array_equal(wa, wb)


def _child_predict(model, x, queue):
    queue.put(model.predict(x, batch_size=32))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_predict_in_a_forked_child(threading_mode):
    model = _small()
    x, y = _data(64)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # starts the shard pool's threads (data-parallel)
    expected = model.predict(x, batch_size=32)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_predict, args=(model, x, queue))
    child.start()
    try:
        out = queue.get(timeout=120)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)  # the child may run serial drivers
    assert not parallel.forked_child()  # the parent is not a child


def test_fit_from_inside_its_own_callback_is_refused_clearly():
    model = _small()
    x, y = _data(16)
    errors = []

    class Nested(npcnn.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            try:
                self.model.train_on_batch(x, y)
            except RuntimeError as e:
                errors.append(str(e))

    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[Nested()])
    assert len(errors) == 2 and "same thread" in errors[0]
