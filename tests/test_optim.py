"""pax.Optimizer, pax.optim.from_optax and the ready-made optimizers, against optax; pickling
an optimizer names the fix (pax.save)."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compile_count import count_compilations

import pax
from pax import nn


class SGD(pax.Optimizer):
    """The seed's momentum SGD, as written (no super().__init__())."""

    velocity: pax.Module
    learning_rate: float
    momentum: float

    def __init__(self, params, learning_rate: float = 1e-2, momentum: float = 0.9):
        self.momentum = momentum
        self.learning_rate = learning_rate
        self.register_state_subtree(
            "velocity", jax.tree_util.tree_map(lambda x: jnp.zeros_like(x), params)
        )

    def step(self, grads: pax.Module, model: pax.Module):
        self.velocity = jax.tree_util.tree_map(
            lambda v, g: v * self.momentum + g * self.learning_rate, self.velocity, grads
        )
        params = model.parameters()
        new_params = jax.tree_util.tree_map(lambda p, v: p - v, params, self.velocity)
        return model.update(new_params)


class Norm(pax.Module):
    """A tiny normalisation layer with a `scale` parameter (for weight-decay masks)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_parameter("scale", jnp.ones((dim,)))

    def __call__(self, x):
        return x / jnp.sqrt(jnp.mean(x**2, axis=-1, keepdims=True) + 1e-6) * self.scale


def make_net():
    return pax.nn.Sequential(pax.nn.Linear(3, 4), Norm(4), jax.nn.relu, pax.nn.Linear(4, 2))


def random_grads(params, seed):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def optax_reference(tx, net, n_steps):
    """Plain optax on model.parameters() under jit: the parameter leaves after each step."""

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = net.parameters()
    state = tx.init(params)
    out = []
    for i in range(n_steps):
        params, state = step(params, state, random_grads(params, i))
        out.append(jax.tree_util.tree_leaves(params))
    return out


@jax.jit
def jit_step(net, opt, grads):
    return opt.step(grads, net), opt


def pax_run(opt, net, n_steps):
    out = []
    for i in range(n_steps):
        net, opt = jit_step(net, opt, random_grads(net.parameters(), i))
        out.append(jax.tree_util.tree_leaves(net.parameters()))
    return out


def assert_bit_identical(got, expected):
    assert len(got) == len(expected)
    for g_step, e_step in zip(got, expected):
        assert len(g_step) == len(e_step)
        for g, e in zip(g_step, e_step):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(e))


TRANSFORMS = {
    "sgd": lambda: optax.sgd(0.1),
    "momentum": lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
    "clip+adam": lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2)),
    "schedule": lambda: optax.sgd(optax.exponential_decay(0.1, 1, 0.5)),
    "multisteps": lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2),
    "inject": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_from_optax_is_bit_identical_to_optax(name):
    net = make_net()
    tx = TRANSFORMS[name]()
    opt = pax.optim.from_optax(tx)(net.parameters())
    assert_bit_identical(pax_run(opt, net, 3), optax_reference(tx, net, 3))


def test_ready_made_optimizers_match_optax():
    net = make_net()
    schedule = optax.linear_schedule(1e-2, 1e-3, 2)
    cases = [
        (pax.optim.sgd(net.parameters(), 0.1), optax.sgd(0.1)),
        (
            pax.optim.sgd(net.parameters(), 0.1, momentum=0.9, nesterov=True),
            optax.sgd(0.1, momentum=0.9, nesterov=True),
        ),
        (pax.optim.adam(net.parameters(), 1e-2, b1=0.8), optax.adam(1e-2, b1=0.8)),
        (pax.optim.adam(net.parameters(), schedule), optax.adam(schedule)),
        (
            pax.optim.adamw(net.parameters(), 1e-2, weight_decay=0.1),
            optax.adamw(1e-2, weight_decay=0.1),
        ),
    ]
    for opt, tx in cases:
        assert_bit_identical(pax_run(opt, net, 3), optax_reference(tx, net, 3))


def test_adamw_mask_by_key_path_skips_bias_and_norm_scale():
    net = make_net()
    no_decay = lambda path: not path.endswith((".bias", ".scale"))
    opt = pax.optim.adamw(net.parameters(), 1e-2, weight_decay=0.5, mask=no_decay)
    # The same mask written as a tree for optax over the module tree.
    paths_and_leaves = jax.tree_util.tree_leaves_with_path(net.parameters())
    mask_leaves = [no_decay(jax.tree_util.keystr(p)) for p, _ in paths_and_leaves]
    mask_tree = jax.tree_util.tree_structure(net.parameters()).unflatten(mask_leaves)
    assert mask_leaves.count(False) == 3  # two biases and one scale
    tx = optax.adamw(1e-2, weight_decay=0.5, mask=mask_tree)
    assert_bit_identical(pax_run(opt, net, 2), optax_reference(tx, net, 2))

    # With zero gradients only weight decay moves a parameter: masked ones stay put.
    zeros = jax.tree_util.tree_map(jnp.zeros_like, net.parameters())
    opt = pax.optim.adamw(net.parameters(), 1e-2, weight_decay=0.5, mask=no_decay)
    new = opt.step(zeros, net)
    before = jax.tree_util.tree_leaves(net.parameters())
    after = jax.tree_util.tree_leaves(new.parameters())
    for decays, b, a in zip(mask_leaves, before, after):
        if decays:
            np.testing.assert_allclose(a, b * (1 - 1e-2 * 0.5), rtol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)


def test_by_key_path_labels_in_multi_transform():
    net = make_net()
    labels = pax.optim.by_key_path(lambda path: "frozen" if ".modules[0]" in path else "train")
    tx = optax.multi_transform(
        {"frozen": optax.set_to_zero(), "train": optax.sgd(0.1)}, param_labels=labels
    )
    opt = pax.optim.from_optax(tx)(net.parameters())
    new = opt.step(random_grads(net.parameters(), 0), net)
    np.testing.assert_array_equal(new.modules[0].weight, net.modules[0].weight)
    assert not np.array_equal(new.modules[3].weight, net.modules[3].weight)
    assert labels == pax.optim.by_key_path(labels.fn)


def test_seed_momentum_sgd_works_as_written():
    net = make_net()
    opt = SGD(net.parameters(), learning_rate=0.1, momentum=0.9)
    params = [np.asarray(x) for x in jax.tree_util.tree_leaves(net.parameters())]
    velocity = [np.zeros_like(p) for p in params]
    step = jax.jit(lambda net, opt, grads: (opt.step(grads, net), opt))
    for i in range(3):
        grads = random_grads(net.parameters(), i)
        net, opt = step(net, opt, grads)
        for j, g in enumerate(jax.tree_util.tree_leaves(grads)):
            velocity[j] = velocity[j] * 0.9 + np.asarray(g) * 0.1
            params[j] = params[j] - velocity[j]
        for p, q in zip(jax.tree_util.tree_leaves(net.parameters()), params):
            np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)


def test_frozen_parameters_are_not_optimized():
    net = make_net()
    net.modules[0] = net.modules[0].freeze()
    opt = pax.optim.adam(net.parameters(), 1e-2)
    assert opt.key_paths == (".modules[1].scale", ".modules[3].weight", ".modules[3].bias")
    frozen = np.asarray(net.modules[0].weight)
    step = jax.jit(lambda net, opt, grads: (opt.step(grads, net), opt))
    new, opt = step(net, opt, random_grads(net.parameters(), 0))
    new, opt = step(new, opt, random_grads(net.parameters(), 1))
    np.testing.assert_array_equal(new.modules[0].weight, frozen)
    assert not np.array_equal(new.modules[3].weight, net.modules[3].weight)


def test_equal_treedefs_and_no_recompilation():
    net = make_net()
    tx = optax.adam(1e-3)
    builder = pax.optim.from_optax(tx)
    assert builder == pax.optim.from_optax(tx)
    assert hash(builder) == hash(pax.optim.from_optax(tx))
    assert builder != pax.optim.from_optax(optax.adam(1e-3))
    a, b = builder(net.parameters()), pax.optim.from_optax(tx)(net.parameters())
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    c, d = pax.optim.adam(net.parameters(), 1e-3), pax.optim.adam(net.parameters(), 1e-3)
    assert jax.tree_util.tree_structure(c) == jax.tree_util.tree_structure(d)

    step = jax.jit(lambda net, opt, grads: (opt.step(grads, net), opt))
    grads = random_grads(net.parameters(), 0)
    with count_compilations(step) as compilations:
        new, a = step(net, a, grads)
        new, a = step(new, a, grads)
        new, _ = step(new, b, grads)  # a rebuilt optimizer of the same transform
    assert compilations() == 1


def test_round_trip_flatten_and_device_put():
    net = make_net()
    opt = pax.optim.adam(net.parameters(), 1e-2)
    grads = random_grads(net.parameters(), 0)
    net = opt.step(grads, net)
    leaves, treedef = jax.tree_util.tree_flatten(opt)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(back) is pax.optim.OptaxOptimizer
    assert jax.tree_util.tree_structure(back) == treedef
    moved = jax.device_put(opt, jax.devices()[1])
    assert jax.tree_util.tree_structure(moved) == treedef
    assert all(x.devices() == {jax.devices()[1]} for x in jax.tree_util.tree_leaves(moved))
    expected = jax.tree_util.tree_leaves(opt.step(grads, net).parameters())
    for other in (back, moved):
        got = jax.tree_util.tree_leaves(other.step(grads, net).parameters())
        assert_bit_identical([got], [expected])


def test_learning_rate_can_be_read_and_set_without_recompiling():
    net = make_net()
    opt = pax.optim.adam(net.parameters(), 1e-2)
    np.testing.assert_allclose(opt.learning_rate, 1e-2)

    @jax.jit
    def step(net, opt, grads, lr):
        opt.learning_rate = lr
        return opt.step(grads, net), opt

    grads = random_grads(net.parameters(), 0)
    with count_compilations(step) as compilations:
        new, opt = step(net, opt, grads, 0.0)
        assert_bit_identical(
            [jax.tree_util.tree_leaves(new.parameters())],
            [jax.tree_util.tree_leaves(net.parameters())],
        )
        new, opt = step(new, opt, grads, 1e-3)
    np.testing.assert_allclose(opt.learning_rate, 1e-3)
    assert compilations() == 1
    opt.set_hyperparams(learning_rate=0.5)
    assert opt.hyperparams == {"learning_rate": opt.learning_rate}
    np.testing.assert_allclose(opt.hyperparams["learning_rate"], 0.5)


def test_hyperparams_under_chain_and_multisteps():
    net = make_net()
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    tx = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0), inner), 2)
    opt = pax.optim.from_optax(tx)(net.parameters())
    opt.set_hyperparams(learning_rate=0.2, momentum=0.5)
    np.testing.assert_allclose(opt.hyperparams["momentum"], 0.5)
    np.testing.assert_allclose(opt.learning_rate, 0.2)


# --- bad input ---------------------------------------------------------------------------------


class Counting(pax.Module):
    def __init__(self):
        super().__init__()
        self.fc = pax.nn.Linear(3, 2)
        self.register_state("count", jnp.array(0))

    def __call__(self, x):
        self.count = self.count + 1
        return self.fc(x)


def test_grads_of_the_whole_model_are_rejected():
    net = Counting()
    opt = pax.optim.adam(net.parameters(), 1e-3)

    def loss(model, x):
        return jnp.sum(model(x))

    with pax.discard_state_changes():  # only the gradients' structure is looked at here
        grads = jax.grad(loss, allow_int=True)(net, jnp.ones((1, 3)))
    with pytest.raises(
        ValueError,
        match=r"OptaxOptimizer.step: `grads` does not have the "
        r"structure of model.parameters\(\): at \.count.*Fix: take gradients",
    ):
        opt.step(grads, net)


def test_grads_of_another_shape_are_rejected():
    net = pax.nn.Linear(3, 2)
    opt = pax.optim.sgd(net.parameters(), 0.1)
    grads = jax.tree_util.tree_map(jnp.ones_like, net.parameters())
    grads.bias = jnp.ones((1,))
    with pytest.raises(
        ValueError,
        match=r"gradient at \.bias has shape \(1,\) but the "
        r"parameter has shape \(2,\)",
    ):
        opt.step(grads, net)


def test_model_with_other_shapes_is_rejected():
    opt = pax.optim.adam(pax.nn.Linear(2, 3).parameters(), 1e-3)
    other = pax.nn.Linear(2, 4)
    grads = jax.tree_util.tree_map(jnp.ones_like, other.parameters())
    with pytest.raises(
        ValueError,
        match=r"parameter \.weight is float32\[2, 4\] but the "
        r"optimizer was built for float32\[2, 3\].*Fix: build a new optimizer",
    ):
        opt.step(grads, other)


def test_model_whose_structure_changed_is_rejected():
    net = make_net()
    opt = pax.optim.adam(net.parameters(), 1e-3)
    net.modules[0] = net.modules[0].freeze()
    grads = random_grads(net.parameters(), 0)
    with pytest.raises(
        ValueError,
        match=r"'\.modules\[0\]\.weight' was a trainable parameter "
        r"when the optimizer was built.*frozen",
    ):
        opt.step(grads, net)
    old_grads = random_grads(make_net().parameters(), 0)
    net.modules.append(pax.nn.Linear(2, 2))
    opt = pax.optim.adam(net.parameters(), 1e-3)
    with pytest.raises(
        ValueError,
        match=r"`grads` does not have the structure of model.parameters\(\): at \.modules: "
        r"list of length 5 \(model.parameters\(\)\) vs list of length 4 \(grads\)",
    ):
        opt.step(old_grads, net)
    opt = pax.optim.adam(make_net().parameters(), 1e-3)
    with pytest.raises(
        ValueError,
        match=r"'\.modules\[4\]\.weight' is a trainable parameter "
        r"of the model but not one the optimizer was built for",
    ):
        opt.step(random_grads(net.parameters(), 0), net)


def test_bad_arguments_are_rejected():
    net = pax.nn.Linear(2, 1)
    with pytest.raises(TypeError, match=r"expected an optax.GradientTransformation.*got str"):
        pax.optim.from_optax("adam")
    with pytest.raises(TypeError, match=r"params must be a pax.Module.*got dict"):
        pax.optim.from_optax(optax.sgd(0.1))({"w": jnp.ones(2)})
    opt = pax.optim.from_optax(optax.sgd(0.1))(net.parameters())
    with pytest.raises(TypeError, match=r"model must be a pax.Module, got dict"):
        opt.step(net.parameters(), {"w": 1})
    with pytest.raises(
        ValueError,
        match=r"has no injected hyperparameters.*Fix: wrap the optax "
        r"factory with optax.inject_hyperparams",
    ):
        opt.hyperparams
    with pytest.raises(ValueError, match=r"has no injected hyperparameter 'learning_rate'"):
        opt.learning_rate
    opt = pax.optim.adam(net.parameters(), 1e-3)
    with pytest.raises(ValueError, match=r"has no injected hyperparameter 'b3'"):
        opt.set_hyperparams(b3=0.1)
    with pytest.raises(ValueError, match=r"learning_rate must have shape \(\), got \(2,\)"):
        opt.learning_rate = jnp.ones(2)
    with pytest.raises(TypeError, match=r"mask must be a function of a key-path string"):
        pax.optim.adamw(net.parameters(), 1e-3, mask=[True, False])
    with pytest.raises(TypeError, match=r"by_key_path: expected a function"):
        pax.optim.by_key_path(3)


def test_optimizer_without_step_explains_the_fix():
    class NoStep(pax.Optimizer):
        pass

    with pytest.raises(NotImplementedError, match=r"NoStep.step is not implemented.*def step"):
        NoStep().step(None, pax.nn.Linear(1, 1))


def test_repr_is_short():
    opt = pax.optim.adam(make_net().parameters(), 1e-3)
    text = repr(opt)
    assert text.startswith("OptaxOptimizer(parameters=5, opt_state=InjectStatefulHyperparams")
    assert "mu={5 parameters}" in text


def test_checkpoint_round_trip(tmp_path):
    net = make_net()
    opt = pax.optim.adam(net.parameters(), 1e-2)
    net = opt.step(random_grads(net.parameters(), 0), net)
    pax.save(tmp_path / "opt", opt)
    restored = pax.load(tmp_path / "opt", pax.optim.adam(make_net().parameters(), 1e-2))
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(opt)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(opt)):
        np.testing.assert_array_equal(a, b)


# --- pickling ---------------------------------------------------------------------------------


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
