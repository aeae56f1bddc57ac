"""Layers built without their input size, and `Module.lazy_init` (with `pax.from_haiku`, inside
a Stack, and refused inside a JAX transformation)."""

from __future__ import annotations

import warnings

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax


def flatten(x):
    return x.reshape(x.shape[0], -1)


class ConvNet(pax.Module):
    def __init__(self, in_channels: int | None, flat_dim: int | None):
        super().__init__()
        self.conv1 = pax.nn.Conv2D(in_channels, 8, 3, stride=2)
        self.norm = pax.nn.LayerNorm(None if in_channels is None else 8)
        self.conv2 = pax.nn.Conv2D(None if in_channels is None else 8, 4, 3, stride=2)
        self.flatten = pax.nn.Lambda(flatten)
        self.head = pax.nn.Linear(flat_dim, 10)

    def __call__(self, x):
        x = jax.nn.relu(self.norm(self.conv1(x)))
        x = jax.nn.relu(self.conv2(x))
        return self.head(self.flatten(x))


def assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def images(n: int = 4):
    return jax.random.normal(jax.random.PRNGKey(1), (n, 16, 16, 3))


def test_lazy_convnet_matches_the_eager_model_and_trains():
    pax.seed_rng_key(7)
    eager = ConvNet(3, 4 * 4 * 4)
    pax.seed_rng_key(7)
    lazy = ConvNet(None, None)
    assert lazy.head.weight is None and lazy.conv1.weight is None
    x = images()
    model = lazy.lazy_init(x[:1])
    assert lazy.head.weight is None  # the original is unchanged
    assert model.head.in_dim == 64 and model.conv2.in_dim == 8
    assert_same(model, eager)
    np.testing.assert_array_equal(model(x), eager(x))

    labels = jnp.arange(4) % 10

    def loss_fn(params, model, x, y):
        model = model.update(params)
        logp = jax.nn.log_softmax(model(x))
        loss = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
        return loss, (loss, model)

    @jax.jit
    def step(model, x, y):
        grads, (loss, model) = jax.grad(loss_fn, has_aux=True)(model.parameters(), model, x, y)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, model.parameters(), grads)
        return model.update(params), loss

    losses = []
    for _ in range(5):
        model, loss = step(model, x, labels)
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_explicit_keys_give_the_eager_weights():
    key = jax.random.PRNGKey(3)
    eager = pax.nn.Linear(5, 2, rng_key=key)
    lazy = pax.nn.Linear(None, 2, rng_key=key).lazy_init(jnp.ones((1, 5)))
    assert_same(lazy, eager)


def test_lazy_layer_repr_and_registry_before_initialization():
    fc = pax.nn.Linear(None, 3, with_bias=False)
    assert "in_dim=None" in repr(fc)
    assert fc.registry["weight"].name == "PARAMETER"
    assert fc.bias is None and fc.weight is None
    assert jax.tree_util.tree_leaves(fc.parameters()) == []


def test_lazy_init_mixes_native_and_haiku_modules():
    def build():
        pax.seed_rng_key(0)
        return pax.nn.Sequential(pax.nn.Linear(None, 8), jax.nn.relu, pax.from_haiku(hk.Linear)(3))

    x = jnp.ones((2, 5))
    key = jax.random.PRNGKey(4)
    model = build().lazy_init(x, rng_key=key)
    assert model(x).shape == (2, 3)
    again = build().lazy_init(x, rng_key=key)
    assert_same(model, again)
    # hk_init shares the mechanism (eagerly): the same weights for the same keys
    assert_same(build().hk_init(x, rng_key=key), model)
    assert_same(build().hk_init(x, rng_key=key, enable_jit=True), model)
    pax.seed_rng_key(0)
    assert_same(model[0], pax.nn.Linear(5, 8))


def test_lazy_init_of_an_initialized_model_copies_it():
    fc = pax.nn.Linear(2, 3)
    out = fc.lazy_init(jnp.ones((1, 2)))
    assert out is not fc
    assert_same(out, fc)


def test_lazy_init_falls_back_to_an_eager_pass_when_values_are_read():
    class Branchy(pax.Module):
        def __init__(self):
            super().__init__()
            self.fc = pax.nn.Linear(None, 2)

        def __call__(self, x):
            if float(x.sum()) > 0:  # needs a concrete value
                return self.fc(x)
            return self.fc(-x)

    model = Branchy().lazy_init(jnp.ones((1, 4)))
    assert model.fc.weight.shape == (4, 2)


