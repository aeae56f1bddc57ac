"""One table of every pax.nn layer, run through jit, grad, vmap, flatten, freeze and eval."""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax import nn


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
    """Layers broadcast explicitly, so every check here runs with implicit rank promotion off."""
    with jax.numpy_rank_promotion("raise"):
        yield


def _x(*shape):
    """A standard normal test input (numpy: no compilation per shape)."""
    return jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)


def _call(m, x):
    return m(x)


def _cell(m, x):
    state = jax.tree_util.tree_map(lambda s: s + 0.5, m.initial_state(x.shape[0]))
    return m(x, state)[0]


@dataclass
class Row:
    name: str
    make: Callable[[], pax.Module]
    input: Callable[[], Any]
    params: set[str]
    apply: Callable[[pax.Module, Any], Any] = _call
    train_dependent: bool = False  # output differs between train() and eval()
    extra: dict = field(default_factory=dict)


WB = {".weight", ".bias"}


def _stack_layer(key):
    return nn.Linear(3, 3, rng_key=key)


TABLE = [
    Row("Linear", lambda: nn.Linear(3, 4), lambda: _x(2, 3), WB),
    Row("Linear_nobias", lambda: nn.Linear(3, 4, with_bias=False), lambda: _x(2, 3), {".weight"}),
    Row("Identity", nn.Identity, lambda: _x(2, 3), set()),
    Row("Flatten", nn.Flatten, lambda: _x(2, 3, 4), set()),
    Row(
        "Stack",
        lambda: nn.Stack(_stack_layer, 2),
        lambda: _x(2, 3),
        {".stacked.weight", ".stacked.bias"},
    ),
    Row(
        "Stack_BatchNorm_remat",
        lambda: nn.Stack(lambda k: nn.BatchNorm(3, rng_key=k), 2, remat=True),
        lambda: _x(4, 3),
        {".stacked.scale", ".stacked.offset"},
        train_dependent=True,
    ),
    Row("Reshape", lambda: nn.Reshape((4, 3)), lambda: _x(2, 3, 4), set()),
    Row("Lambda", lambda: nn.Lambda(jax.nn.relu), lambda: _x(2, 3), set()),
    Row(
        "Sequential",
        lambda: nn.Sequential(nn.Linear(3, 4), jax.nn.relu, nn.Linear(4, 2, with_bias=False)),
        lambda: _x(2, 3),
        {".modules[0].weight", ".modules[0].bias", ".modules[2].weight"},
    ),
    Row(
        "MLP",
        lambda: nn.MLP([3, 4, 2]),
        lambda: _x(2, 3),
        {".layers[0].weight", ".layers[0].bias", ".layers[1].weight", ".layers[1].bias"},
    ),
    Row("Conv1D", lambda: nn.Conv1D(3, 4, 3, stride=2), lambda: _x(2, 7, 3), WB),
    Row(
        "Conv2D_channels_first_groups",
        lambda: nn.Conv2D(4, 6, 3, feature_group_count=2, data_format="channels_first"),
        lambda: _x(2, 4, 5, 5),
        WB,
    ),
    Row(
        "Conv3D",
        lambda: nn.Conv3D(3, 4, 2, dilation=2, padding="VALID"),
        lambda: _x(1, 4, 4, 4, 3),
        WB,
    ),
    Row("Conv1DTranspose", lambda: nn.Conv1DTranspose(3, 4, 3, stride=2), lambda: _x(2, 5, 3), WB),
    Row(
        "Conv2DTranspose", lambda: nn.Conv2DTranspose(3, 4, 3, stride=2), lambda: _x(2, 3, 3, 3), WB
    ),
    Row(
        "Conv3DTranspose",
        lambda: nn.Conv3DTranspose(3, 4, 2, with_bias=False),
        lambda: _x(1, 2, 2, 2, 3),
        {".weight"},
    ),
    Row(
        "BatchNorm",
        lambda: nn.BatchNorm(3),
        lambda: _x(4, 3),
        {".scale", ".offset"},
        train_dependent=True,
    ),
    Row(
        "BatchNorm1D",
        lambda: nn.BatchNorm1D(3, data_format="channels_first"),
        lambda: _x(4, 3, 5),
        {".scale", ".offset"},
        train_dependent=True,
    ),
    Row(
        "BatchNorm2D",
        lambda: nn.BatchNorm2D(3),
        lambda: _x(2, 3, 3, 3),
        {".scale", ".offset"},
        train_dependent=True,
    ),
    Row("LayerNorm", lambda: nn.LayerNorm(3), lambda: _x(2, 3), {".scale", ".offset"}),
    Row("GroupNorm", lambda: nn.GroupNorm(4, 2), lambda: _x(2, 3, 4), {".scale", ".offset"}),
    Row("RMSNorm", lambda: nn.RMSNorm(3), lambda: _x(2, 3), {".scale"}),
    Row("Dropout", lambda: nn.Dropout(0.5), lambda: _x(4, 3), set(), train_dependent=True),
    Row("Embed", lambda: nn.Embed(5, 3), lambda: jnp.array([[0, 4], [2, 2]]), {".weight"}),
    Row(
        "LSTM",
        lambda: nn.LSTM(3, 4),
        lambda: _x(2, 3),
        {".weight_ih", ".weight_hh", ".bias"},
        _cell,
    ),
    Row(
        "GRU", lambda: nn.GRU(3, 4), lambda: _x(2, 3), {".weight_ih", ".weight_hh", ".bias"}, _cell
    ),
    Row(
        "DeepRNN",
        lambda: nn.DeepRNN([nn.LSTM(3, 4), jax.nn.relu, nn.GRU(4, 4)]),
        lambda: _x(2, 3),
        {
            f".layers[{i}].{w}"
            for i, names in (
                (0, ("weight_ih", "weight_hh", "bias")),
                (2, ("weight_ih", "weight_hh", "bias")),
            )
            for w in names
        },
        _cell,
    ),
    Row(
        "VanillaRNN",
        lambda: nn.VanillaRNN(3, 4),
        lambda: _x(2, 3),
        {".weight_ih", ".bias", ".weight_hh", ".bias_hh"},
        _cell,
    ),
    Row(
        "dynamic_unroll_LSTM",
        lambda: nn.LSTM(3, 4),
        lambda: _x(5, 2, 3),
        {".weight_ih", ".weight_hh", ".bias"},
        lambda m, xs: nn.dynamic_unroll(m, xs, m.initial_state(xs.shape[1]))[0],
    ),
    Row(
        "MultiHeadAttention",
        lambda: nn.MultiHeadAttention(4, num_heads=2),
        lambda: _x(2, 3, 4),
        {f".{p}_proj.{w}" for p in ("query", "key", "value", "out") for w in ("weight", "bias")},
        lambda m, x: m(x, mask=jnp.tril(jnp.ones((3, 3), bool))[None, None]),
    ),
    Row("RotaryEmbedding", lambda: nn.RotaryEmbedding(4), lambda: _x(2, 3, 2, 4), set()),
    Row("MaxPool", lambda: nn.MaxPool(2, padding="SAME"), lambda: _x(2, 5, 5, 3), set()),
    Row(
        "AvgPool",
        lambda: nn.AvgPool((2,), 1, data_format="channels_first"),
        lambda: _x(2, 3, 5),
        set(),
    ),
    Row("EMA", lambda: nn.EMA(jnp.zeros(3), 0.9), lambda: _x(3), set()),
]
IDS = [r.name for r in TABLE]


