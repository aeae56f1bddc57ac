"""pax.utils.build_update_fn: training under jit, its checks and its errors."""

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

    def __init__(self, params, learning_rate: float = 1e-2, momentum: float = 0.9):
        self.momentum = momentum
        self.learning_rate = learning_rate
        self.register_state_subtree(
            "velocity", jax.tree_util.tree_map(lambda x: jnp.zeros_like(x), params)
        )

    def step(self, grads, model):
        self.velocity = jax.tree_util.tree_map(
            lambda v, g: v * self.momentum + g * self.learning_rate, self.velocity, grads
        )
        params = model.parameters()
        new_params = jax.tree_util.tree_map(lambda p, v: p - v, params, self.velocity)
        return model.update(new_params)


def mse_loss(params, model, inputs):
    model = model.update(params)
    x, y = inputs
    loss = jnp.mean((model(x) - y) ** 2)
    return loss, (loss, model)


def test_regression_trains_to_a_low_loss_without_recompiling():
    key_x, key_w = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(key_x, (64, 3))
    y = x @ jax.random.normal(key_w, (3, 1)) + 0.5
    net = pax.nn.Linear(3, 1)
    opt = pax.optim.adam(net.parameters(), 0.1)
    update_fn = pax.utils.build_update_fn(mse_loss)
    with count_compilations(update_fn.step) as compilations:
        first, net, opt = update_fn(net, opt, (x, y))
        for _ in range(150):
            loss, net, opt = update_fn(net, opt, (x, y))
    assert float(loss) < 1e-3 < float(first)
    assert compilations() == 1


def test_classifier_trains_to_a_low_loss():
    key_a, key_b = jax.random.split(jax.random.PRNGKey(2))
    x = jnp.concatenate(
        [jax.random.normal(key_a, (32, 2)) + 2, jax.random.normal(key_b, (32, 2)) - 2]
    )
    labels = jnp.concatenate([jnp.zeros(32, jnp.int32), jnp.ones(32, jnp.int32)])

    def loss_fn(params, model, inputs):
        model = model.update(params)
        x, labels = inputs
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (loss, model)

    net = pax.nn.MLP([2, 16, 2])
    net.layers[0] = net.layers[0].freeze()
    frozen = np.asarray(net.layers[0].weight)
    opt = pax.optim.sgd(net.parameters(), 0.5, momentum=0.9)
    update_fn = pax.utils.build_update_fn(loss_fn)
    for _ in range(60):
        loss, net, opt = update_fn(net, opt, (x, labels))
    assert float(loss) < 0.05
    np.testing.assert_array_equal(net.layers[0].weight, frozen)
    accuracy = jnp.mean(jnp.argmax(net(x), -1) == labels)
    assert float(accuracy) == 1.0


def test_seed_sgd_with_update_fn_matches_a_manual_step():
    x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    net = pax.nn.Linear(2, 1)
    opt = SGD(net.parameters(), learning_rate=0.1, momentum=0.9)
    grads, _ = jax.grad(mse_loss, has_aux=True)(net.parameters(), net, (x, y))
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, net.parameters(), grads)
    _, new, opt = pax.utils.build_update_fn(mse_loss)(net, opt, (x, y))
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(opt.velocity.bias, 0.1 * grads.bias, rtol=1e-6)


def test_donate_and_no_jit_give_the_same_step():
    x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
    net = pax.nn.Linear(2, 1)
    results = []
    for kwargs in ({"jit": False}, {"donate": True}):
        model, opt = net.copy(), pax.optim.adam(net.parameters(), 1e-2)
        model, opt = jax.tree_util.tree_map(jnp.copy, (model, opt))
        update_fn = pax.utils.build_update_fn(mse_loss, **kwargs)
        loss, model, opt = update_fn(model, opt, (x, y))
        results.append(jax.tree_util.tree_leaves((loss, model, opt)))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6)


class PythonCounter(pax.Module):
    def __init__(self):
        super().__init__()
        self.fc = pax.nn.Linear(2, 1)
        self.count = 0

    def __call__(self, x):
        self.count = self.count + 1
        return self.fc(x)


