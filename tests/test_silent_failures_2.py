"""More mistakes that used to fail silently: shared dropout masks across devices, unchecked
boolean flags, reusing a donated model, unpicklable models and optimizers."""

import copy
import inspect
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pax
from pax import nn

# --- 2: dropout masks differ per device / shard / example under named axes --------------------


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


# --- 7: boolean flags ---------------------------------------------------------------------------

_REQUIRED = {
    "EMA": dict(initial_value=jnp.zeros(2), decay=0.9),
    "MultiHeadAttention": dict(in_dim=4, num_heads=2),
    "GroupNorm": dict(in_dim=4, groups=2),
    "VanillaRNN": dict(in_dim=2, hidden_dim=3),
    "MLP": dict(dims=[2, 3]),
    "Stack": dict(make_layer=lambda k: nn.Linear(2, 2, rng_key=k), n=2),
}
_NOT_HERE: set[str] = set()


def _flag_cases():
    cases = []
    for name in nn.__all__:
        cls = getattr(nn, name)
        if not (inspect.isclass(cls) and issubclass(cls, pax.Module)) or name in _NOT_HERE:
            continue
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.annotation in ("bool", bool):
                cases.append(pytest.param(name, p.name, id=f"{name}.{p.name}"))
    return cases


def _required(name):
    if name in _REQUIRED:
        return dict(_REQUIRED[name])
    cls = getattr(nn, name)
    params = inspect.signature(cls.__init__).parameters
    args = {"in_dim": 4, "out_dim": 2, "kernel_shape": 3}
    return {k: v for k, v in args.items() if k in params}


def test_every_flag_is_covered():
    names = {c.values[0] for c in _flag_cases()}
    assert {"Linear", "Conv2D", "Conv1DTranspose", "LayerNorm", "BatchNorm", "EMA"} <= names


@pytest.mark.parametrize(("name", "flag"), _flag_cases())
def test_boolean_flags_of_every_layer_are_checked(name, flag):
    cls = getattr(nn, name)
    for bad in ("no", 0, 1, None, jnp.array(True)):
        with pytest.raises(TypeError, match=rf"{name}: {flag} must be a bool.*{flag}=False"):
            cls(**_required(name), **{flag: bad})
    cls(**_required(name), **{flag: np.bool_(True)})
    assert cls(**_required(name), **{flag: False}) is not None


def test_linear_positional_flag_is_checked():
    with pytest.raises(TypeError, match=r"Linear: with_bias must be a bool \(True or False\)"):
        nn.Linear(3, 4, "no")


@pytest.mark.parametrize("flag", ["time_major", "reverse"])
def test_dynamic_unroll_flags_are_checked(flag):
    cell = nn.LSTM(2, 3)
    with pytest.raises(TypeError, match=rf"dynamic_unroll: {flag} must be a bool"):
        nn.dynamic_unroll(cell, jnp.ones((4, 1, 2)), cell.initial_state(1), **{flag: "yes"})


# --- 10: a donated model or optimizer used again ------------------------------------------------


def _loss_fn(params, model, inputs):
    model = model.update(params)
    x, y = inputs
    loss = jnp.mean((model(x) - y) ** 2)
    return loss, (loss, model)


def test_reusing_a_donated_model_names_the_argument():
    update_fn = pax.utils.build_update_fn(_loss_fn, donate=True)
    net = nn.Linear(2, 1)
    opt = pax.optim.adam(net.parameters(), 1e-3)
    batch = (jnp.ones((4, 2)), jnp.zeros((4, 1)))
    _, new_net, new_opt = update_fn(net, opt, batch)
    with pytest.raises(
        ValueError,
        match=r"the model passed to update_fn was donated.*Fix: loss, model, opt = update_fn\(model, opt, batch\)",
    ):
        update_fn(net, new_opt, batch)
    # the arguments of the refused call are untouched: training goes on
    _, new_net, new_opt = update_fn(new_net, new_opt, batch)
    with pytest.raises(ValueError, match=r"the optimizer passed to update_fn was donated"):
        update_fn(new_net, opt, batch)
    update_fn(new_net, new_opt, batch)


# --- 11: pickling ---------------------------------------------------------------------------


def _roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("fn", [jax.nn.relu, jnp.tanh, jax.nn.gelu, jax.nn.sigmoid])
def test_models_holding_jax_functions_pickle(fn):
    net = nn.Sequential(nn.Linear(2, 2), fn)
    back = _roundtrip(net)
    assert back.modules[1].fn is fn
    x = jnp.array([[1.0, -2.0]])
    np.testing.assert_array_equal(back(x), net(x))


@pytest.mark.parametrize(
    "make", [lambda: nn.MLP([2, 3, 1]), lambda: nn.VanillaRNN(2, 3)], ids=["MLP", "VanillaRNN"]
)
def test_layers_keeping_an_activation_pickle(make):
    net = make()
    back = _roundtrip(net)
    assert back.activation is jax.nn.relu
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(net)


def _local():
    def act(x):
        return x

    return act


@pytest.mark.parametrize("fn", [lambda x: x, _local()], ids=["lambda", "local"])
def test_pickling_a_lambda_of_a_local_function_names_the_fix(fn):
    net = nn.Sequential(nn.Linear(2, 2), fn)
    with pytest.raises(TypeError, match=r"Lambda: cannot pickle fn=.*module level.*pax.save"):
        pickle.dumps(net)
    # copies still work
    assert copy.deepcopy(net).modules[1].fn is fn
    assert copy.copy(net.modules[1]).fn is fn


def test_pickling_an_optax_optimizer_says_to_use_pax_save():
    net = nn.Linear(2, 1)
    for opt in (
        pax.optim.from_optax(optax.adam(1e-3))(net.parameters()),
        pax.optim.sgd(net.parameters(), 0.1),
    ):
        with pytest.raises(TypeError, match=r"OptaxOptimizer.*pax\.save\(path, \(model, opt\)\)"):
            pickle.dumps(opt)
        assert copy.deepcopy(opt).transform == opt.transform
        assert copy.copy(opt).transform is opt.transform