def test_lazy_init_leaves_no_tracer_and_no_pending_change():
    model = pax.nn.Sequential(pax.nn.Linear(None, 4), pax.nn.BatchNorm1D(None))
    model = model.lazy_init(jnp.ones((3, 2)))
    for leaf in jax.tree_util.tree_leaves(model):
        assert not isinstance(leaf, jax.core.Tracer)
    assert model[1].moving_mean.shape == (4,)
    model(jnp.ones((3, 2)))  # a pax operation: would raise on a lost change


def test_calling_an_uninitialized_layer_raises_with_the_fix():
    fc = pax.nn.Linear(None, 3)
    with pytest.raises(RuntimeError, match=r"Linear\(in_dim=None, out_dim=3\) is not initial"):
        fc(jnp.ones((1, 2)))
    with pytest.raises(RuntimeError, match=r"model = model.lazy_init\(example_input\)"):
        jax.jit(lambda m, x: m(x))(fc, jnp.ones((1, 2)))
    cell = pax.nn.LSTM(None, 4)
    with pytest.raises(RuntimeError, match=r"LSTM\(in_dim=None, hidden_dim=4\)"):
        cell(jnp.ones((1, 2)), cell.initial_state(1))


def test_unreached_lazy_layer_is_named_by_key_path():
    class TwoHeads(pax.Module):
        def __init__(self):
            super().__init__()
            self.a = pax.nn.Linear(None, 2)
            self.b = pax.nn.Linear(None, 2)

        def __call__(self, x):
            return self.a(x)

    with pytest.raises(ValueError, match=r"did not call 1 .*\.b \(Linear\(in_dim=None, out_dim"):
        TwoHeads().lazy_init(jnp.ones((1, 3)))


def test_lazy_layer_built_inside_the_forward_pass_is_refused():
    class Builder(pax.Module):
        def __init__(self):
            super().__init__()
            self.fc = pax.nn.Linear(None, 2)

        def __call__(self, x):
            return pax.nn.Linear(None, 2, rng_key=jax.random.PRNGKey(0))(self.fc(x))

    with pytest.raises(RuntimeError, match=r"not part of the model passed to lazy_init"):
        Builder().lazy_init(jnp.ones((1, 3)))


def test_attention_without_in_dim_needs_key_size():
    with pytest.raises(ValueError, match=r"in_dim=None .* needs an explicit key_size"):
        pax.nn.MultiHeadAttention(None, num_heads=2)
    mha = pax.nn.MultiHeadAttention(None, num_heads=2, key_size=4)
    q, kv = jnp.ones((1, 3, 6)), jnp.ones((1, 5, 7))
    mha = mha.lazy_init(q, kv)
    assert (mha.query_proj.in_dim, mha.key_proj.in_dim, mha.value_proj.in_dim) == (6, 7, 7)
    assert mha(q, kv).shape == (1, 3, 8)


@pytest.mark.parametrize(
    "make, shape, channels",
    [
        (lambda d: pax.nn.Conv1D(d, 4, 3, data_format="channels_first"), (2, 6, 5), 6),
        (lambda d: pax.nn.Conv3DTranspose(d, 4, 2), (1, 3, 3, 3, 6), 6),
        (lambda d: pax.nn.GroupNorm(d, groups=3), (2, 4, 6), 6),
        (lambda d: pax.nn.RMSNorm(d), (2, 6), 6),
        (lambda d: pax.nn.BatchNorm2D(d, data_format="channels_first"), (2, 6, 3, 3), 6),
    ],
)
def test_every_sized_layer_accepts_none(make, shape, channels):
    pax.seed_rng_key(5)
    eager = make(channels)
    pax.seed_rng_key(5)
    lazy = make(None).lazy_init(jnp.ones(shape))
    assert_same(lazy, eager)


@pytest.mark.parametrize("make", [pax.nn.GRU, pax.nn.VanillaRNN])
def test_recurrent_cells_accept_none(make):
    pax.seed_rng_key(2)
    eager = make(3, 4)
    pax.seed_rng_key(2)
    lazy = make(None, 4)
    lazy = lazy.lazy_init(jnp.ones((2, 3)), lazy.initial_state(2))
    assert_same(lazy, eager)


def test_lazy_init_runs_the_forward_pass_abstractly():
    seen = []

    def spy(x):
        seen.append(isinstance(x, jax.core.Tracer))
        return x

    model = pax.nn.Sequential(pax.nn.Linear(None, 4), pax.nn.Lambda(spy), pax.nn.Linear(None, 2))
    model = model.lazy_init(jnp.ones((1, 3)))
    assert seen == [True]  # one traced call, nothing computed eagerly
    assert model[2].weight.shape == (4, 2)


# --- lazy_init inside a transformation ------------------------------------------------------


