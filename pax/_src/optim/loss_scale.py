"""`pax.optim.with_loss_scale`: loss scaling for float16 training, as optimizer state."""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import jmp

from pax._src.core.module import Module
from pax._src.optim.base import Optimizer

M = TypeVar("M", bound=Module)


class LossScaledOptimizer(Optimizer):
    """An optimizer whose steps unscale the gradients and skip the non-finite ones.

    Made by `with_loss_scale`; see there. Its state: the wrapped optimizer (``inner``), the
    current scale (``loss_scale``, float32), the count of finite steps since the scale last
    changed (``good_steps``, int32; dynamic scaling only) and whether the last step's gradients
    were finite (``last_step_finite``). All are saved by `pax.save`.
    """

    inner: Optimizer
    loss_scale: jax.Array
    good_steps: jax.Array
    last_step_finite: jax.Array

    def __init__(self, inner: Optimizer, loss_scale: Any) -> None:
        super().__init__()
        if not isinstance(inner, Optimizer):
            raise TypeError(
                f"with_loss_scale: expected a pax optimizer, got {type(inner).__name__}. Fix: "
                f"pax.optim.with_loss_scale(pax.optim.from_optax(optax.adam(1e-3))(params), "
                f"jmp.DynamicLossScale(jnp.float32(2**15)))."
            )
        if isinstance(loss_scale, jmp.DynamicLossScale):
            self.dynamic = True
            self.period = int(loss_scale.period)
            self.factor = int(loss_scale.factor)
            self.min_loss_scale = float(loss_scale.min_loss_scale)
            good_steps = loss_scale.counter
        elif isinstance(loss_scale, jmp.StaticLossScale):
            self.dynamic = False
            good_steps = 0
        else:
            raise TypeError(
                f"with_loss_scale: expected a jmp.DynamicLossScale or jmp.StaticLossScale, got "
                f"{type(loss_scale).__name__}. Fix: jmp.DynamicLossScale(jnp.float32(2**15)) "
                f"for float16; bfloat16 and float32 need no loss scaling (do not wrap)."
            )
        self.inner = inner
        self.register_state("loss_scale", jnp.asarray(loss_scale.loss_scale, jnp.float32))
        self.register_state("good_steps", jnp.asarray(good_steps, jnp.int32))
        self.register_state("last_step_finite", jnp.asarray(True))

    def _jmp(self) -> Any:
        if self.dynamic:
            return jmp.DynamicLossScale(
                self.loss_scale,
                self.good_steps,
                self.period,
                self.factor,
                jnp.float32(self.min_loss_scale),
            )
        return jmp.StaticLossScale(self.loss_scale)

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        """Returns ``loss * loss_scale`` (take the gradients of this, then call `step`).

        Example:
          >>> import jax.numpy as jnp, jmp, optax, pax
          >>> net = pax.nn.Linear(2, 1)
          >>> opt = pax.optim.from_optax(optax.sgd(0.1))(net.parameters())
          >>> opt = pax.optim.with_loss_scale(opt, jmp.StaticLossScale(jnp.float32(8.0)))
          >>> float(opt.scale_loss(jnp.float32(0.5)))
          4.0
        """
        return self._jmp().scale(loss)

    def step(self, grads: M, model: M) -> M:
        """Unscales `grads`; applies the wrapped optimizer's step if they are all finite, else
        returns `model`'s parameters and leaves the wrapped optimizer unchanged; then adjusts
        the scale (dynamic scaling: halved after a non-finite step, doubled after `period`
        finite ones).

        Args:
          grads: gradients of the scaled loss (`scale_loss`) with respect to
            ``model.parameters()``.
          model: the model to update.

        Returns:
          The updated model (unchanged parameters if the step was skipped).
        """
        scale = self._jmp()
        grads = scale.unscale(grads)
        finite = jmp.all_finite(grads)
        before = self.inner.copy()
        new_model = self.inner.step(grads, model)
        self.inner = jmp.select_tree(finite, self.inner, before)
        new_model = jmp.select_tree(finite, new_model, model)
        if self.dynamic:
            adjusted = scale.adjust(finite)
            self.loss_scale = adjusted.loss_scale
            self.good_steps = jnp.asarray(adjusted.counter, jnp.int32)
        self.last_step_finite = finite
        return new_model


def with_loss_scale(optimizer: Optimizer, loss_scale: Any) -> LossScaledOptimizer:
    """Wraps `optimizer` with loss scaling, for float16 training.

    The scale lives in the returned optimizer's state, so it is carried through `jax.jit`
    and saved in checkpoints. `pax.utils.build_update_fn` sees the wrapper and scales the
    loss before taking gradients; after a step whose gradients are not all finite, the
    model (parameters and states, such as BatchNorm statistics) and the optimizer state are
    left as they were. A hand-written step does the same with ``opt.scale_loss(loss)`` in the
    loss function and ``model = opt.step(grads, model)`` (check ``opt.last_step_finite``).

    Args:
      optimizer: a pax optimizer (e.g. from `pax.optim.from_optax`).
      loss_scale: a `jmp.DynamicLossScale` (halves the scale after a non-finite step, doubles
        it after ``period`` finite ones, never below ``min_loss_scale``) or a
        `jmp.StaticLossScale`.

    Raises:
      TypeError: if `optimizer` is not a pax optimizer or `loss_scale` not one of these.

    Example:
      >>> import jax, jax.numpy as jnp, jmp, optax, pax
      >>> def loss_fn(params, model, inputs):
      ...     model = model.update(params)
      ...     loss = jnp.mean((model(inputs[0]) - inputs[1]) ** 2)
      ...     return loss, (loss, model)
      >>> net = pax.nn.Linear(1, 1)
      >>> opt = pax.optim.from_optax(optax.sgd(0.1))(net.parameters())
      >>> opt = pax.optim.with_loss_scale(opt, jmp.DynamicLossScale(jnp.float32(2**15)))
      >>> update_fn = pax.utils.build_update_fn(loss_fn)
      >>> loss, net, opt = update_fn(net, opt, (jnp.ones((4, 1)), jnp.ones((4, 1))))
      >>> float(opt.loss_scale), bool(opt.last_step_finite)
      (32768.0, True)
    """
    return LossScaledOptimizer(optimizer, loss_scale)
