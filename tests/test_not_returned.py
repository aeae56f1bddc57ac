"""A module changed inside a transformation and not returned by it raises at the next pax step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

NOT_RETURNED = r"was changed inside a transformed function .* did not return the module"


def test_batch_norm_passed_to_jit_and_not_returned_raises_at_the_next_call():
    bn = pax.nn.BatchNorm1D(3)
    x = jnp.ones((4, 3))
    jax.jit(lambda m, x: m(x))(bn, x)  # the moving averages are updated on a copy, then lost
    with pytest.raises(RuntimeError, match=r"EMA\.\w+ " + NOT_RETURNED + r"(.|\n)*return y, model"):
        bn(x)


def test_state_changed_under_grad_and_not_returned_raises_at_the_next_view():
    bn = pax.nn.BatchNorm1D(3)

    def loss(params, model, x):
        return jnp.sum(model.update(params)(x))

    jax.grad(loss)(bn.parameters(), bn, jnp.ones((4, 3)))
    with pytest.raises(RuntimeError, match=NOT_RETURNED):
        bn.parameters()


def test_optimizer_not_returned_from_a_jitted_step_raises():
    net = pax.nn.Linear(2, 2)
    opt = pax.optim.adam(net.parameters(), 1e-3)

    @jax.jit
    def step(net, opt):
        grads = jax.tree_util.tree_map(jnp.ones_like, net.parameters())
        return opt.step(grads, net)  # opt's moments and count are lost

    net = step(net, opt)
    with pytest.raises(RuntimeError, match=NOT_RETURNED):
        net(jnp.ones((1, 2)))


def test_returned_modules_are_fine_over_many_steps():
    bn = pax.nn.BatchNorm1D(3)
    step = jax.jit(lambda m, x: (m(x), m))
    for _ in range(3):
        _, bn = step(bn, jnp.ones((4, 3)) * 2)
    bn(jnp.ones((4, 3)))
    assert float(jnp.abs(bn.mean_ema.average).sum()) > 0

    def body(m, x):
        m(x)
        return m, None

    bn, _ = jax.lax.scan(body, bn, jnp.ones((2, 4, 3)))
    bn.parameters()


def test_discard_state_changes_allows_dropping_them_on_purpose():
    bn = pax.nn.BatchNorm1D(3)
    with pax.discard_state_changes():
        jax.eval_shape(lambda m, x: m(x), bn, jnp.ones((4, 3)))
        jax.jit(lambda m, x: m(x))(bn, jnp.ones((4, 3)))
    np.testing.assert_array_equal(bn(jnp.ones((4, 3))), bn(jnp.ones((4, 3))))


def test_eval_mode_changes_nothing_and_never_raises():
    bn = pax.nn.BatchNorm1D(3).eval()
    jax.jit(lambda m, x: m(x))(bn, jnp.ones((4, 3)))
    bn(jnp.ones((4, 3)))


def test_a_training_step_or_a_save_after_a_lost_change_raises(tmp_path):
    bn = pax.nn.BatchNorm1D(3)

    def loss_fn(params, model, x):
        model = model.update(params)
        loss = jnp.mean(model(x))
        return loss, (loss, model)

    update_fn = pax.utils.build_update_fn(loss_fn)
    opt = pax.optim.sgd(bn.parameters(), 0.1)
    jax.jit(lambda m, x: m(x))(bn, jnp.ones((4, 3)))
    with pytest.raises(RuntimeError, match=NOT_RETURNED):
        update_fn(bn, opt, jnp.ones((4, 3)))
    jax.jit(lambda m, x: m(x))(bn, jnp.ones((4, 3)))
    with pytest.raises(RuntimeError, match=NOT_RETURNED):
        pax.save(tmp_path / "bn.npz", bn)
