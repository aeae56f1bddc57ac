"""Metrics tracked inside the jitted training step of `build_update_fn`: held by the model,
updated in loss_fn, carried through the compiled (and donated) step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pax


class Classifier(pax.Module):
    def __init__(self, key):
        super().__init__()
        self.net = pax.nn.Linear(4, 3, rng_key=key)
        self.train_loss = pax.metrics.Mean()
        self.train_accuracy = pax.metrics.Accuracy()

    def __call__(self, x):
        return self.net(x)


def loss_fn(params, model, inputs):
    model = model.update(params)
    x, y = inputs
    logits = model(x)
    loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    model.train_loss(loss)
    model.train_accuracy(logits, y)
    return loss, (loss, model)


def _batches(n=3):
    rng = np.random.default_rng(0)
    return [
        (rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8).astype(np.int32))
        for _ in range(n)
    ]


def _reference(key, batches, lr=0.1):
    """The same training with numpy: losses and accuracies at each step, before its update."""
    w = np.asarray(pax.nn.Linear(4, 3, rng_key=key).weight, np.float64)
    b = np.zeros(3)
    losses, hits = [], []
    for x, y in batches:
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        losses.append(-np.log(p[np.arange(len(y)), y]).mean())
        hits.extend(logits.argmax(1) == y)
        d = p.copy()
        d[np.arange(len(y)), y] -= 1
        d /= len(y)
        w, b = w - lr * x.T @ d, b - lr * d.sum(0)
    return np.mean(losses), np.mean(hits), losses


@pytest.mark.parametrize("donate", [False, True])
def test_metrics_in_the_model_are_carried_through_the_jitted_step(donate):
    key = jax.random.key(0)
    model = Classifier(key)
    opt = pax.optim.from_optax(optax.sgd(0.1))(model.parameters())
    update_fn = pax.utils.build_update_fn(loss_fn, donate=donate)  # jit=True by default
    batches = _batches()
    want_loss, want_acc, step_losses = _reference(key, batches)
    for (x, y), want in zip(batches, step_losses):
        loss, model, opt = update_fn(model, opt, (x, y))
        np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(model.train_loss.compute(), want_loss, rtol=1e-5)
    np.testing.assert_allclose(model.train_accuracy.compute(), want_acc, rtol=1e-6)
    model.train_loss.reset()  # a new epoch
    assert np.isnan(model.train_loss.compute())


def test_metric_outside_the_model_names_it_and_the_fix():
    train_loss = pax.metrics.Mean()

    def loss_fn_with_global(params, model, inputs):
        model = model.update(params)
        x, y = inputs
        loss = jnp.mean((model(x) - y) ** 2)
        train_loss(loss)  # a metric held outside the model: its update is lost
        return loss, (loss, model)

    model = pax.nn.Linear(4, 1)
    opt = pax.optim.from_optax(optax.sgd(0.1))(model.parameters())
    update_fn = pax.utils.build_update_fn(loss_fn_with_global)
    x, y = jnp.ones((8, 4)), jnp.ones((8, 1))
    with pytest.raises(
        RuntimeError,
        match=r"update_fn: loss_fn changed Mean\.total, which is in neither the model nor the "
        r"optimizer.*Fix: hold it in the model.*model\.train_loss\(loss\)",
    ):
        update_fn(model, opt, (x, y))


def test_step_without_metrics_is_unchanged():
    def mse(params, model, inputs):
        model = model.update(params)
        x, y = inputs
        loss = jnp.mean((model(x) - y) ** 2)
        return loss, (loss, model)

    model = pax.nn.Linear(1, 1, rng_key=jax.random.key(0))
    w0, b0 = float(model.weight[0, 0]), float(model.bias[0])
    opt = pax.optim.from_optax(optax.sgd(0.1))(model.parameters())
    update_fn = pax.utils.build_update_fn(mse, donate=True)
    x = jnp.ones((4, 1))
    loss, model, opt = update_fn(model, opt, (x, 2 * x))
    np.testing.assert_allclose(loss, (w0 + b0 - 2) ** 2, rtol=1e-6)
