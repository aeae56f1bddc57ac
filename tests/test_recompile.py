"""The hot path: a second jitted training step must reuse the compiled program."""

import jax
import jax.numpy as jnp
import optax
from compile_count import count_compilations

import pax


def loss_fn(params, model, x):
    model = model.update(params)
    loss = jnp.mean(model(x) ** 2)
    return loss, (loss, model)


def test_second_train_step_does_not_recompile():
    tx = optax.adam(1e-3)
    net = pax.nn.MLP([4, 8, 8, 2])
    opt_state = tx.init(net.parameters())
    traces = []

    @jax.jit
    def step(net, opt_state, x):
        traces.append(1)
        params = net.parameters()
        grads, (loss, net) = jax.grad(loss_fn, has_aux=True)(params, net, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return net.update(optax.apply_updates(params, updates)), opt_state, loss

    x = jnp.ones((3, 4))
    with count_compilations(step) as compilations:
        for _ in range(4):
            net, opt_state, _ = step(net, opt_state, x)
    assert len(traces) == 1
    assert compilations() == 1
    # the model coming out of the step has the same treedef as the one built eagerly
    assert jax.tree_util.tree_structure(net) == jax.tree_util.tree_structure(
        pax.nn.MLP([4, 8, 8, 2])
    )


def test_eval_switch_compiles_once_per_mode():
    net = pax.nn.Linear(2, 2)

    @jax.jit
    def f(m, x):
        return m(x)

    x = jnp.ones((1, 2))
    with count_compilations(f) as compilations:
        for _ in range(3):
            f(net, x)
            f(net.eval(), x)
    assert compilations() == 2
