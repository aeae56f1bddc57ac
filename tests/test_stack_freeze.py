"""Freezing some layers of a pax.nn.Stack: a layer key path (``.blocks[3].weight``) in
``where=`` is refused with the supported fix, and that fix (a Sequential of Stack slices, one
of them frozen) trains only the trainable layers, with the numerics of the unsplit stack."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax import nn

WIDTH = 6


def _block(key):
    return nn.Sequential(nn.Linear(WIDTH, WIDTH, rng_key=key), jax.nn.tanh)


class Model(pax.Module):
    def __init__(self, blocks=None) -> None:
        super().__init__()
        self.embed = nn.Linear(2, WIDTH, rng_key=jax.random.PRNGKey(1))
        self.blocks = blocks or nn.Stack(_block, 4, remat=True, rng_key=jax.random.PRNGKey(2))
        self.head = nn.Linear(WIDTH, 1, rng_key=jax.random.PRNGKey(3))

    def __call__(self, x):
        return self.head(self.blocks(self.embed(x)))


def _reference(model, stack, x):
    """The same weights as a Python loop of the unstacked layers, in numpy terms."""
    h = model.embed(x)
    for layer in stack.unstack():
        w, b = layer.modules[0].weight, layer.modules[0].bias
        h = np.tanh(np.asarray(h) @ np.asarray(w) + np.asarray(b))
    return model.head(jnp.asarray(h))


X = jax.random.normal(jax.random.PRNGKey(5), (8, 2))


@pytest.mark.parametrize(
    "where",
    [
        r"^\.blocks\[3\]\.",
        r"^\.head\.|^\.blocks\[3\]\.",
        lambda path: path.startswith(".blocks[3]"),
    ],
)
def test_freezing_one_layer_of_a_stack_names_the_split_as_the_fix(where):
    # Before: "selects no parameter" (or, with .head also selected, a silent no-op on layer 3).
    fix = r"\.blocks = pax\.nn\.Sequential\(stack\[0:3\], stack\[3:4\]\.freeze\(\)\)"
    with pytest.raises(
        ValueError,
        match=r"Model\.freeze: .* layer\(s\) \[3\] of the Stack at "
        r"\.blocks .*one stacked array, \.blocks\.stacked\.modules\[0\]\.weight.*" + fix,
    ):
        Model().freeze(where=where)


def test_unfreezing_and_selecting_layers_name_their_fix():
    with pytest.raises(
        ValueError,
        match=r"Model\.unfreeze: .*\[0, 1\].*stack\[0:2\]\.unfreeze"
        r"\(\), stack\[2:4\]\)",
    ):
        Model().freeze().unfreeze(where=r"\.blocks\[[01]\]\.")
    with pytest.raises(
        ValueError,
        match=r"Model\.parameters: .*Fix: select in the layers as "
        r"modules, \.blocks\[1\] \(a layer\) or \.blocks\[1:2\] \(a Stack\)",
    ):
        Model().parameters(where=r"blocks\[1\]")


def test_whole_stacked_arrays_and_other_indexed_paths_are_still_selected():
    # False alarms: the stacked array's own path, a whole freeze, and a pattern naming the index
    # of another container only (it matches .blocks[0].weight only after the stack's name).
    model = Model().freeze(where=r"^\.blocks\.stacked\.modules\[0\]\.weight$")
    assert model.blocks.summary().split("\n")[1].split()[-5:-2] == ["24", "144", "1/1/0"]
    assert Model().freeze().unfreeze(where=r"^\.blocks\.").head.summary()
    linears = nn.Stack(lambda key: nn.Linear(WIDTH, WIDTH, rng_key=key), 4)
    seq = pax.nn.Sequential(nn.Sequential(nn.Linear(WIDTH, WIDTH)), linears)
    # r"\[0\]\.weight$" also matches the layer path .modules[1][0].weight, but not the
    # Stack's name: it selects .modules[0].modules[0].weight only
    frozen = seq.freeze(where=r"\[0\]\.weight$")
    assert [x.shape for x in jax.tree_util.tree_leaves(frozen.parameters())] == [
        (WIDTH,),
        (4, WIDTH, WIDTH),
        (4, WIDTH),
    ]


def test_a_sequential_of_stack_slices_freezes_the_last_layer_and_trains_the_rest():
    model = Model()
    stack = model.blocks
    split = Model(nn.Sequential(stack[:3], stack[3:].freeze()))
    np.testing.assert_allclose(split(X), _reference(model, stack, X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(split(X), model(X), rtol=1e-6, atol=1e-6)

    opt = pax.optim.adamw(split.parameters(), 1e-2, weight_decay=0.1)

    def loss_fn(params, m, inputs):
        m = m.update(params)
        loss = jnp.mean((m(inputs) - jnp.sin(inputs[:, :1])) ** 2)
        return loss, (loss, m)

    update_fn = pax.utils.build_update_fn(loss_fn)
    trained = split
    for _ in range(3):
        _, trained, opt = update_fn(trained, opt, X)
    before, after = split.blocks.modules, trained.blocks.modules
    for a, b in zip(jax.tree_util.tree_leaves(before[1]), jax.tree_util.tree_leaves(after[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit-identical
    for a, b in zip(jax.tree_util.tree_leaves(before[0]), jax.tree_util.tree_leaves(after[0])):
        assert not np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(split.head.weight), np.asarray(trained.head.weight))

    # unfreeze + from_layers: one trainable Stack again, with identical outputs
    first, last = trained.blocks.modules
    merged = nn.Stack.from_layers(first.unstack() + last.unfreeze().unstack(), remat=True)
    joined = Model(merged)
    joined.embed, joined.head = trained.embed, trained.head
    np.testing.assert_array_equal(np.asarray(joined(X)), np.asarray(trained(X)))
    assert len(jax.tree_util.tree_leaves(joined.blocks.parameters())) == 2
    np.testing.assert_allclose(joined(X), _reference(joined, merged, X), rtol=1e-5, atol=1e-5)
