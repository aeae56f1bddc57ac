"""pax.sharding: key-path rules over a mesh, presets, sharded steps and sharded initialization.

Runs on the 8 simulated CPU devices of `conftest.py`.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compile_count import count_compilations
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import pax
from pax._src.sharding.rules import rule_keys

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices")

STEPS = 3


def mesh_1d(name="data"):
    return Mesh(np.array(jax.devices()[:8]), (name,))


def mesh_2d():
    return pax.sharding.make_mesh((2, 4), ("data", "model"))


def loss_fn(params, model, inputs):
    model = model.update(params)
    x, y = inputs
    loss = jnp.mean((model(x) - y) ** 2)
    return loss, (loss, model)


class Attention(pax.Module):
    """Self-attention over a sequence, as a model of one input."""

    def __init__(self, *, rng_key):
        super().__init__()
        self.mha = pax.nn.MultiHeadAttention(16, num_heads=4, key_size=4, rng_key=rng_key)

    def __call__(self, x):
        return self.mha(x)


def make_mlp(key):
    return pax.nn.MLP([8, 32, 16, 4], rng_key=key)


def mlp_batch():
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 8))
    return x, jax.random.normal(jax.random.PRNGKey(2), (16, 4))


def attention_batch():
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 6, 16))
    return x, jax.random.normal(jax.random.PRNGKey(2), (8, 6, 16))


def run(model, opt, batch, steps=STEPS):
    """Losses and final (model, opt) of `steps` jitted steps; also the step function."""
    update_fn = pax.utils.build_update_fn(loss_fn)
    losses = []
    for _ in range(steps):
        loss, model, opt = update_fn(model, opt, batch)
        losses.append(float(loss))
    return losses, model, opt, update_fn


def spec_of(x):
    """The spec of an array's sharding, without trailing Nones (jit drops them)."""
    entries = list(x.sharding.spec)
    while entries and entries[-1] is None:
        entries.pop()
    return P(*entries)


def same_shardings(tree, expected):
    """Key paths of `tree` whose sharding is not (equivalent to) the expected one."""
    pairs = jax.tree_util.tree_leaves_with_path(tree)
    wrong = []
    for (path, leaf), sharding in zip(pairs, jax.tree_util.tree_leaves(expected), strict=True):
        if not leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
            wrong.append(f"{jax.tree_util.keystr(path)}: {leaf.sharding} != {sharding}")
    return wrong