def test_lazy_init_inside_jit_says_initialize_outside():
    model = pax.nn.Linear(None, 3)
    with pytest.raises(
        RuntimeError,
        match=r"lazy_init: called inside a JAX transformation .*uninitialized lazy modules.*"
        r"Fix: initialize once, eagerly.*model = model\.lazy_init\(example_input\)",
    ):
        jax.jit(lambda m, x: m.lazy_init(x))(model, jnp.ones((1, 2)))


def test_lazy_init_inside_eval_shape_names_the_submodule():
    model = pax.nn.Sequential(pax.nn.Linear(2, 2), pax.nn.Linear(None, 3))
    with pytest.raises(RuntimeError, match=r"lazy_init: .*\(at \.modules\[1\]\)"):
        jax.eval_shape(lambda m, x: m.lazy_init(x), model, jnp.ones((1, 2)))


def test_lazy_init_before_jit_works():
    model = pax.nn.Linear(None, 3, rng_key=jax.random.key(0)).lazy_init(jnp.ones((1, 2)))
    eager = pax.nn.Linear(2, 3, rng_key=jax.random.key(0))
    x = jnp.ones((4, 2))
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(model, x), eager(x), rtol=1e-6)
    # an initialized model may call lazy_init inside jit: nothing to initialize
    out = jax.jit(lambda m, x: m.lazy_init(x)(x))(model, x)
    np.testing.assert_allclose(out, eager(x), rtol=1e-6)


def test_lazy_init_inside_jit_with_explicit_key_still_works():
    model = pax.nn.Linear(None, 3, rng_key=jax.random.key(0))
    init = jax.jit(lambda m, x, k: m.lazy_init(x, rng_key=k))
    out = init(model, jnp.ones((1, 2)), jax.random.key(5))
    np.testing.assert_allclose(out.weight, pax.nn.Linear(2, 3, rng_key=jax.random.key(0)).weight)


# --- lazy input sizes inside a Stack ----------------------------------------------------------


def _stack(n=4):
    return pax.nn.Stack(lambda k: pax.nn.Linear(4, 4, rng_key=k), n, rng_key=jax.random.key(0))


def _block(in_dim):
    def make(key):
        k1, k2 = jax.random.split(key)
        return pax.nn.Sequential(
            pax.nn.Linear(in_dim, 8, rng_key=k1),
            jax.nn.relu,
            pax.nn.Linear(in_dim and 8, 4, rng_key=k2),
        )

    return make


def test_lazy_stack_matches_eager_stack():
    key, x = jax.random.key(3), jax.random.normal(jax.random.key(1), (2, 4))
    lazy = pax.nn.Stack(_block(None), 3, rng_key=key).lazy_init(x)
    eager = pax.nn.Stack(_block(4), 3, rng_key=key)
    np.testing.assert_allclose(lazy.stacked.modules[0].weight, eager.stacked.modules[0].weight)
    np.testing.assert_allclose(lazy.stacked.modules[2].weight, eager.stacked.modules[2].weight)
    np.testing.assert_allclose(lazy(x), eager(x), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(lazy, x), eager(x), rtol=1e-5)
    assert jax.tree_util.tree_structure(lazy) == jax.tree_util.tree_structure(eager)


def test_lazy_stack_inside_a_model():
    x = jnp.ones((2, 3))
    key = jax.random.key(0)
    net = pax.nn.Sequential(
        pax.nn.Linear(3, 4, rng_key=key),
        pax.nn.Stack(lambda k: pax.nn.Linear(None, 4, rng_key=k), 2, rng_key=key),
    )
    net = net.lazy_init(x)
    ref = pax.nn.Stack(lambda k: pax.nn.Linear(4, 4, rng_key=k), 2, rng_key=key)
    np.testing.assert_allclose(net.modules[1].stacked.weight, ref.stacked.weight)
    np.testing.assert_allclose(net(x), ref(net.modules[0](x)), rtol=1e-6)


def test_lazy_stack_called_before_lazy_init_says_lazy_init():
    stack = pax.nn.Stack(lambda k: pax.nn.Linear(None, 4, rng_key=k), 2)
    with pytest.raises(
        RuntimeError,
        match=r"Stack\(n=2\) of Linear\(in_dim=None, out_dim=4\) is not initialized.*"
        r"model = model\.lazy_init\(example_input\)",
    ):
        stack(jnp.ones((1, 4)))


def test_eager_stack_has_nothing_pending():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stack = _stack(2)
        assert not stack._lazy_pending()
        out = stack.lazy_init(jnp.ones((1, 4)))
    np.testing.assert_allclose(out.stacked.weight, stack.stacked.weight)
