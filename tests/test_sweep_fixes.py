"""Mistakes found by the hostile sweep that still failed obscurely."""

import jax.numpy as jnp
import numpy as np
import pytest

import pax


def _loss_fn(params, model, inputs):
    model = model.update(params)
    x, y = inputs
    loss = jnp.mean((model(x) - y) ** 2)
    return loss, (loss, model)


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


def test_a_big_endian_numpy_array_registers_with_its_values():
    class Net(pax.Module):
        def __init__(self):
            super().__init__()
            self.register_state("s", np.array([1.5, 2.5, -3.0], dtype=">f4"))
            self.register_parameter("w", np.array([1.0], dtype=">f8"))

    net = Net()
    np.testing.assert_array_equal(net.s, [1.5, 2.5, -3.0])
    assert net.s.dtype == jnp.float32 and net.w.dtype == jnp.float32
