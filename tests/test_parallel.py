"""npcnn.parallel: data-parallel shards give the full-batch step, deterministically."""

import copy

import numpy as np
import pytest
from conftest import seed_model

import npcnn
from npcnn import parallel, threads
from npcnn.utils import set_random_seed

pytestmark = pytest.mark.skipif(threads.max_threads() < 2, reason="needs 2 threads")


@pytest.fixture
def two_threads():
    before = npcnn.get_num_threads()
    npcnn.set_num_threads(2)
    with npcnn.use_backend("numba"):
        yield
    npcnn.set_num_threads(before)
    npcnn.set_data_parallel(True)


def small_model():
    set_random_seed(3)
    return seed_model(input_shape=(18, 18, 3), filters=(4, 6, 6), units=8, classes=5)


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 18, 18, 3)).astype(np.float32), rng.integers(0, 5, n)


def test_shard_bounds():
    assert parallel.shard_bounds(32, 2) == [(0, 16), (16, 32)]
    assert parallel.shard_bounds(33, 2) == [(0, 17), (17, 33)]
    assert parallel.shard_bounds(5, 3) == [(0, 2), (2, 4), (4, 5)]


def test_shard_count_follows_the_switches(two_threads):
    assert parallel.shard_count(32) == 2
    assert parallel.shard_count(2 * parallel.MIN_SHARD - 1) == 1  # too small to split
    npcnn.set_data_parallel(False)
    assert parallel.shard_count(32) == 1
    npcnn.set_data_parallel(True)
    with npcnn.use_backend("numpy"):
        assert parallel.shard_count(32) == 1
    npcnn.set_num_threads(1)
    assert parallel.shard_count(32) == 1
    with pytest.raises(TypeError):
        npcnn.set_data_parallel("yes")


@pytest.mark.parametrize("n", [32, 37])
def test_sharded_step_equals_the_full_batch_step(two_threads, n):
    x, y = data(n)
    results = []
    for dp in (False, True):
        npcnn.set_data_parallel(dp)
        model = small_model()
        loss, out, _ = model._loss_and_grad(x, y)
        results.append((loss, out, [g.copy() for g in model.grads]))
    (l0, o0, g0), (l1, o1, g1) = results
    assert l1 == pytest.approx(l0, rel=1e-6)
    np.testing.assert_allclose(o1, o0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g0, g1):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * np.abs(a).max())


def test_sharded_training_is_bit_identical_run_to_run(two_threads):
    x, y = data(48)
    runs = []
    for _ in range(2):
        model = small_model()
        history = model.fit(x, y, batch_size=24, epochs=2, verbose=0)
        runs.append((model.get_weights(), history.history["loss"]))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1] == runs[1][1]


def test_inference_shards_match_and_leave_the_model_untouched(two_threads):
    model = small_model()
    x, y = data(40)
    model._train_step(x, y)
    fields = [dict(vars(layer)) for layer in model.layers]
    p = model.predict(x, batch_size=40)
    assert all(vars(layer) == f for layer, f in zip(model.layers, fields))
    npcnn.set_data_parallel(False)
    np.testing.assert_allclose(p, model.predict(x, batch_size=40), rtol=1e-5, atol=1e-7)


def test_replicas_follow_new_weights_and_copies(two_threads):
    model = small_model()
    x, y = data(32)
    model._train_step(x, y)
    clone = copy.deepcopy(model)  # the replicas live outside the model: deepcopy works
    new = [w * 0.5 for w in model.get_weights()]
    model.set_weights(new)  # in place: the replicas see it
    clone.set_weights(new)
    np.testing.assert_allclose(model.predict(x, batch_size=32), clone.predict(x, batch_size=32), rtol=1e-6)
    npcnn.set_data_parallel(False)
    np.testing.assert_allclose(model.predict(x, batch_size=32), clone.predict(x, batch_size=32), rtol=1e-6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_bad_batch_still_stops_before_the_update(two_threads):
    model = small_model()
    x, y = data(32)
    model._train_step(x, y)
    before = model.get_weights()
    bad = x.copy()
    bad[20, 0, 0, 0] = np.inf  # in the second shard
    with pytest.raises(FloatingPointError, match="before this update"):
        model._train_step(bad, y)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_errors_in_a_shard_reach_the_caller(two_threads):
    model = small_model()
    with pytest.raises(ValueError, match="shape"):
        model.forward(np.zeros((32, 19, 18, 3), np.float32))


def test_sharded_evaluate_loss_is_the_unsharded_loss(two_threads):
    """evaluate() shards its batches: the loss must come from logits exactly as without shards."""
    model = small_model()
    x, y = data(64)
    sharded = model.evaluate(x, y, batch_size=64, verbose=0)
    npcnn.set_data_parallel(False)
    plain = model.evaluate(x, y, batch_size=64, verbose=0)
    probs = model.predict(x, batch_size=64)
    manual = -np.mean(np.log(probs[np.arange(len(y)), y].astype(np.float64)))
    assert sharded[0] == pytest.approx(plain[0], rel=1e-5)
    assert sharded[0] == pytest.approx(manual, rel=1e-4)
    assert sharded[1] == plain[1]
    logits = model.forward(x, logits=True)
    npcnn.set_data_parallel(True)
    np.testing.assert_allclose(model.forward(x, logits=True), logits, rtol=1e-5, atol=1e-6)


def test_shard_reducer_sums_in_order_across_many_calls_and_uneven_shards():
    """Every shard gets the same bits (shard 0 + shard 1 + ...) call after call, whatever the timing."""
    import threading
    import time

    shards, calls = 3, 40
    reducer = parallel.ShardReducer(shards)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((calls, shards, 5)).astype(np.float32)
    delays = rng.random((calls, shards)) * 1e-3
    out = np.zeros((shards, calls, 5), np.float32)

    def work(i):
        reduce = reducer.for_shard(i)
        for c in range(calls):
            time.sleep(delays[c, i])
            out[i, c] = reduce(data[c, i])

    ts = [threading.Thread(target=work, args=(i,)) for i in range(shards)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    expected = (data[:, 0] + data[:, 1]) + data[:, 2]
    for i in range(shards):
        np.testing.assert_array_equal(out[i], expected)


def test_a_failing_shard_breaks_the_reducer_instead_of_hanging():
    import threading

    reducer = parallel.ShardReducer(2)
    with pytest.raises(ValueError, match="boom"):
        def bad():
            raise ValueError("boom")

        def good():
            return reducer.for_shard(1)(np.ones(3))

        parallel.run_shards(lambda f: f(), [(bad,), (good,)], reducer)
    assert isinstance(threading.BrokenBarrierError(), Exception)
