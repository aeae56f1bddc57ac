"""`pax.Optimizer`: the base class of stateful optimizers."""

from __future__ import annotations

from typing import TypeVar

from pax._src.core.module import Module

M = TypeVar("M", bound=Module)


class Optimizer(Module):
    """Base class of pax optimizers: a module whose state lives inside it.

    A subclass registers its state with `register_state_subtree` (or `register_state`) and
    implements ``step(grads, model) -> model``, which updates the optimizer's state in place and
    returns the updated model. Because an optimizer is a module, it passes through `jax.jit` as a
    pytree: a jitted training step takes the optimizer and returns it, like the model. Calling
    ``super().__init__()`` in a subclass is optional.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> class SGD(pax.Optimizer):
      ...     def __init__(self, params, learning_rate: float = 1e-2, momentum: float = 0.9):
      ...         self.momentum = momentum
      ...         self.learning_rate = learning_rate
      ...         self.register_state_subtree(
      ...             "velocity", jax.tree_util.tree_map(jnp.zeros_like, params)
      ...         )
      ...     def step(self, grads, model):
      ...         self.velocity = jax.tree_util.tree_map(
      ...             lambda v, g: v * self.momentum + g * self.learning_rate,
      ...             self.velocity,
      ...             grads,
      ...         )
      ...         params = model.parameters()
      ...         new_params = jax.tree_util.tree_map(lambda p, v: p - v, params, self.velocity)
      ...         return model.update(new_params)
      >>> net = pax.nn.Linear(2, 1)
      >>> opt = SGD(net.parameters(), learning_rate=0.1)
      >>> grads = jax.tree_util.tree_map(jnp.ones_like, net.parameters())
      >>> new_net = opt.step(grads, net)
      >>> (new_net.bias - net.bias).tolist()
      [-0.10000000149011612]
    """

    def step(self, grads: M, model: M) -> M:
        """Updates the optimizer's state in place and returns the updated `model`.

        Args:
          grads: gradients with respect to ``model.parameters()`` (same structure).
          model: the model to update.

        Returns:
          The model with its parameters updated.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.step is not implemented. Fix: define "
            f"`def step(self, grads, model):` in {type(self).__name__}, update the state "
            f"(self.velocity = ...) and `return model.update(new_params)`."
        )
