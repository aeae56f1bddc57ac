"""Exponential moving average of an array or a pytree, as Haiku's ExponentialMovingAverage."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pax._src.core.module import Module
from pax._src.nn import _validate as v


class EMA(Module):
    """Exponential moving average of a value (an array or any pytree of arrays).

    Numerically Haiku's ``hk.ExponentialMovingAverage``: every call sets
    ``hidden = decay * hidden + (1 - decay) * value`` and, with `zero_debias`,
    ``average = hidden / (1 - decay ** counter)`` (otherwise ``average = hidden``). With
    `warmup_length` > 0 the decay is 0 for the first `warmup_length` calls.

    The states are ``counter``, ``hidden`` and ``average``. ``average`` starts at
    `initial_value`. ``hidden`` starts at zeros with `zero_debias` (the debiasing needs it) and
    at `initial_value` without, so that e.g. ``EMA(model.parameters(), 0.999,
    zero_debias=False)`` averages from the initial weights (Haiku starts from zeros: pass zeros
    to reproduce it). Calling the module updates the states in place and returns the new
    average.

    Args:
      initial_value: an array or pytree of arrays, the average before the first update (and
        the shapes of the value).
      decay: the decay rate, in ``[0, 1)``.
      zero_debias: divide by ``1 - decay ** counter`` (incompatible with a warmup).
      warmup_length: number of initial calls that copy the value.

    Raises:
      ValueError: for a decay outside ``[0, 1)``, a negative `warmup_length`, or a warmup with
        `zero_debias`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> ema = pax.nn.EMA(jnp.zeros(()), decay=0.5)
      >>> float(ema(jnp.array(4.0))), float(ema(jnp.array(1.0)))
      (4.0, 2.0)
    """

    counter: jax.Array
    hidden: Any
    average: Any

    def __init__(
        self,
        initial_value: Any,
        decay: float,
        zero_debias: bool = True,
        warmup_length: int = 0,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        cls = type(self).__name__
        self.decay = v.rate_in_unit_interval(cls, "decay", decay)
        zero_debias = v.boolean(cls, "zero_debias", zero_debias)
        warmup_length = v.positive_int(cls, "warmup_length", warmup_length, allow_zero=True)
        if warmup_length and zero_debias:
            raise ValueError(
                f"{cls}: zero debiasing makes no sense with a warmup; pass zero_debias=False "
                f"with warmup_length={warmup_length}."
            )
        self.zero_debias = zero_debias
        self.warmup_length = warmup_length
        average = jax.tree_util.tree_map(jnp.asarray, initial_value)
        self.register_state("counter", jnp.array(-warmup_length, jnp.int32))
        hidden = jax.tree_util.tree_map(jnp.zeros_like, average) if zero_debias else average
        self.register_state_subtree("hidden", hidden)
        self.register_state_subtree("average", average)

    def __call__(self, value: Any, update_stats: bool = True) -> Any:
        """Folds `value` into the average and returns the new average.

        Args:
          value: an array or pytree with the structure of `initial_value`.
          update_stats: store the new states; with False only compute the average.
        """
        from pax._src.core.structure import describe_difference

        value = jax.tree_util.tree_map(jnp.asarray, value)
        diff = describe_difference(self.hidden, value, names=("initial value", "value"))
        if diff is None:
            for (path, h), x in zip(
                jax.tree_util.tree_leaves_with_path(self.hidden), jax.tree_util.tree_leaves(value)
            ):
                if h.shape != x.shape:
                    where = jax.tree_util.keystr(path) or "the root"
                    diff = f"at {where}: shape {h.shape} (initial value) vs {x.shape} (value)"
                    break
        if diff is not None:
            raise ValueError(
                f"{type(self).__name__}: the value does not match the initial value: {diff}."
            )
        counter = self.counter + 1
        average, hidden = _step(self.hidden, value, counter, self)
        if update_stats:
            self.counter = counter
            self.hidden = hidden
            self.average = average
        return average


def _step(hidden: Any, value: Any, counter: jax.Array, ema: EMA) -> tuple[Any, Any]:
    def one(h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        # computed in the promoted dtype, stored in the state's own (a state keeps its dtype:
        # float32 statistics of a bfloat16 model, or bfloat16 ones after `astype`)
        stored = h.dtype
        x = jnp.asarray(x)
        x = x.astype(jnp.result_type(h, x))
        decay = jax.lax.convert_element_type(ema.decay, x.dtype)
        if ema.warmup_length > 0:
            decay = jnp.where(counter <= 0, jnp.zeros_like(decay), decay)
        one = jnp.ones([], x.dtype)
        new_hidden = h.astype(x.dtype) * decay + x * (one - decay)
        average = new_hidden
        if ema.zero_debias:
            average = average / (one - jnp.power(decay, counter))
        return average.astype(stored), new_hidden.astype(stored)

    leaves, treedef = jax.tree_util.tree_flatten(hidden)
    values = treedef.flatten_up_to(value)
    pairs = [one(h, x) for h, x in zip(leaves, values)]
    average = treedef.unflatten([p[0] for p in pairs])
    new_hidden = treedef.unflatten([p[1] for p in pairs])
    return average, new_hidden