def check_sharded_training(model, opt, batch, mesh, rules, batch_axis="data"):
    """Sharded steps match the 1-device run and keep the rules' shardings after each step."""
    ref_losses, ref_model, ref_opt, _ = run(model, opt, batch)

    s_model, s_opt = pax.sharding.shard((model, opt), mesh, rules)
    expected = pax.sharding.shardings((model, opt), mesh, rules)
    assert same_shardings((s_model, s_opt), expected) == []
    s_batch = pax.sharding.shard_batch(batch, mesh, batch_axis)
    placed = (s_model, s_opt)
    update_fn = pax.utils.build_update_fn(loss_fn)
    losses = []
    with count_compilations("update_fn") as compilations:
        for _ in range(STEPS):
            loss, s_model, s_opt = update_fn(s_model, s_opt, s_batch)
            losses.append(float(loss))
            assert same_shardings((s_model, s_opt), expected) == []
    assert compilations() == 1  # the outputs' shardings are the inputs': no recompilation

    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(
        jax.tree_util.tree_leaves((s_model, s_opt)),
        jax.tree_util.tree_leaves((ref_model, ref_opt)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    # The compiled step returns the model and optimizer with the shardings they came in with.
    compiled = update_fn.step.lower(*placed, s_batch).compile()
    _, out_model, out_opt = compiled.output_shardings
    outs = jax.tree_util.tree_leaves((out_model, out_opt))
    ins = jax.tree_util.tree_leaves(placed)
    assert len(outs) == len(ins)
    for sharding, leaf in zip(outs, ins):
        # Equal, not only equivalent: then the next call hits jit's dispatch cache.
        assert sharding == leaf.sharding, (sharding, leaf.sharding)
    return s_model, s_opt, compiled


# --- data parallel, FSDP, tensor parallel --------------------------------------------------------


def test_data_parallel_replicates_the_model_and_splits_the_batch():
    model = make_mlp(jax.random.PRNGKey(0))
    opt = pax.optim.adam(model.parameters(), 1e-2)
    mesh = mesh_1d()
    s_model, _, _ = check_sharded_training(
        model, opt, mlp_batch(), mesh, pax.sharding.data_parallel_rules()
    )
    weight = s_model.layers[0].weight
    assert weight.sharding.is_fully_replicated
    assert len(weight.addressable_shards) == 8


def test_fsdp_shards_parameters_and_adam_state_over_data():
    model = make_mlp(jax.random.PRNGKey(0))
    opt = pax.optim.from_optax(optax.adam(1e-2))(model.parameters())
    mesh = mesh_1d()
    rules = pax.sharding.fsdp_rules(model, mesh)
    s_model, s_opt, compiled = check_sharded_training(model, opt, mlp_batch(), mesh, rules)
    # Every parameter and both moments are split over the 8 devices (dims 32, 16, 8, 4 -> /8
    # where divisible): each device holds 1/8 of layers[0].weight (8x32) along dim 1.
    assert spec_of(s_model.layers[0].weight) == P(None, "data")
    assert [s.data.shape for s in s_model.layers[0].weight.addressable_shards] == [(8, 4)] * 8
    assert spec_of(s_model.layers[1].weight) == P("data")
    mu = s_opt.opt_state[0].mu
    assert spec_of(mu[".layers[0].weight"]) == P(None, "data")
    assert spec_of(s_opt.opt_state[0].nu[".layers[1].weight"]) == P("data")
    # A bias of 4 cannot be split over 8 devices: replicated, as the step count.
    assert spec_of(s_model.layers[2].bias) == P()
    assert spec_of(s_opt.opt_state[0].count) == P()
    # The update runs on the shards: no all-gather of a full parameter feeds the outputs (the
    # gathers are those of the forward pass, one per sharded weight at most per use).
    assert "all-gather" in compiled.as_text()


def test_fsdp_with_adamw_mask_and_injected_hyperparameters():
    model = make_mlp(jax.random.PRNGKey(0))
    opt = pax.optim.adamw(model.parameters(), 1e-2, weight_decay=0.1, mask=r"\.weight$")
    mesh = mesh_1d()
    rules = pax.sharding.fsdp_rules(model, mesh)
    _, s_opt, _ = check_sharded_training(model, opt, mlp_batch(), mesh, rules)
    assert s_opt.learning_rate.sharding.is_fully_replicated


def test_tensor_parallel_mlp_on_a_2d_mesh():
    model = make_mlp(jax.random.PRNGKey(0))
    opt = pax.optim.adam(model.parameters(), 1e-2)
    mesh = mesh_2d()
    rules = pax.sharding.tensor_parallel_rules(model)
    s_model, s_opt, compiled = check_sharded_training(model, opt, mlp_batch(), mesh, rules)
    # Megatron layout: activations and gradients are reduced, no weight is ever gathered.
    assert "all-gather" not in compiled.as_text()
    assert "all-reduce" in compiled.as_text()
    layers = s_model.layers
    assert (spec_of(layers[0].weight), spec_of(layers[0].bias)) == (
        P(None, "model"),
        P("model"),
    )
    assert (spec_of(layers[1].weight), spec_of(layers[1].bias)) == (P("model"), P())
    assert spec_of(layers[2].weight) == P(None, "model")
    # 4 model shards, each replicated over the 2 data rows.
    assert {s.data.shape for s in layers[1].weight.addressable_shards} == {(8, 16)}
    assert spec_of(s_opt.opt_state.inner_state[0].mu[".layers[1].weight"]) == P("model")


@pytest.mark.slow
def test_tensor_parallel_attention_on_a_2d_mesh():
    model = Attention(rng_key=jax.random.PRNGKey(0))
    # SGD, not Adam: the key bias has a zero gradient up to rounding (softmax ignores a shift of
    # the logits), which Adam would scale up to full steps of noise.
    opt = pax.optim.sgd(model.parameters(), 1e-1, momentum=0.9)
    mesh = mesh_2d()
    rules = pax.sharding.tensor_parallel_rules(model)
    s_model, _, _ = check_sharded_training(model, opt, attention_batch(), mesh, rules)
    mha = s_model.mha
    for proj in (mha.query_proj, mha.key_proj, mha.value_proj):
        assert spec_of(proj.weight) == P(None, "model")
        assert {s.data.shape for s in proj.weight.addressable_shards} == {(16, 4)}  # one head
    assert spec_of(mha.out_proj.weight) == P("model")
    assert spec_of(mha.out_proj.bias) == P()


# --- the rules ----------------------------------------------------------------------------------


def test_shard_is_device_put_of_shardings():
    model = make_mlp(jax.random.PRNGKey(0))
    mesh = mesh_2d()
    rules = [(r"\.weight$", P(None, "model")), (r".*", P())]
    a = pax.sharding.shard(model, mesh, rules)
    b = jax.device_put(model, pax.sharding.shardings(model, mesh, rules))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert x.sharding == y.sharding
        np.testing.assert_array_equal(x, y)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(model)


def test_first_matching_rule_wins_and_specs_follow_the_rules():
    model = make_mlp(jax.random.PRNGKey(0))
    rules = [
        (r"^\.layers\[0\]\.weight$", P("model")),
        (re.compile(r"\.weight$"), P(None, "model")),
        (r".*", P()),
    ]
    specs = pax.sharding.specs(model, mesh_2d(), rules)
    assert specs.layers[0].weight == P("model")
    assert specs.layers[1].weight == P(None, "model")
    assert specs.layers[1].bias == P()


def test_optimizer_moments_are_matched_by_their_parameter_key_path():
    model = make_mlp(jax.random.PRNGKey(0))
    opt = pax.optim.from_optax(optax.adam(1e-3))(model.parameters())
    keys = {full: key for key, full, _ in rule_keys((model, opt))}
    assert keys["[0].layers[1].weight"] == "[0].layers[1].weight"
    assert keys["[1].opt_state[0].mu['.layers[1].weight']"] == ".layers[1].weight"
    assert keys["[1].opt_state[0].count"] == "[1].opt_state[0].count"
    # An anchored rule written for the model places the moments, even inside a tuple.
    rules = [(r"^\.layers\[1\]\.weight$", P("model")), (r".*", P())]
    specs = pax.sharding.specs(opt, mesh_2d(), rules)
    assert specs.opt_state[0].mu[".layers[1].weight"] == P("model")
    assert specs.opt_state[0].nu[".layers[1].weight"] == P("model")
    assert specs.opt_state[0].mu[".layers[0].weight"] == P()


def test_preset_rules_match_exact_key_paths_also_under_a_tuple():
    model = make_mlp(jax.random.PRNGKey(0))
    rules = pax.sharding.tensor_parallel_rules(model)
    mesh = mesh_2d()

    class Outer(pax.Module):
        def __init__(self):
            super().__init__()
            self.inner = make_mlp(jax.random.PRNGKey(1))

    # ".layers[0].weight" of the root MLP is not ".inner.layers[0].weight".
    specs = pax.sharding.specs(Outer(), mesh, rules)
    assert specs.inner.layers[0].weight == P()
    specs = pax.sharding.specs((model, {"x": model}), mesh, rules)
    assert specs[0].layers[0].weight == P(None, "model")
    assert specs[1]["x"].layers[0].weight == P()  # two indices deep: not the same key path


def test_shardings_work_on_eval_shape_outputs():
    abstract = jax.eval_shape(make_mlp, jax.random.PRNGKey(0))
    mesh = mesh_2d()
    rules = pax.sharding.tensor_parallel_rules(abstract)
    out = pax.sharding.shardings(abstract, mesh, rules)
    assert out.layers[0].weight == NamedSharding(mesh, P(None, "model"))
    assert pax.sharding.fsdp_rules(abstract, mesh)  # shapes are all it needs


def test_typed_rng_keys_and_integer_leaves():
    tree = {"key": jax.random.key(0), "keys": jax.random.split(jax.random.key(0), 8)}
    tree["step"] = jnp.arange(8, dtype=jnp.int32)
    mesh = mesh_1d()
    placed = pax.sharding.shard(tree, mesh, [(r"keys|step", P("data")), (r".*", P())])
    assert spec_of(placed["keys"]) == P("data")
    assert len({s.data.shape for s in placed["keys"].addressable_shards}) == 1
    np.testing.assert_array_equal(
        jax.random.key_data(placed["keys"]), jax.random.key_data(tree["keys"])
    )
    # fsdp_rules leaves integer leaves and keys replicated.
    specs = pax.sharding.specs(tree, mesh, pax.sharding.fsdp_rules(tree, mesh))
    assert specs == {"key": P(), "keys": P(), "step": P()}


# --- sharded initialization ----------------------------------------------------------------------


def test_init_sharded_equals_the_unsharded_model_bit_for_bit():
    mesh = mesh_2d()
    key = jax.random.PRNGKey(3)
    rules = pax.sharding.tensor_parallel_rules(jax.eval_shape(make_mlp, key))
    model = pax.sharding.init_sharded(make_mlp, mesh, rules, key)
    reference = make_mlp(key)
    assert jax.tree_util.tree_structure(model) == jax.tree_util.tree_structure(reference)
    for a, b in zip(jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    expected = pax.sharding.shardings(reference, mesh, rules)
    assert same_shardings(model, expected) == []
    assert {s.data.shape for s in model.layers[0].weight.addressable_shards} == {(8, 8)}
    # The model works.
    x, _ = mlp_batch()
    np.testing.assert_allclose(model(x), reference(x), rtol=1e-5, atol=1e-6)


def test_sharded_init_by_hand_never_holds_the_whole_model_on_one_device():
    mesh = mesh_1d()

    def make(key):
        return pax.nn.MLP([512, 2048, 512], rng_key=key)  # 2.1M parameters, 8.4 MB

    key = jax.random.PRNGKey(0)
    abstract = jax.eval_shape(make, key)
    rules = pax.sharding.fsdp_rules(abstract, mesh)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(abstract))
    by_hand = jax.jit(make, out_shardings=pax.sharding.shardings(abstract, mesh, rules))
    memory = by_hand.lower(key).compile().memory_analysis()
    # Each device computes its shards only: its outputs are 1/8 of the model, and with the
    # random bits it draws for them it never needs half of the model's size.
    assert memory.output_size_in_bytes <= total // 8 + 1024
    assert memory.output_size_in_bytes + memory.temp_size_in_bytes < total // 2
    # init_sharded gives the same arrays, placed alike.
    model, reference = pax.sharding.init_sharded(make, mesh, rules, key), by_hand(key)
    for a, b in zip(jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(reference)):
        assert a.sharding == b.sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_sharded_model_and_optimizer_together():
    mesh = mesh_1d()

    def make(key):
        model = make_mlp(key)
        return model, pax.optim.adam(model.parameters(), 1e-2)

    key = jax.random.PRNGKey(0)
    rules = pax.sharding.fsdp_rules(jax.eval_shape(make, key), mesh)
    model, opt = pax.sharding.init_sharded(make, mesh, rules, key)
    ref_model, ref_opt = make(key)
    for a, b in zip(
        jax.tree_util.tree_leaves((model, opt)), jax.tree_util.tree_leaves((ref_model, ref_opt))
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert spec_of(opt.opt_state.inner_state[0].mu[".layers[0].weight"]) == P(None, "data")
    assert opt.learning_rate.sharding.is_fully_replicated


def test_init_sharded_with_the_global_key_names_the_fix():
    with pytest.raises(RuntimeError, match=r"rng_key=key"):
        pax.sharding.init_sharded(lambda: pax.nn.Linear(2, 8), mesh_1d(), [(r".*", P())])


# --- errors --------------------------------------------------------------------------------------


def test_a_leaf_matched_by_no_rule_names_its_key_path_and_the_catch_all():
    model = make_mlp(jax.random.PRNGKey(0))
    with pytest.raises(
        ValueError,
        match=r"no rule matches the leaf \.layers\[0\]\.bias .*f32\[32\].*\(r\"\.\*\", P\(\)\)",
    ):
        pax.sharding.shard(model, mesh_2d(), [(r"\.weight$", P())])


def test_an_unmatched_leaf_of_a_tuple_explains_start_anchors():
    model = make_mlp(jax.random.PRNGKey(0))
    rules = [(r"^\.layers", P())]
    pax.sharding.specs(model, mesh_2d(), rules)  # the model alone: matched
    with pytest.raises(ValueError, match=r"starts with \[0\] as the tree is a tuple.*anchor"):
        pax.sharding.specs((model,), mesh_2d(), rules)


def test_an_unmatched_optimizer_moment_names_its_parameter():
    model = make_mlp(jax.random.PRNGKey(0))
    opt = pax.optim.from_optax(optax.adam(1e-3))(model.parameters())
    with pytest.raises(ValueError, match=r"no rule matches the leaf \.opt_state\[0\]\.count"):
        pax.sharding.shardings(opt, mesh_2d(), [(r"\.weight$|\.bias$", P())])
    match = r"\.opt_state\[0\]\.mu\['\.layers\[0\]\.bias'\] \(matched by its parameter's key path '\.layers\[0\]\.bias'\)"
    with pytest.raises(ValueError, match=match):
        pax.sharding.shardings(opt, mesh_2d(), [(r"count|\.weight$", P())])


def test_a_spec_longer_than_the_leaf_rank():
    model = make_mlp(jax.random.PRNGKey(0))
    with pytest.raises(
        ValueError,
        match=r"gives the leaf \.layers\[0\]\.bias \(f32\[32\]\) a spec of 2 dimensions, but the leaf has 1",
    ):
        pax.sharding.shard(model, mesh_2d(), [(r".*", P(None, "model"))])


def test_a_dimension_not_divisible_by_the_axis_size():
    model = make_mlp(jax.random.PRNGKey(0))
    with pytest.raises(
        ValueError,
        match=r"\.layers\[2\]\.bias has shape \(4,\); .* dimension 0 \(of size 4\) over the mesh axis 'data' of size 8",
    ):
        pax.sharding.shard(model, mesh_1d(), [(r".*", P("data"))])
    with pytest.raises(ValueError, match=r"over the mesh axis \('data', 'model'\) of size 8"):
        pax.sharding.shard(model, mesh_2d(), [(r"bias", P(("data", "model"))), (r".*", P())])


def test_an_axis_not_in_the_mesh():
    model = make_mlp(jax.random.PRNGKey(0))
    with pytest.raises(
        ValueError,
        match=r"rule 0 \('\\\\.weight\$', P\(None, 'modle'\)\) names the mesh axis 'modle', but the mesh has the axes \('data', 'model'\)",
    ):
        pax.sharding.shard(model, mesh_2d(), [(r"\.weight$", P(None, "modle")), (r".*", P())])
    with pytest.raises(ValueError, match=r"uses a mesh axis more than once"):
        pax.sharding.shard(model, mesh_2d(), [(r".*", P("data", "data"))])


@pytest.mark.parametrize(
    "rules, match",
    [
        ((r".*", P()), r"rules is a single pair .*put it in a list"),
        ({r".*": P()}, r"rules must be a list of pairs, got dict"),
        (r".*", r"rules must be a list of pairs, got str"),
        ([r".*"], r"rule 0 is '\.\*', not a \(pattern, spec\) pair"),
        ([(r".*", P(), 1)], r"rule 0 is .*not a \(pattern, spec\) pair"),
        ([(1, P())], r"the pattern of rule 0 is a int, not a str or re.Pattern"),
        (
            [(r".*", ("data",))],
            r"the spec of rule 0 \('\.\*'\) is \('data',\), not a jax.sharding.PartitionSpec",
        ),
        ([(r".*", P(1))], r"has the spec entry 1; an entry must be None, a mesh axis name"),
    ],
)
def test_bad_rule_forms(rules, match):
    with pytest.raises(TypeError, match=match):
        pax.sharding.shardings(make_mlp(jax.random.PRNGKey(0)), mesh_2d(), rules)


def test_an_invalid_regular_expression():
    with pytest.raises(
        ValueError, match=r"the pattern '\[' of rule 0 is not a valid regular expression"
    ):
        pax.sharding.shardings(make_mlp(jax.random.PRNGKey(0)), mesh_2d(), [("[", P())])


def test_mesh_must_be_a_mesh():
    model = make_mlp(jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match=r"mesh must be a jax.sharding.Mesh, got list"):
        pax.sharding.shard(model, jax.devices(), [(r".*", P())])
    with pytest.raises(TypeError, match=r"shard_batch: mesh must be a jax.sharding.Mesh"):
        pax.sharding.shard_batch(jnp.ones((8, 2)), None)


def test_preset_errors():
    model = make_mlp(jax.random.PRNGKey(0))
    with pytest.raises(
        ValueError, match=r"fsdp_rules: the mesh has no axis 'data'; its axes are \('model',\)"
    ):
        pax.sharding.fsdp_rules(model, mesh_1d("model"))
    with pytest.raises(
        ValueError,
        match=r"tensor_parallel_rules: dict holds no pax.nn.Linear, MLP or MultiHeadAttention",
    ):
        pax.sharding.tensor_parallel_rules({"w": jnp.ones((2, 2))})
    stack = pax.nn.Stack.from_layers([pax.nn.Linear(4, 4) for _ in range(2)])
    with pytest.raises(ValueError, match=r"has a weight f32\[2,4,4\], not 2-D"):
        pax.sharding.tensor_parallel_rules(stack)


def test_shard_batch_errors():
    mesh = mesh_1d()
    with pytest.raises(ValueError, match=r"the array at \[1\] is f32\[6,2\]; .*'data' of size 8"):
        pax.sharding.shard_batch((jnp.ones((8, 2)), jnp.ones((6, 2))), mesh)
    with pytest.raises(ValueError, match=r"the array at the root is f32\[\]"):
        pax.sharding.shard_batch(jnp.float32(1), mesh)
    with pytest.raises(ValueError, match=r"shard_batch: the mesh has no axis 'batch'"):
        pax.sharding.shard_batch(jnp.ones((8, 2)), mesh, "batch")


def test_make_mesh_has_auto_axes_and_fsdp_refuses_explicit_ones():
    mesh = pax.sharding.make_mesh((2, 4), ("data", "model"))
    assert dict(mesh.shape) == {"data": 2, "model": 4}
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 2
    explicit = jax.make_mesh((8,), ("data",), (jax.sharding.AxisType.Explicit,))
    model = make_mlp(jax.random.PRNGKey(0))
    with pytest.raises(
        ValueError,
        match=r"the mesh axis 'data' is Explicit .*Fix: a mesh with Auto axes, mesh = pax.sharding.make_mesh\(\(8,\), \('data',\)\)",
    ):
        pax.sharding.fsdp_rules(model, explicit)


class VelocitySGD(pax.Optimizer):
    """An optimizer whose state is a copy of the model's parameters (not a KeyPathDict)."""

    def __init__(self, params):
        self.register_state_subtree("velocity", jax.tree_util.tree_map(jnp.zeros_like, params))

    def step(self, grads, model):
        self.velocity = jax.tree_util.tree_map(lambda v, g: 0.9 * v + g, self.velocity, grads)
        params = jax.tree_util.tree_map(lambda p, v: p - 0.1 * v, model.parameters(), self.velocity)
        return model.update(params)


def test_presets_made_from_model_and_optimizer_place_a_state_copy_of_the_model():
    model = make_mlp(jax.random.PRNGKey(0))
    opt = VelocitySGD(model.parameters())
    mesh = mesh_2d()
    for rules in (
        pax.sharding.fsdp_rules((model, opt), mesh),
        pax.sharding.tensor_parallel_rules((model, opt)),
    ):
        s_model, s_opt = pax.sharding.specs((model, opt), mesh, rules)
        assert s_opt.velocity.layers[0].weight == s_model.layers[0].weight != P()
        assert s_opt.velocity.layers[1].weight == s_model.layers[1].weight != P()
    # Made from the model alone, the velocity's key paths (.velocity.layers...) are not the
    # model's: the catch-all replicates them.
    rules = pax.sharding.tensor_parallel_rules(model)
    s_model, s_opt = pax.sharding.specs((model, opt), mesh, rules)
    assert s_opt.velocity.layers[0].weight == P() != s_model.layers[0].weight


def test_public_names_resolve_and_have_examples():
    assert len(pax.sharding.__all__) == len(set(pax.sharding.__all__))
    for name in pax.sharding.__all__:
        assert "Example:" in getattr(pax.sharding, name).__doc__, name
    assert pax.sharding is pax.__dict__["sharding"]
