"""pax.metrics: Mean, Sum, Accuracy and Collection against numpy, under jit, scan, sharding,
shard_map and pmap, through pax.save/pax.load, and their errors."""

import importlib.util
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import pax
from pax.metrics import Accuracy, Collection, Mean, Metric, Sum

# --- numpy references --------------------------------------------------------------------------


def _np_weights(shape, weights, mask):
    w = np.ones(shape)
    for extra in (weights, mask):
        if extra is not None:
            extra = np.asarray(extra, np.float64)
            w = w * extra.reshape(extra.shape + (1,) * (len(shape) - extra.ndim))
    return w


def np_mean(batches):
    total = count = 0.0
    for values, weights, mask in batches:
        w = _np_weights(values.shape, weights, mask)
        total += np.sum(np.where(w != 0, values * w, 0.0))
        count += np.sum(w)
    return total / count


def np_sum(batches):
    return sum(
        np.sum(np.where(w != 0, v * w, 0.0))
        for v, w in ((v, _np_weights(v.shape, wt, m)) for v, wt, m in batches)
    )


def np_accuracy(batches, top_k=1):
    correct = count = 0.0
    for logits, labels, weights, mask in batches:
        top = np.argsort(-logits, axis=-1, kind="stable")[..., :top_k]
        hits = np.any(top == labels[..., None], axis=-1)
        w = _np_weights(labels.shape, weights, mask)
        correct += np.sum(hits * w)
        count += np.sum(w)
    return correct / count


def value_batches(rng, n=4, shape=(6, 3)):
    """Random values, with random weights (every other batch) and masks (every third)."""
    out = []
    for i in range(n):
        values = rng.normal(size=shape).astype(np.float32)
        weights = rng.uniform(0, 2, shape[:1]).astype(np.float32) if i % 2 else None
        mask = rng.random(shape) > 0.3 if i % 3 == 0 else None
        out.append((values, weights, mask))
    return out


def label_batches(rng, n=4, batch=8, classes=5):
    out = []
    for i in range(n):
        logits = rng.normal(size=(batch, classes)).astype(np.float32)
        labels = rng.integers(0, classes, batch).astype(np.int32)
        weights = rng.uniform(0, 2, batch).astype(np.float32) if i % 2 else None
        mask = rng.random(batch) > 0.3 if i % 3 == 0 else None
        out.append((logits, labels, weights, mask))
    return out


def _close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5, atol=1e-6)


# --- values against numpy ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mean_and_sum_match_numpy(seed):
    batches = value_batches(np.random.default_rng(seed))
    mean, total = Mean(), Sum()
    for i, (values, weights, mask) in enumerate(batches, 1):
        _close(mean(values, weights, mask), np_mean(batches[:i]))
        _close(total(values, weights=weights, mask=mask), np_sum(batches[:i]))
    _close(mean.compute(), np_mean(batches))
    _close(total.compute(), np_sum(batches))
    assert mean.total.dtype == mean.count.dtype == total.total.dtype == jnp.float32


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_accuracy_matches_numpy(top_k):
    batches = label_batches(np.random.default_rng(top_k))
    acc = Accuracy(top_k=top_k)
    for i, (logits, labels, weights, mask) in enumerate(batches, 1):
        _close(acc(logits, labels, weights, mask), np_accuracy(batches[:i], top_k))
    _close(acc.compute(), np_accuracy(batches, top_k))


def test_accuracy_from_integer_predictions_and_sequences():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 7, 5)).astype(np.float32)
    labels = rng.integers(0, 5, (4, 7)).astype(np.int32)
    mask = np.arange(7)[None, :] < np.array([7, 3, 5, 1])[:, None]  # padded sequences
    expected = np.sum((logits.argmax(-1) == labels) * mask) / mask.sum()
    _close(Accuracy()(logits, labels, mask=mask), expected)
    _close(Accuracy()(jnp.argmax(logits, -1), labels, mask=mask), expected)
    # a (batch,) weight weighs every step of the example
    weights = np.array([1.0, 0.0, 2.0, 0.5], np.float32)
    w = weights[:, None] * np.ones((4, 7))
    _close(Accuracy()(logits, labels, weights), np.sum((logits.argmax(-1) == labels) * w) / w.sum())


