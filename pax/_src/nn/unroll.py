"""`dynamic_unroll`: runs a recurrent cell over a sequence with `jax.lax.scan`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from pax._src.core import registry
from pax._src.core.module import Module
from pax._src.core.structure import check_same_structure
from pax._src.nn import _validate as v

State = TypeVar("State")


def dynamic_unroll(
    cell: Callable[[Any, State], tuple[Any, State]],
    inputs: Any,
    initial_state: State,
    *,
    time_major: bool = True,
    reverse: bool = False,
    unroll: int = 1,
) -> tuple[Any, State]:
    """Runs ``cell(x_t, state) -> (output_t, state)`` over time with `jax.lax.scan`.

    The cell itself is carried through the scan, so a cell with state of its own (a
    `pax.nn.Dropout` inside, a step counter) advances it at every step. Afterwards the scanned
    cell's final state is written back into `cell` in place, as calling any pax module does;
    inside ``jax.jit``/``jax.grad`` return the cell (or the model holding it) to keep it.

    Args:
      cell: a pax module (or any function) ``(x_t, state) -> (output_t, new_state)``.
      inputs: an array or pytree of arrays with time on axis 0 (`time_major`) or 1.
      initial_state: the state before the first step, e.g. ``cell.initial_state(batch)``.
      time_major: inputs and outputs are ``(T, B, ...)``; with False, ``(B, T, ...)``.
      reverse: run from the last step to the first (outputs keep their time order).
      unroll: steps unrolled per scan iteration.

    Returns:
      ``(outputs, final_state)``, the outputs stacked along the time axis.

    Raises:
      StructureChangedError: if the cell changes its pytree structure during a step.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> lstm = pax.nn.LSTM(3, 8)
      >>> xs = jnp.ones((5, 2, 3))  # (time, batch, features)
      >>> ys, state = pax.nn.dynamic_unroll(lstm, xs, lstm.initial_state(2))
      >>> ys.shape, state.hidden.shape
      ((5, 2, 8), (2, 8))
    """
    time_major = v.boolean("dynamic_unroll", "time_major", time_major)
    reverse = v.boolean("dynamic_unroll", "reverse", reverse)
    if not time_major:
        inputs = _swap(inputs)
    if not isinstance(cell, Module):

        def fn_step(state: State, x: Any) -> tuple[State, Any]:
            output, state = cell(x, state)
            return state, output

        final_state, outputs = jax.lax.scan(
            fn_step, initial_state, inputs, reverse=reverse, unroll=unroll
        )
    else:

        def step(carry: tuple[Module, State], x: Any) -> tuple[tuple[Module, State], Any]:
            module, state = carry
            before = module.copy()
            output, state = module(x, state)
            what = f"{type(module).__name__} inside dynamic_unroll"
            check_same_structure(before, module, what=what)
            return (module, state), output

        (new_cell, final_state), outputs = jax.lax.scan(
            step, (cell, initial_state), inputs, reverse=reverse, unroll=unroll
        )
        registry.replace_state(cell, new_cell)
    if not time_major:
        outputs = _swap(outputs)
    return outputs, final_state


def _swap(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), tree)
