"""Layers with state: BatchNorm across replicas, Dropout keys (and masks under named axes),
EMA, dynamic_unroll write-back."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pax
from pax import nn


def _x(*shape, seed=0):
    """A standard normal test input (numpy: no compilation per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# --- BatchNorm --------------------------------------------------------------------------------


def test_cross_replica_batch_norm_equals_global_batch_norm():
    """8 replicas with cross_replica_axis normalize as one BatchNorm over the whole batch."""
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = nn.BatchNorm(3, decay=0.5, cross_replica_axis="batch")
    sharded.scale, sharded.offset = _x(3, seed=1), _x(3, seed=2)
    single = nn.BatchNorm(3, decay=0.5)
    single.scale, single.offset = sharded.scale, sharded.offset

    @jax.jit
    def step(model, x):
        def local(model, x):
            return model(x), model

        return jax.shard_map(
            local, mesh=mesh, in_specs=(P(), P("batch")), out_specs=(P("batch"), P())
        )(model, x)

    for i in range(2):
        x = _x(32, 5, 3, seed=10 + i) * (i + 1) + i
        y_sharded, sharded = step(sharded, x)
        y_single = single(x)
        np.testing.assert_allclose(y_sharded, y_single, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sharded.moving_mean, single.moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sharded.moving_var, single.moving_var, rtol=1e-5, atol=1e-6)
    # without the axis each replica would only see its own statistics
    local = nn.BatchNorm(3)
    local.scale, local.offset = sharded.scale, sharded.offset
    assert not np.allclose(local(x[:4]), y_single[:4], atol=1e-3)


def test_batch_norm_updates_moving_stats_only_in_training():
    bn = nn.BatchNorm(2)
    np.testing.assert_array_equal(bn.moving_mean, jnp.zeros(2))
    np.testing.assert_array_equal(bn.moving_var, jnp.ones(2))
    x = _x(16, 2) * 3 + 5
    bn(x)
    np.testing.assert_allclose(bn.moving_mean, x.mean(0), rtol=1e-5)  # zero-debiased: exact
    np.testing.assert_allclose(bn.moving_var, x.var(0), rtol=1e-4)
    frozen = bn.eval()
    before = frozen.states()
    frozen(_x(16, 2, seed=3))
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(frozen.states())):
        np.testing.assert_array_equal(a, b)


# --- Dropout ----------------------------------------------------------------------------------


def test_dropout_advances_its_key_inside_jit():
    net = nn.Sequential(nn.Linear(4, 64), nn.Dropout(0.5))
    step = jax.jit(lambda m, x: (m(x), m))
    x = jnp.ones((2, 4))
    y1, net = step(net, x)
    y2, net = step(net, x)
    assert not np.array_equal(y1 == 0, y2 == 0)  # a new mask each call
    key = net.modules[1].rng_key
    y3 = net.eval()(x)
    np.testing.assert_array_equal(net.eval().modules[1].rng_key, key)
    np.testing.assert_allclose(y3, net.modules[0](x), rtol=1e-6)  # identity in eval mode