def test_accuracy_ties_and_out_of_range_labels():
    logits = jnp.zeros((3, 4))  # every class tied: the prediction is class 0, as argmax
    _close(Accuracy()(logits, jnp.array([0, 1, -1])), 1 / 3)
    _close(Accuracy(top_k=2)(logits, jnp.array([0, 1, 2])), 2 / 3)


def test_masked_out_entries_add_nothing_even_nan():
    values = jnp.array([1.0, 3.0, jnp.nan, jnp.inf])
    mask = jnp.array([True, True, False, False])
    _close(Mean()(values, mask=mask), 2.0)
    _close(Sum()(values, weights=jnp.array([1.0, 1.0, 0.0, 0.0])), 4.0)


def test_mean_before_any_update_is_nan_and_counts_scalars_once():
    assert np.isnan(Mean().compute())
    assert np.isnan(Accuracy().compute())
    mean = Mean()
    mean(jnp.float32(2.0))
    mean(4.0, weights=3.0)
    _close(mean.compute(), 3.5)
    _close(mean.count, 4.0)


# --- reset, states, modules ---------------------------------------------------------------------


def test_reset_zeroes_in_place_and_returns_the_metric():
    mean = Mean(axis_name="data")
    mean.total, mean.count = jnp.float32(6.0), jnp.float32(4.0)
    fresh = mean.copy().reset()  # a zeroed copy leaves the original alone
    assert type(fresh) is Mean and fresh.axis_name == "data"
    _close(fresh.count, 0.0)
    _close(mean.compute(), 1.5)
    assert mean.reset() is mean  # reset() is in place (and `mean = mean.reset()` still works)
    _close(mean.count, 0.0)
    mean.total, mean.count = jnp.float32(6.0), jnp.float32(4.0)
    assert set(mean.registry) == {"total", "count"}
    assert all(k is pax.Kind.STATE for k in mean.registry.values())
    assert jax.tree_util.tree_leaves(mean.parameters()) == []


def test_metric_subclass_must_define_compute():
    class Empty(Metric):
        pass

    with pytest.raises(NotImplementedError, match="Empty must define compute"):
        Empty().compute()


# --- transformations -----------------------------------------------------------------------------


def test_updates_under_jit_match_eager_and_compile_once():
    batches = value_batches(np.random.default_rng(4))
    traces = []

    @jax.jit
    def step(metrics, values, weights, mask):
        traces.append(1)
        metrics(mean=(values, weights, mask), total=dict(values=values, mask=mask))
        return metrics

    metrics = Collection(mean=Mean(), total=Sum())
    full = [(v, np.ones(v.shape[:1], np.float32) if w is None else w, m) for v, w, m in batches]
    full = [(v, w, np.ones(v.shape, bool) if m is None else m) for v, w, m in full]
    for values, weights, mask in full:
        metrics = step(metrics, values, weights, mask)
    assert len(traces) == 1
    _close(metrics["mean"].compute(), np_mean(full))
    _close(metrics["total"].compute(), np_sum([(v, None, m) for v, _, m in full]))
    # reset and compute work inside a jitted function too
    out = jax.jit(lambda m: (m.compute(), m.reset()))(metrics)
    _close(out[0]["mean"], np_mean(full))
    _close(out[1]["mean"].count, 0.0)


def test_updates_under_scan():
    batches = label_batches(np.random.default_rng(5), n=6)
    stacked = [np.stack([b[i] for b in batches]) for i in (0, 1)]

    def body(acc, batch):
        logits, labels = batch
        return acc, acc(logits, labels)

    acc, running = jax.lax.scan(body, Accuracy(top_k=2), stacked)
    plain = [(b[0], b[1], None, None) for b in batches]
    _close(acc.compute(), np_accuracy(plain, 2))
    _close(running, [np_accuracy(plain[:i], 2) for i in range(1, 7)])


def _mesh():
    assert len(jax.devices()) == 8, "conftest.py sets 8 simulated CPU devices"
    return Mesh(np.array(jax.devices()), ("data",))


