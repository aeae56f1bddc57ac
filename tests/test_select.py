"""Selecting leaves by key path: freeze / unfreeze / parameters / states (where=...), and the
same selections in pax.optim (by_key_path, adamw's mask)."""

import pickle

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compile_count import count_compilations

import pax


def keys(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def mse_loss(params, model, inputs):
    model = model.update(params)
    x, y = inputs
    loss = jnp.mean((model(x) - y) ** 2)
    return loss, (loss, model)


def data():
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    return x, jnp.sin(x[:, :1])


BIASES = [".layers[0].bias", ".layers[1].bias"]
WEIGHTS = [".layers[0].weight", ".layers[1].weight"]


def test_freeze_biases_leaves_parameters_optimizer_and_gradients():
    net = pax.nn.MLP([2, 8, 1]).freeze(where=r"\.bias$")
    assert keys(net.parameters()) == WEIGHTS
    assert keys(net.states()) == BIASES
    assert net.layers[0].registry["bias"] is pax.Kind.FROZEN_PARAMETER
    opt = pax.optim.from_optax(optax.adam(1e-2))(net.parameters())
    assert opt.key_paths == tuple(WEIGHTS)
    grads, _ = jax.grad(mse_loss, has_aux=True)(net.parameters(), net, data())
    assert keys(grads) == WEIGHTS


def test_training_keeps_frozen_biases_bit_identical():
    net = pax.nn.MLP([2, 8, 1], rng_key=jax.random.PRNGKey(1)).freeze(where=r"\.bias$")
    net = net.update(jax.tree_util.tree_map(lambda b: b + 0.5, net.states()))  # nonzero biases
    before = net
    opt = pax.optim.sgd(net.parameters(), 0.1)
    update_fn = pax.utils.build_update_fn(mse_loss)
    for _ in range(3):
        _, net, opt = update_fn(net, opt, data())
    for layer, old in zip(net.layers, before.layers):
        np.testing.assert_array_equal(layer.bias, old.bias)
        assert not np.array_equal(layer.weight, old.weight)
    back = net.unfreeze(where=r"\.bias$")
    assert keys(back.parameters()) == keys(pax.nn.MLP([2, 8, 1]).parameters())
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(pax.nn.MLP([2, 8, 1]))


def test_optimizer_built_before_a_partial_freeze_fails_with_the_fix():
    net = pax.nn.MLP([2, 8, 1])
    opt = pax.optim.adam(net.parameters(), 1e-3)
    frozen = net.freeze(where=r"^\.layers\[0\]\.bias$")
    grads = jax.tree_util.tree_map(jnp.ones_like, frozen.parameters())
    with pytest.raises(ValueError, match=r"'\.layers\[0\]\.bias' was a trainable .* frozen since"):
        opt.step(grads, frozen)


def test_regex_forms_and_predicates():
    net = pax.nn.MLP([2, 4, 4, 1])
    assert keys(net.freeze(where=r"^\.layers\[[0-1]\]").parameters()) == [
        ".layers[2].weight",
        ".layers[2].bias",
    ]
    by_leaf = net.freeze(where=lambda path, leaf: leaf.ndim == 1)
    by_path = net.freeze(where=lambda path: path.endswith(".bias"))
    by_regex = net.freeze(where="bias$")
    structures = {jax.tree_util.tree_structure(m) for m in (by_leaf, by_path, by_regex)}
    assert len(structures) == 1  # one selection, one layout: the same treedef
    assert keys(net.parameters(where="weight")) == [f".layers[{i}].weight" for i in range(3)]
    assert keys(by_regex.states(where=r"\[2\]")) == [".layers[2].bias"]
    assert keys(by_regex.parameters(where=r"\[2\]")) == [".layers[2].weight"]


def test_whole_module_freeze_and_unfreeze_reset_partial_freezes():
    net = pax.nn.MLP([2, 4, 1])
    partial = net.freeze(where="bias")
    assert keys(partial.freeze().parameters()) == []
    assert jax.tree_util.tree_structure(partial.unfreeze()) == jax.tree_util.tree_structure(net)
    assert jax.tree_util.tree_structure(net.freeze().unfreeze(where=".")) == (
        jax.tree_util.tree_structure(net)
    )


def haiku_mlp():
    return pax.from_haiku(hk.nets.MLP)([3, 2]).hk_init(jnp.ones((1, 4)))


def test_freeze_leaves_inside_a_haiku_parameter_subtree():
    mlp = haiku_mlp()
    frozen = mlp.freeze(where=r"\['b'\]$")
    assert keys(frozen.parameters()) == [
        ".params['mlp/~/linear_0']['w']",
        ".params['mlp/~/linear_1']['w']",
    ]
    assert keys(frozen.states()) == [
        ".params['mlp/~/linear_0']['b']",
        ".params['mlp/~/linear_1']['b']",
    ]
    assert frozen.registry["params"] is pax.Kind.PARAMETER_SUBTREE
    # freezing the rest makes the whole subtree frozen; unfreezing it all brings back the model
    everything = frozen.freeze(where=r"\['w'\]$")
    assert everything.registry["params"] is pax.Kind.FROZEN_PARAMETER_SUBTREE
    assert keys(everything.parameters()) == []
    again = everything.unfreeze(where="linear")
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(mlp)
    # pickling keeps the partial freeze
    assert keys(pickle.loads(pickle.dumps(frozen)).parameters()) == keys(frozen.parameters())


def test_training_a_partially_frozen_haiku_module():
    mlp = haiku_mlp()
    frozen = mlp.freeze(where=r"linear_0")
    opt = pax.optim.from_optax(optax.sgd(0.1))(frozen.parameters())
    assert opt.key_paths == (
        ".params['mlp/~/linear_1']['b']",
        ".params['mlp/~/linear_1']['w']",
    )
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
    inputs = (x, jnp.ones((8, 2)))
    update_fn = pax.utils.build_update_fn(mse_loss)
    model = frozen
    for _ in range(2):
        _, model, opt = update_fn(model, opt, inputs)
    old, new = frozen.params, model.params
    for name in ("b", "w"):
        np.testing.assert_array_equal(new["mlp/~/linear_0"][name], old["mlp/~/linear_0"][name])
        assert not np.array_equal(new["mlp/~/linear_1"][name], old["mlp/~/linear_1"][name])


def test_a_partial_freeze_never_recompiles():
    update_fn = pax.utils.build_update_fn(mse_loss)
    inputs = data()

    def fresh():
        net = pax.nn.MLP([2, 8, 1], rng_key=jax.random.PRNGKey(0)).freeze(where=r"\.bias$")
        return net, pax.optim.sgd(net.parameters(), 0.1)

    with count_compilations("update_fn") as compilations:
        net, opt = fresh()
        for _ in range(3):
            _, net, opt = update_fn(net, opt, inputs)
        net, opt = fresh()  # frozen again by the same pattern: the same treedef
        _, net, opt = update_fn(net, opt, inputs)
        net = net.freeze(where=r"\.bias$")  # freezing frozen leaves again changes nothing
        _, net, opt = update_fn(net, opt, inputs)
    assert compilations() == 1


def test_a_partial_freeze_inside_a_subtree_never_recompiles():
    update_fn = pax.utils.build_update_fn(mse_loss)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
    inputs = (x, jnp.ones((8, 2)))

    def fresh():
        mlp = haiku_mlp().freeze(where="linear_0']\\['w")
        return mlp, pax.optim.sgd(mlp.parameters(), 0.1)

    with count_compilations("update_fn") as compilations:
        for _ in range(2):
            mlp, opt = fresh()
            for _ in range(2):
                _, mlp, opt = update_fn(mlp, opt, inputs)
    assert compilations() == 1
    assert len(mlp.params) == 2 and len(opt.key_paths) == 3


def test_invalid_where_raises_with_the_fix():
    net = pax.nn.MLP([2, 4, 1])
    with pytest.raises(TypeError, match=r"MLP\.freeze: where must be a regular expression .* Fix"):
        net.freeze(where=3)
    with pytest.raises(ValueError, match=r"MLP\.unfreeze: where='\(' is not a valid regular"):
        net.unfreeze(where="(")
    with pytest.raises(TypeError, match=r"MLP\.parameters: where must be"):
        net.parameters(where=[".bias"])


def test_where_selecting_nothing_raises_listing_key_paths():
    net = pax.nn.MLP([2, 4, 1])
    with pytest.raises(
        ValueError, match=r"MLP\.freeze: where='\.baias' selects no parameter .*\.layers\[0\]\.bias"
    ):
        net.freeze(where=".baias")
    with pytest.raises(ValueError, match=r"where=the function .* selects no parameter"):
        net.unfreeze(where=lambda path, leaf: False)
    with pytest.raises(ValueError, match=r"MLP\.states: where='nope' selects no leaf"):
        net.states(where="nope")
    # a pattern selecting parameters only already frozen is not a typo
    assert keys(net.freeze().freeze(where="bias").parameters()) == []


def test_optimizer_masks_take_the_same_where_forms():
    net = pax.nn.MLP([2, 4, 1])
    params = pax.optim.KeyPathDict((k, 0.0) for k in keys(net.parameters()))
    expected = {k: k.endswith(".weight") for k in params}
    for where in (r"\.weight$", lambda path: path.endswith(".weight")):
        assert dict(pax.optim.by_key_path(where)(params)) == expected
    two = pax.optim.by_key_path(lambda path, leaf: path.endswith(".weight"))
    assert dict(two(params)) == expected
    assert pax.optim.by_key_path(r"\.weight$") == pax.optim.by_key_path(r"\.weight$")
    opt = pax.optim.adamw(net.parameters(), 1e-2, weight_decay=0.5, mask=r"\.weight$")
    grads = jax.tree_util.tree_map(jnp.zeros_like, net.parameters())
    stepped = opt.step(grads, net)  # zero gradients: only weight decay moves the weights
    np.testing.assert_array_equal(stepped.layers[0].bias, net.layers[0].bias)
    assert not np.array_equal(stepped.layers[0].weight, net.layers[0].weight)


def test_optimizer_mask_errors():
    net = pax.nn.MLP([2, 4, 1])
    with pytest.raises(ValueError, match=r"by_key_path: the regular expression '\.wieght' match"):
        pax.optim.adamw(net.parameters(), 1e-2, mask=".wieght")
    with pytest.raises(
        TypeError, match=r"pax\.optim\.adamw: mask must be a function .* or a regular expression"
    ):
        pax.optim.adamw(net.parameters(), 1e-2, mask=3)
    with pytest.raises(ValueError, match=r"by_key_path: where='\[' is not a valid regular"):
        pax.optim.by_key_path("[")


def test_a_partial_freeze_follows_the_attribute():
    m = pax.Module()
    m.register_parameter_subtree("params", {"a": jnp.ones(2), "b": jnp.zeros(2)})
    frozen = m.freeze(where=r"\['b'\]")
    frozen.params = {"a": jnp.full(2, 3.0), "b": jnp.full(2, 4.0)}  # new values, same leaves
    assert keys(frozen.parameters()) == [".params['a']"]
    frozen.register_parameter_subtree("params", {"a": jnp.ones(2), "b": jnp.ones(2)})
    assert keys(frozen.states()) == [".params['b']"]  # registered again: still frozen
    del frozen.params  # removing the attribute drops its freezes
    frozen.register_parameter_subtree("params", {"a": jnp.ones(2), "b": jnp.ones(2)})
    assert jax.tree_util.tree_structure(frozen) == jax.tree_util.tree_structure(m)


def test_a_structure_difference_names_the_leaves_frozen_inside_a_subtree():
    model = pax.haiku.linear(2, 3)
    frozen = model.freeze(where=r"\['b'\]$")
    with pytest.raises(
        pax.StructureChangedError,
        match=r"HaikuModule\.params has other leaves frozen by freeze\(where=\.\.\.\): "
        r"\[\] \(before\) vs \[\"\['linear'\]\['b'\]\"\] \(after\)",
    ):
        pax.utils.check_same_structure(model, frozen)