def test_dropout_keep_fraction_and_scaling():
    drop = nn.Dropout(0.25)
    y = drop(jnp.ones((100_000,)))
    kept = y != 0
    assert abs(float(kept.mean()) - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(nn.Dropout(0.0)(jnp.arange(3.0)), jnp.arange(3.0))


# --- dropout masks differ per device / shard / example under named axes --------------------


def _old_mask(key, rate, shape):
    """The mask Dropout drew before named axes existed (and still draws without them)."""
    _, sub = jax.random.split(key)
    return jax.random.bernoulli(sub, 1.0 - rate, shape=shape)


def _mesh():
    assert jax.device_count() == 8
    return jax.make_mesh((8,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))


def _distinct_rows(mask):
    rows = {tuple(np.asarray(r).tolist()) for r in mask}
    return len(rows)


def test_dropout_mask_under_jit_with_named_sharding_is_unchanged(key):
    x = jax.device_put(jnp.ones((8, 64)), NamedSharding(_mesh(), P("batch")))
    drop = nn.Dropout(0.5, rng_key=key)
    y, drop = jax.jit(lambda m, x: (m(x), m))(drop, x)
    np.testing.assert_array_equal(y != 0, _old_mask(key, 0.5, (8, 64)))
    np.testing.assert_array_equal(drop.rng_key, jax.random.split(key)[0])


def test_dropout_masks_differ_per_shard_under_shard_map(key):
    mesh = _mesh()

    @jax.jit
    def step(model, x):
        def local(model, x):
            return model(x), model

        return jax.shard_map(
            local, mesh=mesh, in_specs=(P(), P("batch")), out_specs=(P("batch"), P())
        )(model, x)

    x = jnp.ones((8, 256))
    y, drop = step(nn.Dropout(0.5, axis_name="batch", rng_key=key), x)
    assert _distinct_rows(y != 0) == 8
    # the key stays replicated (out_specs=P()) and advances exactly as without the axis
    np.testing.assert_array_equal(drop.rng_key, jax.random.split(key)[0])
    # reproducible from the seed
    y2, _ = step(nn.Dropout(0.5, axis_name="batch", rng_key=key), x)
    np.testing.assert_array_equal(y, y2)
    # about half of the entries are kept on every shard
    assert 0.4 < float((y != 0).mean()) < 0.6


def test_dropout_masks_differ_per_device_under_pmap(key):
    drop = nn.Dropout(0.5, axis_name="i", rng_key=key)
    y, new = jax.pmap(lambda m, x: (m(x), m), axis_name="i", in_axes=(None, 0), out_axes=(0, None))(
        drop, jnp.ones((8, 256))
    )
    assert _distinct_rows(y != 0) == 8
    np.testing.assert_array_equal(new.rng_key, jax.random.split(key)[0])


def test_dropout_masks_differ_per_example_under_vmap_with_axis_name(key):
    drop = nn.Dropout(0.5, axis_name=("batch",), rng_key=key)
    f = jax.vmap(lambda m, x: (m(x), m), in_axes=(None, 0), out_axes=(0, None), axis_name="batch")
    y, new = jax.jit(f)(drop, jnp.ones((8, 256)))
    assert _distinct_rows(y != 0) == 8
    np.testing.assert_array_equal(new.rng_key, jax.random.split(key)[0])


def test_dropout_with_a_shared_key_under_vmap_warns(key):
    drop = nn.Dropout(0.5, rng_key=key)
    f = jax.vmap(lambda m, x: (m(x), m), in_axes=(None, 0), out_axes=(0, None))
    with pytest.warns(UserWarning, match=r"Dropout.*same mask.*axis_name='batch'"):
        f(drop, jnp.ones((4, 16)))
    # one key per example: independent masks, no warning
    keys = jax.random.split(key, 4)
    batched = jax.vmap(lambda k: nn.Dropout(0.5, rng_key=k))(keys)
    y, batched = jax.vmap(lambda m, x: (m(x), m))(batched, jnp.ones((4, 256)))
    assert _distinct_rows(y != 0) == 4


def test_dropout_inside_shard_map_without_axis_name_warns(key):
    mesh = _mesh()

    def local(model, x):
        return model(x), model

    specs = dict(in_specs=(P(), P("batch")), out_specs=(P("batch"), P()))
    f = jax.shard_map(local, mesh=mesh, **specs)
    with pytest.warns(UserWarning, match=r"Dropout.*same mask.*axis_name='batch'"):
        f(nn.Dropout(0.5, rng_key=key), jnp.ones((8, 16)))


def test_dropout_axis_name_not_bound_raises():
    drop = nn.Dropout(0.5, axis_name="batch")
    with pytest.raises(
        ValueError, match=r"Dropout: axis_name 'batch' is not bound.*Fix: .*drop.axis_name = None"
    ):
        drop(jnp.ones((2, 3)))
    assert drop.eval()(jnp.ones(2)).tolist() == [1.0, 1.0]  # eval mode draws no mask


@pytest.mark.parametrize("bad", [3, ("batch", 1), "", [None]])
def test_dropout_axis_name_must_be_strings(bad):
    with pytest.raises(TypeError, match=r"Dropout: axis_name must be .*axis_name='batch'"):
        nn.Dropout(0.5, axis_name=bad)


# --- jax.grad over a whole model holding Dropout ------------------------------------------
# jax.grad checks the dtypes of the flattened arguments before calling the function, so no
# pax code runs before JAX's error: the fix is documented in Dropout's docstring instead.


def _dropout_net():
    return pax.nn.Sequential(
        pax.nn.Linear(2, 2, rng_key=jax.random.key(0)),
        pax.nn.Dropout(0.5, rng_key=jax.random.key(1)),
    )


def test_grad_over_whole_model_with_dropout_is_refused_by_jax_before_pax_runs():
    def loss(x, model):
        return jnp.sum(model(x))

    with pytest.raises(
        TypeError, match=r"grad requires real- or complex-valued inputs.*(uint32|key<)"
    ):
        jax.grad(loss, argnums=1)(jnp.ones((1, 2)), _dropout_net())
    assert "model.parameters()" in pax.nn.Dropout.__doc__


def test_grad_over_parameters_with_dropout_works():
    net, x = _dropout_net(), jnp.ones((3, 2))

    def loss(params, model, x):
        model = model.update(params)
        return jnp.sum(model(x)), model

    grads, _ = jax.grad(loss, has_aux=True)(net.parameters(), net, x)
    # reference: the same mask, drawn as Dropout draws it
    _, sub = jax.random.split(net.modules[1].rng_key)
    keep = np.asarray(jax.random.bernoulli(sub, 0.5, shape=(3, 2)), np.float32) / 0.5
    np.testing.assert_allclose(grads.modules[0].weight, np.asarray(x).T @ keep, rtol=1e-6)
    np.testing.assert_allclose(grads.modules[0].bias, keep.sum(0), rtol=1e-6)


# --- EMA --------------------------------------------------------------------------------------


def test_ema_of_model_parameters():
    net = nn.Linear(2, 2)
    ema = nn.EMA(net.parameters(), decay=0.9, zero_debias=False)
    target = net.parameters()
    shifted = jax.tree_util.tree_map(lambda p: p + 1.0, target)
    average = ema(shifted)
    np.testing.assert_allclose(
        average.weight, 0.9 * target.weight + 0.1 * shifted.weight, rtol=1e-6
    )
    assert ema.average.bias is not None and int(ema.counter) == 1
    ema_no_update = ema.copy()
    ema_no_update(target, update_stats=False)
    assert int(ema_no_update.counter) == 1


# --- dynamic_unroll ---------------------------------------------------------------------------


class NoisyCounter(pax.Module):
    """A cell with state of its own: a step counter and a dropout."""

    def __init__(self):
        super().__init__()
        self.register_state("steps", jnp.array(0))
        self.drop = nn.Dropout(0.5)

    def __call__(self, x, state):
        self.steps = self.steps + 1
        state = state + self.drop(x) + self.steps
        return state, state


def test_dynamic_unroll_writes_the_cell_state_back():
    cell = NoisyCounter()
    key0 = cell.drop.rng_key
    xs = jnp.ones((4, 3))
    ys, final = pax.dynamic_unroll(cell, xs, jnp.zeros(3))
    assert int(cell.steps) == 4
    expected_key = key0
    for _ in range(4):
        expected_key = jax.random.split(expected_key)[0]
    np.testing.assert_array_equal(cell.drop.rng_key, expected_key)

    # the same as stepping by hand
    manual = NoisyCounter()
    manual.drop.rng_key = key0
    state, outs = jnp.zeros(3), []
    for x in xs:
        out, state = manual(x, state)
        outs.append(out)
    np.testing.assert_allclose(ys, jnp.stack(outs), rtol=1e-6)
    np.testing.assert_allclose(final, state, rtol=1e-6)


def test_dynamic_unroll_inside_jit_returns_the_updated_cell():
    @jax.jit
    def run(cell, xs):
        ys, _ = nn.dynamic_unroll(cell, xs, jnp.zeros(3))
        return ys, cell

    cell = NoisyCounter()
    _, cell = run(cell, jnp.ones((5, 3)))
    _, cell = run(cell, jnp.ones((5, 3)))
    assert int(cell.steps) == 10


@pytest.mark.parametrize("reverse", [False, True])
def test_dynamic_unroll_batch_major_and_reverse(reverse):
    gru = nn.GRU(3, 4)
    xs = _x(2, 5, 3)  # (batch, time, features)
    ys, final = nn.dynamic_unroll(gru, xs, gru.initial_state(2), time_major=False, reverse=reverse)
    state, outs = gru.initial_state(2), {}
    order = range(4, -1, -1) if reverse else range(5)
    for t in order:
        outs[t], state = gru(xs[:, t], state)
    np.testing.assert_allclose(ys, jnp.stack([outs[t] for t in range(5)], 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final, state, rtol=1e-5, atol=1e-6)


def test_lstm_keeps_the_type_of_the_state_it_is_given():
    lstm = nn.LSTM(3, 4)
    h = c = jnp.zeros((2, 4))
    xs = _x(3, 2, 3)
    for state in (hk.LSTMState(h, c), (h, c), nn.LSTMState(h, c)):
        ys, final = nn.dynamic_unroll(lstm, xs, state)
        assert type(final) is type(state)
        np.testing.assert_allclose(final[0], ys[-1], rtol=1e-6)


def test_dynamic_unroll_accepts_plain_functions_and_is_exported():
    assert pax.dynamic_unroll is nn.dynamic_unroll
    ys, total = nn.dynamic_unroll(lambda x, s: (s + x, s + x), jnp.arange(4.0), jnp.array(0.0))
    np.testing.assert_allclose(ys, [0.0, 1.0, 3.0, 6.0])
    assert float(total) == 6.0


# --- Sequential fine-tuning (the seed's example) ----------------------------------------------


def test_sequential_replace_and_freeze_layers():
    net = nn.Sequential(nn.Linear(28 * 28, 64), jax.nn.relu, nn.Linear(64, 10))
    net.modules[2] = nn.Linear(64, 2)
    net.modules[0] = net.modules[0].freeze()
    paths = {
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(net.parameters())
    }
    assert paths == {".modules[2].weight", ".modules[2].bias"}
    assert net(jnp.ones((3, 28 * 28))).shape == (3, 2)
    assert isinstance(net[1], nn.Lambda) and len(net) == 3
