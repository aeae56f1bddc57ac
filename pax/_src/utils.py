"""Helpers that build training steps around modules and optimizers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from pax._src.core.checks import check_same_structure

LossFn = Callable[[Any, Any, Any], tuple[jax.Array, tuple[jax.Array, Any]]]


def build_update_fn(
    loss_fn: LossFn, *, jit: bool = True, donate: bool = False
) -> Callable[[Any, Any, Any], tuple[jax.Array, Any, Any]]:
    """Builds ``update_fn(model, optimizer, inputs) -> (loss, model, optimizer)``.

    ``loss_fn(params, model, inputs)`` must return ``(loss, (loss, model))`` and call
    ``model = model.update(params)`` before using the model. The step takes gradients with
    respect to ``model.parameters()``, checks that the model returned by ``loss_fn`` has the
    same structure as the one that went in, and applies ``optimizer.step(grads, model)``.

    Args:
      loss_fn: the loss function.
      jit: compile the step with `jax.jit`.
      donate: donate the buffers of `model` and `optimizer` to the step (saves memory; the
        arrays passed in are invalid afterwards).

    Returns:
      The update function.

    Raises:
      StructureChangedError: (when tracing) if `loss_fn` returned a model whose static
        attributes or registry changed, naming the attribute.

    Example:
      >>> import jax, jax.numpy as jnp, optax, pax
      >>> def loss_fn(params, model, inputs):
      ...     model = model.update(params)
      ...     x, y = inputs
      ...     loss = jnp.mean((model(x) - y) ** 2)
      ...     return loss, (loss, model)
      >>> net = pax.nn.Linear(1, 1)
      >>> opt = pax.optim.from_optax(optax.sgd(0.1))(net.parameters())
      >>> update_fn = pax.utils.build_update_fn(loss_fn)
      >>> x = jnp.ones((4, 1)); y = 2 * x
      >>> loss, net, opt = update_fn(net, opt, (x, y))
    """

    def update_fn(model: Any, optimizer: Any, inputs: Any) -> tuple[jax.Array, Any, Any]:
        grads, (loss, new_model) = jax.grad(loss_fn, has_aux=True)(
            model.parameters(), model, inputs
        )
        check_same_structure(model, new_model, what="the model returned by loss_fn")
        optimizer_def = jax.tree_util.tree_structure(optimizer)
        before = optimizer.copy()
        new_model = optimizer.step(grads, new_model)
        check_same_structure(model, new_model, what="the model returned by optimizer.step")
        if jax.tree_util.tree_structure(optimizer) != optimizer_def:
            check_same_structure(before, optimizer, what="the optimizer after step")
        return loss, new_model, optimizer

    if jit:
        return jax.jit(update_fn, donate_argnums=(0, 1) if donate else ())
    return update_fn