def test_python_counter_in_call_is_named_and_explained():
    net = PythonCounter()
    opt = pax.optim.sgd(net.parameters(), 0.1)
    update_fn = pax.utils.build_update_fn(mse_loss)
    with pytest.raises(
        pax.StructureChangedError,
        match=r"model returned by loss_fn changed.*static attribute PythonCounter\.count is 0 "
        r"\(before\) but 1 \(after\).*jax\.jit.*register_state\('count', jnp\.array\(0\)\)",
    ):
        update_fn(net, opt, (jnp.ones((1, 2)), jnp.zeros((1, 1))))


def test_loss_fn_with_a_wrong_output_is_explained():
    net = pax.nn.Linear(2, 1)
    opt = pax.optim.sgd(net.parameters(), 0.1)

    def bad_loss(params, model, inputs):
        loss = jnp.mean(model.update(params)(inputs[0]))
        return loss, model

    update_fn = pax.utils.build_update_fn(bad_loss)
    with pytest.raises(
        TypeError,
        match=r"(?s)loss_fn must return \(loss, \(loss, model\)\).*got a "
        r"tuple of 2: \(f32\[\], Linear\).*model = model.update\(params\)",
    ):
        update_fn(net, opt, (jnp.ones((1, 2)), None))
    with pytest.raises(TypeError, match=r"build_update_fn: loss_fn must be a function, got int"):
        pax.utils.build_update_fn(3)
    with pytest.raises(ValueError, match=r"donate=True needs jit=True"):
        pax.utils.build_update_fn(mse_loss, jit=False, donate=True)


def test_bad_arguments_are_explained():
    net = pax.nn.Linear(2, 1)
    opt = pax.optim.sgd(net.parameters(), 0.1)
    update_fn = pax.utils.build_update_fn(mse_loss, jit=False)
    inputs = (jnp.ones((1, 2)), jnp.zeros((1, 1)))
    with pytest.raises(
        TypeError,
        match=r"first argument is an optimizer.*update_fn\(model, "
        r"opt, inputs\)",
    ):
        update_fn(opt, net, inputs)
    with pytest.raises(
        TypeError,
        match=r"optimizer must be a pax.Optimizer.*got GradientTransformationExtraArgs. "
        r"Fix: wrap the optax transform: opt = pax.optim.from_optax\(tx\)",
    ):
        update_fn(net, optax.sgd(0.1), inputs)
    with pytest.raises(TypeError, match=r"model must be a pax.Module, got dict"):
        update_fn({"w": 1}, opt, inputs)


class Scale(pax.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_parameter("scale", jnp.ones((dim,)))

    def __call__(self, x):
        return x * self.scale


def test_optimizer_built_for_another_model_is_named():
    inputs = (jnp.ones((1, 2)), jnp.zeros((1, 1)))
    old = pax.nn.Sequential(pax.nn.Linear(2, 1))
    new = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 1))
    update_fn = pax.utils.build_update_fn(mse_loss)
    with pytest.raises(
        ValueError,
        match=r"update_fn: SGD\.velocity does not match the gradients "
        r"of this model: at \.modules.*SGD\(model\.parameters\(\)\)",
    ):
        update_fn(new, SGD(old.parameters()), inputs)
    narrow, wide = Scale(2), Scale(3)
    with pytest.raises(
        ValueError,
        match=r"SGD\.velocity does not match.*at \.scale: shape \(3,\) vs \(2,\)",
    ):
        update_fn(narrow, SGD(wide.parameters()), inputs)
    with pytest.raises(
        ValueError,
        match=r"OptaxOptimizer\.step: the model does not have the "
        r"parameters this optimizer was built for",
    ):
        update_fn(new, pax.optim.adam(old.parameters(), 1e-3), inputs)


def test_step_that_forgets_to_return_the_model_is_explained():
    class Forgetful(pax.Optimizer):
        def step(self, grads, model):
            model.update(grads)

    net = pax.nn.Linear(2, 1)
    update_fn = pax.utils.build_update_fn(mse_loss)
    with pytest.raises(
        TypeError,
        match=r"Forgetful\.step must return the updated model, got "
        r"NoneType",
    ):
        update_fn(net, Forgetful(), (jnp.ones((1, 2)), jnp.zeros((1, 1))))