def test_a_batch_sharded_over_8_devices_gives_the_single_device_result():
    mesh = _mesh()
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(4, 16, 10)).astype(np.float32)
    labels = rng.integers(0, 10, (4, 16)).astype(np.int32)
    losses = rng.normal(size=(4, 16)).astype(np.float32)
    mask = rng.random((4, 16)) > 0.2

    @jax.jit
    def step(metrics, batch):
        logits, labels, loss, mask = batch
        metrics(acc=dict(predictions=logits, labels=labels, mask=mask), loss=(loss, None, mask))
        return metrics

    def run(shard, replicate):
        metrics = replicate(Collection(acc=Accuracy(), loss=Mean()))
        for batch in zip(logits, labels, losses, mask):
            metrics = step(metrics, shard(batch))
        return metrics

    one = run(lambda b: b, lambda m: m)
    data, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    eight = run(lambda b: jax.device_put(b, data), lambda m: jax.device_put(m, rep))
    assert len(eight["acc"].correct.sharding.device_set) == 8
    assert eight["acc"].correct.sharding.is_fully_replicated
    for name in ("acc", "loss"):
        _close(eight[name].compute(), np.asarray(one[name].compute()))
    expected = np.sum((logits.argmax(-1) == labels) * mask) / mask.sum()
    _close(one["acc"].compute(), expected)


def test_shard_map_and_pmap_reduce_over_the_named_axis():
    mesh = _mesh()
    values = np.random.default_rng(7).normal(size=(16, 3)).astype(np.float32)
    mask = np.arange(16) % 3 != 0

    def update(metric, values, mask):
        metric(values, mask=mask)
        return metric

    sharded = jax.jit(
        jax.shard_map(update, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P())
    )
    mean = sharded(Mean(axis_name="data"), values, mask)
    _close(mean.compute(), values[mask].mean())
    _close(mean.count, mask.sum() * 3)
    # pmap: every replica holds the totals of the global batch
    per_device = jax.pmap(update, axis_name="data", in_axes=(None, 0, 0))
    total = per_device(Sum(axis_name="data"), values.reshape(8, 2, 3), mask.reshape(8, 2))
    _close(total.total, np.full(8, values[mask].sum()))


def test_axis_name_outside_a_mapped_axis_says_how_to_fix_it():
    with pytest.raises(NameError, match=r"Mean: axis_name='data' is not a mapped axis here"):
        Mean(axis_name="data")(jnp.ones(3))
    with pytest.raises(NameError, match=r"jax.shard_map or jax.pmap"):
        jax.jit(lambda m: m(jnp.ones(3)))(Sum(axis_name=("a", "b")))


# --- checkpoints -----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    metrics = Collection(loss=Mean(), acc=Accuracy(top_k=2), n=Sum())
    metrics(loss=jnp.arange(5.0), acc=(jnp.eye(3), jnp.array([0, 2, 2])), n=jnp.ones(7))
    pax.save(tmp_path / "m.npz", metrics)
    like = Collection(loss=Mean(), acc=Accuracy(top_k=2), n=Sum())
    loaded = pax.load(tmp_path / "m.npz", like)
    assert list(loaded) == ["loss", "acc", "n"]
    for name in loaded:
        _close(loaded[name].compute(), np.asarray(metrics[name].compute()))
    loaded(loss=jnp.array([10.0]))  # it keeps accumulating from the loaded totals
    _close(loaded["loss"].compute(), 20 / 6)
    single = pax.load(tmp_path / "m.npz", like)["acc"]
    _close(single.correct, 2.0)


# --- Collection --------------------------------------------------------------------------------


def test_collection_keeps_its_order_and_leaves_unnamed_metrics_alone():
    metrics = Collection(b=Sum(), a=Mean())
    values = jax.jit(lambda m: (m(a=jnp.array([1.0, 3.0])), m))(metrics)
    out, metrics = values
    assert list(metrics) == ["b", "a"] == list(metrics.compute()) and len(metrics) == 2
    assert set(out) == {"a", "b"}  # (a dict returned through jax.jit has sorted keys)
    _close(out["a"], 2.0)
    _close(metrics["b"].total, 0.0)
    nested = Collection(train=Collection(loss=Mean()), test=Collection(loss=Mean()))
    assert nested(test={"loss": jnp.array(2.0)})["test"]["loss"] == 2.0
    assert np.isnan(nested.compute()["train"]["loss"])
    assert jax.tree_util.keystr(jax.tree_util.tree_leaves_with_path(metrics)[0][0]) == (
        ".metrics['a'].total"
    )


# --- errors ------------------------------------------------------------------------------------


def test_argument_errors():
    with pytest.raises(ValueError, match=r"Accuracy: top_k must be a positive int, got 0"):
        Accuracy(top_k=0)
    with pytest.raises(TypeError, match=r"Mean: axis_name must be None.*got 3.*axis_name='batch'"):
        Mean(axis_name=3)
    with pytest.raises(TypeError, match=r"Sum: axis_name must be None.*got \(\)"):
        Sum(axis_name=())
    assert Mean(axis_name=["a", "b"]).axis_name == ("a", "b")


