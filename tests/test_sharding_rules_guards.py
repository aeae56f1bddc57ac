"""pax.sharding: a rule that places no leaf is an error (with an opt-out); argument checks."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import pax


def mesh_1d(name="model"):
    return Mesh(np.array(jax.devices()[:2]), (name,))


def mlp():
    return pax.nn.MLP([2, 4, 6], rng_key=jax.random.PRNGKey(0))


TYPO = [(r"\.wieght$", P(None, "model")), (r".*", P())]


# --- a rule that matches no leaf ---------------------------------------------------------------


@pytest.mark.parametrize("fn", ["specs", "shardings", "shard"])
def test_typo_rule_before_the_catch_all_is_an_error(fn):
    owner = "shardings" if fn == "shard" else fn
    message = (
        f"pax.sharding.{owner}: rule 0 ('\\\\.wieght$', P(None, 'model')) matches no leaf of "
        f"the tree (4 leaves)"
    )
    closest = (
        "the closest key paths are '.layers[0].weight', '.layers[1].weight'. Fix: correct the "
        "pattern, e.g. r'\\.weight$', or"
    )
    with pytest.raises(
        ValueError,
        match=re.escape(message) + ".*" + re.escape(closest) + r".*allow_unused=True\)",
    ):
        getattr(pax.sharding, fn)(mlp(), mesh_1d(), TYPO)


def test_typo_rule_is_an_error_in_init_sharded():
    make = lambda key: pax.nn.Linear(2, 4, rng_key=key)
    with pytest.raises(ValueError, match=r"rule 0 \('.*wieght\$'.*matches no leaf"):
        pax.sharding.init_sharded(make, mesh_1d(), TYPO, jax.random.PRNGKey(0))


def test_shadowed_rule_is_an_error():
    rules = [(r".*", P()), (r"\.weight$", P(None, "model"))]
    with pytest.raises(
        ValueError,
        match=r"pax.sharding.specs: rule 1 \('.*weight\$', P\(None, 'model'\)\) places no "
        r"leaf: it matches '.layers\[0\].weight', but rule 0 \('.\*', P\(\)\) comes first.*"
        r"Fix: put rule 1 before rule 0",
    ):
        pax.sharding.specs(mlp(), mesh_1d(), rules)


def test_several_unused_rules_are_named():
    rules = [(r"\.wieght$", P()), (r"bais", P()), (r".*", P())]
    with pytest.raises(ValueError, match=r"rule 0 .*\(so do \('bais', P\(\)\)\)"):
        pax.sharding.specs(mlp(), mesh_1d(), rules)


def test_correct_rules_pass():
    # false alarm: the weight rule is used; the catch-all places the biases
    specs = pax.sharding.specs(mlp(), mesh_1d(), [(r"\.weight$", P(None, "model")), (".*", P())])
    assert specs.layers[0].weight == P(None, "model") and specs.layers[0].bias == P()


def test_catch_all_that_places_nothing_is_not_an_error():
    net = pax.nn.Linear(2, 4, with_bias=False)
    for catch_all in (r".*", r"", r"^", r"^.*$"):
        specs = pax.sharding.specs(net, mesh_1d(), [(r"\.weight$", P()), (catch_all, P())])
        assert specs.weight == P()


def test_empty_tree_is_not_an_error():
    assert pax.sharding.shardings((), mesh_1d(), TYPO) == ()
    assert pax.sharding.specs({}, mesh_1d(), [(r"\.weight$", P()), (".*", P())]) == {}


def test_rules_used_only_by_optimizer_moments_count_as_used():
    net = mlp()
    opt = pax.optim.from_optax(optax.adam(1e-3))(net.parameters())
    rules = [(r"^\.layers\[0\]\.weight$", P(None, "model")), (r".*", P())]
    specs = pax.sharding.specs((net, opt), mesh_1d(), rules)  # [0].layers...: only the moments
    assert specs[1].opt_state[0].mu[".layers[0].weight"] == P(None, "model")


# --- the opt-outs ------------------------------------------------------------------------------


def test_allow_unused_accepts_the_unused_rule():
    mesh = mesh_1d()
    for fn in (pax.sharding.specs, pax.sharding.shardings, pax.sharding.shard):
        out = fn(mlp(), mesh, TYPO, allow_unused=True)
        spec = out.layers[0].weight
        assert getattr(spec, "spec", getattr(getattr(spec, "sharding", None), "spec", spec)) == P()
    make = lambda key: pax.nn.Linear(2, 4, rng_key=key)
    model = pax.sharding.init_sharded(make, mesh, TYPO, jax.random.PRNGKey(0), allow_unused=True)
    assert model.weight.sharding.spec == P()


def test_optional_rule_may_match_nothing():
    from pax._src.sharding.presets import OptionalRule

    rule = OptionalRule(r"\.scale$", P("model"))
    assert rule == (r"\.scale$", P("model")) and repr(rule).startswith("OptionalRule(")
    specs = pax.sharding.specs(mlp(), mesh_1d(), [rule, (".*", P())])
    assert specs.layers[1].weight == P()


def test_allow_unused_must_be_a_bool():
    with pytest.raises(TypeError, match=r"pax.sharding.specs: allow_unused must be True or False"):
        pax.sharding.specs(mlp(), mesh_1d(), TYPO, allow_unused="yes")
    with pytest.raises(TypeError, match=r"init_sharded: allow_unused must be True or False"):
        pax.sharding.init_sharded(lambda: mlp(), mesh_1d(), TYPO, allow_unused=None)


def test_preset_rules_for_a_model_without_biases_are_not_an_error():
    # tensor_parallel_rules names the biases of every Linear; here there are none
    net = pax.nn.MLP([2, 4, 6], with_bias=False, rng_key=jax.random.PRNGKey(0))
    specs = pax.sharding.specs(net, mesh_1d(), pax.sharding.tensor_parallel_rules(net))
    assert specs.layers[0].weight == P(None, "model")


def test_preset_rules_applied_to_part_of_the_model_are_not_an_error():
    net = mlp()
    rules = pax.sharding.fsdp_rules(net, mesh_1d("data"))
    specs = pax.sharding.specs(net.layers[0], mesh_1d("data"), rules)
    assert specs.weight == P()  # the rules name '.layers[0].weight', not '.weight'
    opt = pax.optim.from_optax(optax.adam(1e-3))(net.layers[1].parameters())
    pax.sharding.specs((net, opt), mesh_1d("data"), rules)


# --- argument sweep ------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [None, -1, 1.5, ("data", "model"), ""])
def test_preset_axis_must_be_a_name(axis):
    with pytest.raises(TypeError, match=r"tensor_parallel_rules: axis must be the name of a mesh"):
        pax.sharding.tensor_parallel_rules(mlp(), axis)
    with pytest.raises(TypeError, match=r"fsdp_rules: axis must be the name of a mesh axis"):
        pax.sharding.fsdp_rules(mlp(), mesh_1d("data"), axis)
    with pytest.raises(TypeError, match=r"shard_batch: axis must be the name of a mesh axis"):
        pax.sharding.shard_batch(jnp.ones((2, 3)), mesh_1d("data"), axis)


@pytest.mark.parametrize("make_model", [None, "mlp", -1, jnp.ones(2)])
def test_init_sharded_needs_a_function(make_model):
    with pytest.raises(
        TypeError, match=r"init_sharded: make_model must be a function returning the model.*Fix"
    ):
        pax.sharding.init_sharded(make_model, mesh_1d(), [(".*", P())])
