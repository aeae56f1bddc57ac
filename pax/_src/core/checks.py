"""Checks run where an updated module comes back from a transformed function."""

from __future__ import annotations

from typing import Any

import jax

from pax._src.core.structure import describe_difference

_STATIC_HINT = (
    "Static attributes and the registry are part of the treedef: a change made inside "
    "jax.jit / jax.grad is either lost or forces a recompilation on every call. Fix: keep values "
    "that change per call in registered state, e.g. self.register_state('count', jnp.array(0)) "
    "then self.count = self.count + 1, and do not register new attributes inside the function."
)


class StructureChangedError(ValueError):
    """A module's pytree structure changed inside a transformed function."""


def check_same_structure(before: Any, after: Any, *, what: str = "the model") -> None:
    """Raises `StructureChangedError` if `after` has another treedef than `before`.

    Args:
      before: the tree that went into the function.
      after: the tree that came out.
      what: how to name the tree in the message.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = pax.nn.Linear(2, 3)
      >>> pax.utils.check_same_structure(net, net.copy())
    """
    if jax.tree_util.tree_structure(before) == jax.tree_util.tree_structure(after):
        return
    diff = describe_difference(before, after, names=("before", "after"))
    raise StructureChangedError(
        f"The structure of {what} changed inside the function: {diff or 'treedefs differ'}. "
        f"{_STATIC_HINT}"
    )
