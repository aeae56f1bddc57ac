"""pax.metrics guards: binary heads, one-hot labels, bad weights, reset in place, mapped axes
without axis_name, `update` given values, and metrics inside a jitted training step.

Each mistake has a test of its error (or warning) and a test of the correct program next to it
that must not raise or warn; numbers are checked against numpy."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import pax
from pax.metrics import Accuracy, Collection, Mean, Metric, Sum


def _close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5, atol=1e-6)


def _jit_call(metric, *args):
    """Calls `metric` under jax.jit (returning it, as a changed module must be)."""
    value, _ = jax.jit(lambda m, *a: (m(*a), m))(metric, *args)
    return value


def _np_weighted(hits, weights=None, mask=None):
    w = np.ones(hits.shape)
    for extra in (weights, mask):
        if extra is not None:
            w = w * np.asarray(extra, np.float64)
    return np.sum(hits * w) / np.sum(w)


# --- 1. a binary head: one score per example ----------------------------------------------------


@pytest.mark.parametrize("trailing_axis", [True, False])
def test_binary_head_of_logits_with_threshold_matches_numpy(trailing_axis):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16,)).astype(np.float32)
    labels = rng.integers(0, 2, 16).astype(np.int32)
    weights = rng.uniform(0, 2, 16).astype(np.float32)
    expected = _np_weighted((logits > 0).astype(np.int32) == labels, weights)
    head = logits[:, None] if trailing_axis else logits
    _close(Accuracy(threshold=0.0)(head, labels, weights), expected)


def test_binary_head_of_probabilities_with_threshold_matches_numpy():
    rng = np.random.default_rng(1)
    probabilities = rng.uniform(size=(12, 1)).astype(np.float32)
    labels = rng.random(12) > 0.5  # boolean labels are 0/1 class ids
    mask = np.arange(12) < 9
    expected = _np_weighted((probabilities[:, 0] > 0.5) == labels, mask=mask)
    _close(Accuracy(threshold=0.5)(probabilities, labels, mask=mask), expected)
    # under jit and with sequence labels (batch, time) + a trailing score axis
    seq = rng.normal(size=(3, 5, 1)).astype(np.float32)
    seq_labels = rng.integers(0, 2, (3, 5)).astype(np.int32)
    got = _jit_call(Accuracy(threshold=0.0), seq, seq_labels)
    _close(got, np.mean((seq[..., 0] > 0) == seq_labels))


def test_binary_head_without_threshold_is_refused():
    logits = jnp.array([[1.0], [2.0], [-1.0], [3.0]])  # the truth is 1.0; argmax said 0.25
    acc = Accuracy()
    with pytest.raises(
        ValueError,
        match=r"Accuracy: predictions f32\[4,1\] hold one score per example \(a binary head\)"
        r".*Fix: .*Accuracy\(threshold=0.0\) for logits .*Accuracy\(threshold=0.5\)",
    ):
        acc(logits, jnp.array([1, 1, 0, 1]))
    with pytest.raises(TypeError, match=r"binary head\) build Accuracy\(threshold=0.0\)"):
        acc(logits[:, 0], jnp.array([1, 1, 0, 1]))
    _close(acc.count, 0.0)  # a refused update changes nothing


def test_two_class_scores_need_no_threshold():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(10, 2)).astype(np.float32)
    labels = rng.integers(0, 2, 10).astype(np.int32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _close(Accuracy()(logits, labels), np.mean(logits.argmax(-1) == labels))


def test_threshold_argument_errors():
    for bad in ("0.5", True, float("nan"), jnp.array(0.5)):
        with pytest.raises(
            TypeError, match=r"Accuracy: threshold must be None or a finite number.*threshold=0.0"
        ):
            Accuracy(threshold=bad)
    with pytest.raises(ValueError, match=r"Accuracy: top_k=2 with threshold=0.0.*Fix: Accuracy"):
        Accuracy(top_k=2, threshold=0.0)
    with pytest.raises(ValueError, match=r"threshold=0.5 with one_hot=True"):
        Accuracy(threshold=0.5, one_hot=True)
    with pytest.raises(
        ValueError,
        match=r"Accuracy: threshold=0.0 reads one score per label, got predictions "
        r"f32\[4,3\].*build Accuracy\(\) without threshold",
    ):
        Accuracy(threshold=0.0)(jnp.ones((4, 3)), jnp.zeros(4, jnp.int32))
    assert Accuracy(threshold=-1).threshold == -1.0  # any finite number (a logit margin)


# --- 2. one-hot labels ----------------------------------------------------------------------------


def test_one_hot_predictions_and_labels_are_compared_per_example():
    rng = np.random.default_rng(3)
    ids, truth = rng.integers(0, 4, 9), rng.integers(0, 4, 9)
    predictions, labels = np.eye(4, dtype=np.int32)[ids], np.eye(4, dtype=np.int32)[truth]
    _close(Accuracy(one_hot=True)(predictions, labels), np.mean(ids == truth))
    # scores against one-hot labels (int or float), with top_k, weights and under jit
    logits = rng.normal(size=(9, 4)).astype(np.float32)
    weights = rng.uniform(0, 1, 9).astype(np.float32)
    top2 = np.argsort(-logits, -1, kind="stable")[:, :2]
    expected = _np_weighted(np.any(top2 == truth[:, None], -1), weights)
    got = _jit_call(Accuracy(2, one_hot=True), logits, labels * 1.0, weights)
    _close(got, expected)
    # class ids against one-hot labels
    _close(Accuracy(one_hot=True)(ids, labels), np.mean(ids == truth))


def test_one_hot_errors():
    with pytest.raises(TypeError, match=r"Accuracy: one_hot must be a bool.*one_hot=True"):
        Accuracy(one_hot="yes")
    with pytest.raises(
        ValueError,
        match=r"Accuracy: one_hot=True needs predictions of the shape of the one-hot labels "
        r"\(4,\) \(scores\) or \(\) \(class ids\), got f32\[4,3\]",
    ):
        Accuracy(one_hot=True)(jnp.ones((4, 3)), jnp.zeros(4, jnp.int32))
    with pytest.raises(
        ValueError, match=r"Accuracy: one_hot=True needs labels with one entry per class.*i32\[\]"
    ):
        Accuracy(one_hot=True)(jnp.ones(3), jnp.zeros((), jnp.int32))
    with pytest.raises(
        TypeError, match=r"labels must be integer class ids.*Accuracy\(one_hot=True"
    ):
        Accuracy()(jnp.ones((4, 3)), jax.nn.one_hot(jnp.arange(4) % 3, 3))


def test_integer_sequence_ids_are_still_compared_entry_by_entry():
    predictions = jnp.array([[1, 2, 3], [0, 0, 1]])
    labels = jnp.array([[1, 2, 0], [0, 1, 1]])
    _close(Accuracy()(predictions, labels), np.mean(np.asarray(predictions == labels)))


# --- 3. weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [lambda: Mean(), lambda: Sum(), lambda: Accuracy()], ids=["Mean", "Sum", "Accuracy"]
)
def test_negative_or_non_finite_weights_are_refused(make):
    metric = make()
    args = (
        (jnp.ones((3, 2)), jnp.zeros(3, jnp.int32))
        if isinstance(metric, Accuracy)
        else (jnp.ones(3),)
    )
    name = type(metric).__name__
    for bad, shown in ((-1.0, r"-1\.0"), (np.nan, "nan"), (np.inf, "inf")):
        weights = np.array([1.0, bad, 2.0], np.float32)
        with pytest.raises(
            ValueError,
            match=rf"{name}: weights must be finite and non-negative, got {shown} at index "
            rf"\(1,\) of f32\[3\]. Fix: pass weights >= 0",
        ):
            metric(*args, weights=weights)
    with pytest.raises(ValueError, match=rf"{name}: weights of shape \(2,\) does not fit"):
        metric(*args, weights=jnp.ones(2))
    with pytest.raises(TypeError, match=rf"{name}: weights must be an array of numbers, got str"):
        metric(*args, weights="abc")
    with pytest.raises(TypeError, match=rf"{name}: weights must hold real numbers, got c64\[3\]"):
        metric(*args, weights=jnp.ones(3, jnp.complex64))
    with pytest.raises(TypeError, match=rf"{name}: mask must be an array of numbers, got str"):
        metric(*args, mask="abc")
    with pytest.raises(TypeError, match=rf"{name}: mask must hold real numbers, got c64\[3\]"):
        metric(*args, mask=jnp.ones(3, jnp.complex64))
    _close(sum(jax.tree_util.tree_leaves(metric)), 0.0)  # refused updates change nothing


def test_negative_weights_under_jit_make_the_metric_nan():
    # the values are unknown while tracing: the metric cannot raise, so it does not lie either
    mean = jax.jit(lambda m, x, w: (m(x, w), m)[1])(Mean(), jnp.ones(3), jnp.array([1.0, -1, 1]))
    assert np.isnan(mean.compute())


def test_valid_weights_are_accepted():
    values = np.array([1.0, 2.0, 4.0], np.float32)
    weights = np.array([0.0, 1.0, 3.0], np.float32)  # zero is fine, and so are numpy and bools
    expected = np.sum(values * weights) / np.sum(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _close(Mean()(values, weights), expected)
        _close(_jit_call(Mean(), values, weights), expected)
        _close(Sum()(values, weights=np.array([True, False, True])), 5.0)
        masked_nan = np.array([1.0, np.nan, 2.0], np.float32)
        _close(Mean()(values, mask=~np.isnan(masked_nan)), 2.5)


# --- 4. reset in place ----------------------------------------------------------------------------


class _Pair(Metric):
    """A custom metric holding another metric."""

    def __init__(self):
        super().__init__()
        self.inner = Sum()
        self.register_state("n", jnp.zeros((), jnp.float32))

    def __call__(self, values):
        self.inner(values)
        self.accumulate(n=jnp.size(values))
        return self.compute()

    def compute(self):
        return self.inner.compute() / self.n


def test_reset_as_a_statement_zeroes_every_metric_in_place():
    logits, labels = jnp.eye(3), jnp.array([0, 1, 1])
    metrics = [Mean(), Sum(), Accuracy(), _Pair()]
    inputs = [(jnp.ones(3),), (jnp.ones(3),), (logits, labels), (jnp.ones(3),)]
    for metric, args in zip(metrics, inputs):
        metric(*args)
        metric.reset()  # the torchmetrics habit: a statement
        assert all(float(x) == 0.0 for x in jax.tree_util.tree_leaves(metric)), metric
        _close(metric(*args), np.asarray(type(metric)()(*args)))  # accumulates afresh
    collection = Collection(loss=Mean(), inner=Collection(acc=Accuracy()))
    loss = collection["loss"]
    collection(loss=jnp.ones(2), inner={"acc": (logits, labels)})
    assert collection.reset() is collection
    assert float(loss.count) == 0.0 and float(collection["inner"]["acc"].count) == 0.0


def test_reset_returns_the_metric_and_copy_reset_keeps_the_original():
    mean = Mean()
    mean(jnp.array([1.0, 3.0]))
    fresh = mean.copy().reset()
    _close(fresh.count, 0.0)
    _close(mean.compute(), 2.0)
    mean = mean.reset()  # the functional habit still works
    _close(mean.count, 0.0)

    @jax.jit
    def epoch_end(metrics):
        values = metrics.compute()
        metrics.reset()
        return values, metrics

    metrics = Collection(loss=Mean())
    metrics(loss=jnp.array([2.0, 4.0]))
    values, metrics = epoch_end(metrics)
    _close(values["loss"], 3.0)
    _close(metrics["loss"].count, 0.0)


# --- 5. named mapped axes without axis_name ------------------------------------------------------


def _mesh():
    return Mesh(np.array(jax.devices()), ("data",))


def _update(metric, values):
    metric(values)
    return metric


UNREDUCED = r"Mean: updated inside jax.shard_map / jax.pmap over the mapped axes {} without "
UNREDUCED += r"axis_name: each device adds only its own share.*Fix: pax.metrics.Mean\(\.\.\., "
UNREDUCED += r"axis_name={}\)"


def test_shard_map_without_axis_name_warns():
    values = jnp.arange(16.0)
    sharded = jax.shard_map(
        _update, mesh=_mesh(), in_specs=(P(), P("data")), out_specs=P(), check_vma=False
    )
    with pytest.warns(UserWarning, match=UNREDUCED.format(r"\('data',\)", "'data'")):
        mean = jax.jit(sharded)(Mean(), values)
    _close(mean.compute(), 0.5)  # device 0's mean, not 7.5: what the warning is about
    checked = jax.shard_map(_update, mesh=_mesh(), in_specs=(P(), P("data")), out_specs=P())
    with pytest.warns(UserWarning, match=UNREDUCED.format(r"\('data',\)", "'data'")):
        with pytest.raises(ValueError, match="out_specs"):  # and then JAX's own error
            jax.jit(checked)(Mean(), values)


def test_pmap_without_axis_name_warns():
    values = jnp.arange(16.0).reshape(8, 2)
    with pytest.warns(UserWarning, match=UNREDUCED.format(r"\('data',\)", "'data'")):
        jax.pmap(_update, axis_name="data", in_axes=(None, 0))(Mean(), values)
    with pytest.warns(
        UserWarning, match=r"\(unnamed pmap axis\).*jax.pmap\(\.\.\., axis_name='batch'\)"
    ):
        jax.pmap(_update, in_axes=(None, 0))(Mean(), values)


def test_named_vmap_without_axis_name_warns():
    with pytest.warns(UserWarning, match=UNREDUCED.format(r"\('b',\)", "'b'")):
        jax.vmap(lambda m, x: (m(x), m), in_axes=(None, 0), axis_name="b")(Mean(), jnp.ones((4, 2)))


def test_no_warning_with_axis_name_or_without_named_axes():
    values = jnp.arange(16.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for check_vma in (True, False):
            sharded = jax.shard_map(
                _update,
                mesh=_mesh(),
                in_specs=(P(), P("data")),
                out_specs=P(),
                check_vma=check_vma,
            )
            _close(jax.jit(sharded)(Mean(axis_name="data"), values).compute(), 7.5)
        # replicated values inside shard_map: every device adds the same, nothing to sum
        same = jax.shard_map(_update, mesh=_mesh(), in_specs=(P(), P()), out_specs=P())
        _close(jax.jit(same)(Mean(), values).compute(), 7.5)
        total = jax.pmap(_update, axis_name="data", in_axes=(None, 0))(
            Sum(axis_name="data"), values.reshape(8, 2)
        )
        _close(total.total, np.full(8, 120.0))
        _close(jax.jit(_update)(Mean(), values).compute(), 7.5)
        per_example, _ = jax.vmap(lambda m, x: (m(x), m), in_axes=(None, 0))(
            Mean(), values.reshape(8, 2)
        )
        _close(per_example, values.reshape(8, 2).mean(1))


# --- 6. update() given a metric's inputs ------------------------------------------------------


def test_update_with_values_says_to_call_the_metric():
    x = jnp.ones(3)
    with pytest.raises(
        TypeError,
        match=r"Mean.update got f32\[3\]: `update` is pax.Module's functional view.*does not add "
        r"values to the metric. Fix: call the metric, `value = mean\(values\)`",
    ):
        Mean().update(x)
    with pytest.raises(
        TypeError,
        match=r"Accuracy.update got keyword arguments predictions=f32\[3,3\], "
        r"labels=i32\[3\].*`value = accuracy\(predictions=\.\.\., labels=\.\.\.\)`",
    ):
        Accuracy().update(predictions=jnp.eye(3), labels=jnp.arange(3))
    with pytest.raises(TypeError, match=r"Accuracy.update got tuple"):
        Accuracy().update((jnp.eye(3), jnp.arange(3)))
    with pytest.raises(TypeError, match=r"Sum.update got no tree"):
        Sum().update()
    with pytest.raises(
        TypeError,
        match=r"Collection.update got keyword arguments loss=f32\[3\].*"
        r"`value = collection\(loss=\.\.\.\)`",
    ):
        Collection(loss=Mean()).update(loss=x)


def test_update_with_a_tree_of_the_metric_still_merges():
    total = Sum()
    total(jnp.ones(3))
    doubled = jax.tree_util.tree_map(lambda v: 2 * v, total.states())
    _close(total.update(doubled).compute(), 6.0)
    _close(total.compute(), 3.0)  # update returns a copy
    _close(total.update(total.parameters()).compute(), 3.0)  # no parameters: unchanged
    metrics = Collection(loss=Mean())
    metrics(loss=jnp.array([1.0, 3.0]))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, metrics.states())
    _close(metrics.update(zeros)["loss"].count, 0.0)
    with pytest.raises(ValueError, match=r"Sum.update: the tree to merge has a different"):
        total.update(Mean())  # a module of another structure: the core's own error


# --- 7. metrics inside a jitted training step --------------------------------------------------


def _data():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 8, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32))[..., None]
    return x, y


def test_metric_passed_to_and_returned_from_a_jitted_step():
    traces = []

    @jax.jit
    def step(model, metric, x, y):
        traces.append(1)

        def loss_fn(params):
            return jnp.mean((model.update(params)(x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(model.parameters())
        model = model.update(
            jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, model.parameters(), grads)
        )
        metric(loss)
        return model, metric, loss

    model, metric, losses = pax.nn.Linear(3, 1, rng_key=jax.random.PRNGKey(0)), Mean(), []
    for x, y in zip(*_data()):
        model, metric, loss = step(model, metric, x, y)
        losses.append(float(loss))
    assert len(traces) == 1
    _close(metric.compute(), np.mean(losses))
    _close(metric.count, 5.0)


def test_metrics_with_build_update_fn_inside_your_own_jit():
    def loss_fn(params, model, inputs):
        model = model.update(params)
        x, y = inputs
        loss = jnp.mean((model(x) - y) ** 2)
        return loss, (loss, model)

    update_fn = pax.utils.build_update_fn(loss_fn, jit=False)

    @jax.jit
    def step(model, optimizer, metrics, inputs):
        loss, model, optimizer = update_fn(model, optimizer, inputs)
        metrics(loss=loss, n=(jnp.ones(inputs[0].shape[0]),))
        return model, optimizer, metrics, loss

    model = pax.nn.Linear(3, 1, rng_key=jax.random.PRNGKey(1))
    optimizer = pax.optim.from_optax(optax.sgd(0.1))(model.parameters())
    metrics, losses = Collection(loss=Mean(), n=Sum()), []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for inputs in zip(*_data()):
            model, optimizer, metrics, loss = step(model, optimizer, metrics, inputs)
            losses.append(float(loss))
    _close(metrics["loss"].compute(), np.mean(losses))
    _close(metrics["n"].compute(), 40.0)


# --- sweep: arguments that are None, strings, arrays ------------------------------------------


def test_none_and_odd_arguments_get_clear_errors():
    with pytest.raises(TypeError, match=r"Mean: values must be an array of numbers, got None"):
        Mean()(None)
    with pytest.raises(TypeError, match=r"Accuracy: predictions must be an array of numbers"):
        Accuracy()(None, jnp.zeros(3, jnp.int32))
    with pytest.raises(
        TypeError,
        match=r"Accuracy: labels must be an array of numbers, got None. Fix: .*integer class ids",
    ):
        Accuracy()(jnp.ones((3, 2)), None)
    with pytest.raises(TypeError, match=r"Sum: values must be an array of numbers, got None"):
        Collection(n=Sum())(n=None)
    with pytest.raises(TypeError, match=r"Mean: axis_name must be None.*got ''"):
        Mean(axis_name="")
    with pytest.raises(TypeError, match=r"Sum: axis_name must be None.*got f64\[2,2\]"):
        Sum(axis_name=np.ones((2, 2)))
    with pytest.raises(
        ValueError,
        match=re.escape("Accuracy: top_k must be a positive int, got True. Fix: top_k=1"),
    ):
        Accuracy(top_k=True)
    with pytest.raises(ValueError, match=r"Accuracy: top_k must be a positive int, got f64\[2\]"):
        Accuracy(top_k=np.ones(2))


def test_well_formed_arguments_pass_the_sweep():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Mean(axis_name=("a", "b")).axis_name == ("a", "b")
        assert Accuracy(top_k=np.int64(2)).top_k == 2
        _close(Accuracy()(jnp.array([[0.1, 0.9]]), np.array([True])), 1.0)  # boolean ids
        _close(Mean()(-3.0), -3.0)  # negative values are values


def test_a_metric_inside_the_model_through_the_jitted_build_update_fn():
    class Regressor(pax.Module):
        def __init__(self):
            super().__init__()
            self.net = pax.nn.Linear(3, 1, rng_key=jax.random.PRNGKey(2))
            self.train_loss = Mean()  # a state of the model: returned with it by the step

        def __call__(self, x):
            return self.net(x)

    def loss_fn(params, model, inputs):
        model = model.update(params)
        x, y = inputs
        loss = jnp.mean((model(x) - y) ** 2)
        model.train_loss(loss)
        return loss, (loss, model)

    update_fn = pax.utils.build_update_fn(loss_fn)  # jit=True
    model = Regressor()
    optimizer = pax.optim.from_optax(optax.sgd(0.1))(model.parameters())
    losses = []
    for inputs in zip(*_data()):
        loss, model, optimizer = update_fn(model, optimizer, inputs)
        losses.append(float(loss))
    _close(model.train_loss.compute(), np.mean(losses))
    assert jax.tree_util.tree_leaves(model.train_loss.parameters()) == []  # never trained
    model.train_loss.reset()
    _close(model.train_loss.count, 0.0)