def test_update_fn_rejects_shared_submodule_on_first_call():
    block = pax.nn.Linear(1, 1)
    net = pax.nn.Sequential(block, block)
    opt = pax.optim.sgd(net.parameters(), 0.1)

    def loss_fn(params, model, inputs):
        model = model.update(params)
        loss = jnp.mean(model(inputs) ** 2)
        return loss, (loss, model)

    update_fn = pax.utils.build_update_fn(loss_fn)
    with pytest.raises(
        pax.SharedObjectError,
        match=r"\.modules\[1\].*\.modules\[0\]|\.modules\[0\].*\.modules\[1\]",
    ):
        update_fn(net, opt, jnp.ones((2, 1)))


def _loss_fn(params, model, inputs):
    model = model.update(params)
    x, y = inputs
    loss = jnp.mean((model(x) - y) ** 2)
    return loss, (loss, model)


# --- model.update(params) forgotten in loss_fn ------------------------------------------------


def test_forgotten_update_in_loss_fn_is_explained():
    def loss_fn(params, model, inputs):
        x, y = inputs
        loss = jnp.mean((model(x) - y) ** 2)
        return loss, (loss, model)

    net = pax.nn.Linear(1, 1)
    opt = pax.optim.from_optax(optax.sgd(0.1))(net.parameters())
    x = jnp.ones((4, 1))
    for jit in (False, True):
        update_fn = pax.utils.build_update_fn(loss_fn, jit=jit)
        with pytest.raises(ValueError, match=r"model = model\.update\(params\)"):
            update_fn(net, opt, (x, 2 * x))


# --- an optax transform passed as the optimizer ---------------------------------------------


def test_raw_optax_transform_is_explained_before_jax_sees_it():
    update_fn = pax.utils.build_update_fn(_loss_fn)
    net = pax.nn.Linear(1, 1)
    x = jnp.ones((4, 1))
    with pytest.raises(TypeError, match=r"pax\.optim\.from_optax"):
        update_fn(net, optax.adam(1e-3), (x, x))


# --- optimizers that keep the initial parameters ------------------------------------


def test_optimizer_holding_the_initial_parameters_is_accepted():
    net = pax.nn.Linear(1, 1)
    opt = pax.optim.from_optax(optax.contrib.prodigy(1.0))(net.parameters())
    update_fn = pax.utils.build_update_fn(_loss_fn)
    x = jnp.ones((4, 1))
    loss, net, opt = update_fn(net, opt, (x, 2 * x))
    assert np.isfinite(float(loss))


def test_shared_arrays_are_refused_when_donated():
    net = pax.nn.Linear(1, 1)
    opt = pax.optim.from_optax(optax.contrib.prodigy(1.0))(net.parameters())
    update_fn = pax.utils.build_update_fn(_loss_fn, donate=True)
    x = jnp.ones((4, 1))
    with pytest.raises(pax.SharedObjectError, match="donat"):
        update_fn(net, opt, (x, 2 * x))


# --- sharing introduced after the first call -----------------------------------------


def test_sharing_introduced_after_the_first_call_is_caught():
    class Two(pax.Module):
        def __init__(self):
            super().__init__()
            self.a = pax.nn.Linear(1, 1)
            self.b = pax.nn.Linear(1, 1)

        def __call__(self, x):
            return self.b(self.a(x))

    net = Two()
    opt = pax.optim.from_optax(optax.sgd(0.1))(net.parameters())
    update_fn = pax.utils.build_update_fn(_loss_fn)
    x = jnp.ones((4, 1))
    _, net, opt = update_fn(net, opt, (x, 2 * x))
    net.b = net.a
    with pytest.raises(
        pax.SharedObjectError, match=r"tree\[0\]\.b is the same Linear module as tree\[0\]\.a"
    ):
        update_fn(net, opt, (x, 2 * x))


# --- a donated model or optimizer used again ------------------------------------------------


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


def test_a_donated_model_used_directly_names_the_donation():
    net = pax.nn.Linear(2, 1)
    opt = pax.optim.adam(net.parameters(), 1e-2)
    update_fn = pax.utils.build_update_fn(_loss_fn, donate=True)
    batch = (jnp.ones((4, 2)), jnp.zeros((4, 1)))
    _, new_net, new_opt = update_fn(net, opt, batch)
    with pytest.raises(RuntimeError, match=r"Linear: this module was the model passed .*donate"):
        net(batch[0])
    with pytest.raises(RuntimeError, match=r"was the optimizer passed .*use the optimizer"):
        pax.save("/nonexistent/never-written.npz", opt)
    _, new_net, new_opt = update_fn(new_net, new_opt, batch)  # the returned ones keep working
    new_net(batch[0])