def test_weight_and_mask_shape_errors():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Mean: weights of shape (3,) does not fit the values of shape (4, 2): its axes line "
            "up with the leading axes of the values"
        ),
    ):
        Mean()(jnp.ones((4, 2)), weights=jnp.ones(3))
    with pytest.raises(
        ValueError, match=r"Sum: mask of shape \(4, 2, 1\).*Fix: pass mask of shape \(4,\)"
    ):
        Sum()(jnp.ones((4, 2)), mask=jnp.ones((4, 2, 1), bool))
    with pytest.raises(ValueError, match=r"Accuracy: mask of shape \(5,\) does not fit the labels"):
        Accuracy()(jnp.ones((4, 3)), jnp.zeros(4, jnp.int32), mask=jnp.ones(5, bool))
    # a size-1 axis broadcasts
    _close(Mean()(jnp.arange(6.0).reshape(2, 3), weights=jnp.array([[1.0], [0.0]])), 0.0 + 1.0)


def test_value_errors():
    with pytest.raises(TypeError, match=r"Mean: values must be an array of numbers, got str"):
        Mean()("abc")
    with pytest.raises(TypeError, match=r"Sum: values must hold real numbers, got c64\[2\]"):
        Sum()(jnp.ones(2, jnp.complex64))


def test_accuracy_input_errors():
    acc = Accuracy()
    with pytest.raises(
        TypeError, match=r"Accuracy: labels must be integer class ids, got f32\[4\].*argmax"
    ):
        acc(jnp.ones((4, 3)), jnp.zeros(4))
    with pytest.raises(
        ValueError,
        match=r"Accuracy: predictions of shape \(4, 2, 3\) do not fit labels of shape \(4,\)",
    ):
        acc(jnp.ones((4, 2, 3)), jnp.zeros(4, jnp.int32))
    with pytest.raises(
        TypeError, match=r"Accuracy: predictions of the shape of the labels \(4,\) must be integer"
    ):
        acc(jnp.ones(4), jnp.zeros(4, jnp.int32))
    with pytest.raises(
        ValueError, match=r"Accuracy: top_k=2 needs scores of shape \(4, 'classes'\)"
    ):
        Accuracy(top_k=2)(jnp.ones(4, jnp.int32), jnp.zeros(4, jnp.int32))
    with pytest.raises(
        ValueError, match=r"Accuracy: top_k=5 is more than the 3 classes.*top_k <= 3"
    ):
        Accuracy(top_k=5)(jnp.ones((4, 3)), jnp.zeros(4, jnp.int32))
    _close(acc.count, 0.0)  # a refused update changes nothing


def test_collection_errors():
    with pytest.raises(
        ValueError, match=r"Collection: no metrics given.*loss=pax.metrics.Mean\(\)"
    ):
        Collection()
    with pytest.raises(
        TypeError,
        match=r"Collection: metric 'loss' must be a pax.metrics.Metric or Collection, got f32\[\]",
    ):
        Collection(loss=jnp.zeros(()))
    metrics = Collection(loss=Mean(), acc=Accuracy())
    with pytest.raises(
        ValueError, match=r"Collection: no metric named 'los'; it has 'loss', 'acc'"
    ):
        metrics(los=jnp.ones(2))
    with pytest.raises(KeyError, match=r"Collection: no metric named 'x'; it has 'loss', 'acc'"):
        metrics["x"]


# --- the examples use them -------------------------------------------------------------------------


def _load_example(name):
    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"pax_metrics_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_char_rnn_progress_bar_shows_the_running_mean_loss(tmp_path, capsys):
    char_rnn = _load_example("char_rnn")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 40)
    argv = ["--data", str(corpus), "--batch-size", "8", "--seq-len", "8", "--embed-dim", "8"]
    argv += ["--hidden-dim", "16", "--steps", "20", "--sample-every", "0", "--checkpoint", ""]
    argv += ["--sample-length", "4"]
    result = char_rnn.run(char_rnn.parse_args(argv))
    shown = re.findall(r"loss=([0-9.]+)", capsys.readouterr().err)
    assert shown, "the progress bar shows no loss"
    assert float(shown[-1]) == pytest.approx(np.mean(result["losses"]), abs=1e-3)