def test_table_covers_every_layer():
    covered = {type(r.make()).__name__ for r in TABLE}
    layers = {
        name
        for name in nn.__all__
        if isinstance(getattr(nn, name), type) and issubclass(getattr(nn, name), pax.Module)
    }
    # KVCache is not a layer: a state container written by MultiHeadAttention's decode calls
    # (tests/test_transformer.py checks it under jit, in a Stack and in bfloat16).
    assert layers - covered == {"KVCache"}


def _leaves_close(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_jit_matches_eager_and_keeps_the_mutation(row):
    traces = []

    def step(model, x):
        traces.append(1)
        return row.apply(model, x), model

    model, x = row.make(), row.input()
    eager_model = model.copy()
    eager_out, eager_model = step(eager_model, x)
    jitted = jax.jit(step)
    out, new_model = jitted(model, x)
    _leaves_close(out, eager_out)
    _leaves_close(new_model, eager_model)  # states (BatchNorm, Dropout, EMA) updated alike
    assert jax.tree_util.tree_structure(new_model) == jax.tree_util.tree_structure(model)
    _, newer_model = jitted(new_model, x)  # feeding the returned module back: no recompile
    assert len(traces) == 2  # one eager run, one trace
    states = jax.tree_util.tree_leaves(new_model.states())
    if states:  # BatchNorm, Dropout and EMA advance their states on every call
        newer = jax.tree_util.tree_leaves(newer_model.states())
        assert any(not np.array_equal(a, b) for a, b in zip(states, newer))


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_grad_wrt_parameters(row):
    model, x = row.make(), row.input()

    def loss(params, model, x):
        return jnp.sum(jnp.sin(row.apply(model.update(params), x) + 0.1))

    with pax.discard_state_changes():  # gradients only: BatchNorm/Dropout updates are dropped
        grads = jax.jit(jax.grad(loss))(model.parameters(), model, x)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(model.parameters())
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert {jax.tree_util.keystr(p) for p, _ in leaves} == row.params
    for path, g in leaves:
        assert bool(jnp.all(jnp.isfinite(g))), path
        assert bool(jnp.any(g != 0)), f"zero gradient at {jax.tree_util.keystr(path)}"


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_vmap_equals_a_loop(row):
    model, x = row.make(), row.input()
    x2 = (x + 1) % 5 if jnp.issubdtype(x.dtype, jnp.integer) else x * 0.5 + 1
    xs = jnp.stack([x, x2])
    shared = contextlib.nullcontext()
    if row.name == "Dropout":  # one key for every example: the same mask, as in the loop
        shared = pytest.warns(UserWarning, match="Dropout: called under jax.vmap")
    with shared, pax.discard_state_changes():  # per-example copies, thrown away
        batched = jax.vmap(lambda xi: row.apply(model.copy(), xi))(xs)
    looped = jnp.stack([row.apply(model.copy(), x), row.apply(model.copy(), x2)])
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_flatten_freeze_eval_and_key_paths(row):
    model, x = row.make(), row.input()
    reference = row.apply(model.copy(), x)

    # key paths name the parameters
    paths = {
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(model.parameters())
    }
    assert paths == row.params

    # flatten / unflatten round trip
    leaves, treedef = jax.tree_util.tree_flatten(model)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(rebuilt) is type(model)
    assert jax.tree_util.tree_structure(rebuilt) == treedef
    _leaves_close(row.apply(rebuilt, x), reference)

    # freeze: no trainable leaf left, same function; unfreeze restores the parameters
    frozen = model.freeze()
    assert jax.tree_util.tree_leaves(frozen.parameters()) == []
    _leaves_close(row.apply(frozen.copy(), x), reference)
    thawed = {
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(frozen.unfreeze().parameters())
    }
    assert thawed == row.params

    # eval: every submodule switches; states are left alone
    evaluated = model.eval()
    assert all(
        not m.training
        for m in jax.tree_util.tree_leaves(evaluated, is_leaf=lambda v: isinstance(v, pax.Module))
        if isinstance(m, pax.Module)
    )
    assert evaluated.training is False and model.training is True
    before = evaluated.states()
    out = row.apply(evaluated, x)
    if row.train_dependent:
        assert not np.allclose(out, reference)
        _leaves_close(evaluated.states(), before)
    else:
        _leaves_close(out, reference)


def test_eval_of_batch_norm_after_training_uses_the_moving_statistics():
    bn = nn.BatchNorm(3, decay=0.5)
    x = _x(8, 3) * 2 + 1
    for _ in range(3):
        bn(x)
    y = bn.eval()(x)
    mean, var, scale, offset = (
        v[None] for v in (bn.moving_mean, bn.moving_var, bn.scale, bn.offset)
    )
    expected = (x - mean) / jnp.sqrt(var + bn.eps) * scale + offset
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
