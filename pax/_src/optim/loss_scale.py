"""`pax.optim.with_loss_scale`: loss scaling for float16 training, as optimizer state."""

from __future__ import annotations

import math
import weakref
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import jmp
import numpy as np

from pax._src.core._jax_compat import Tracer
from pax._src.core.module import Module
from pax._src.optim.base import Optimizer

M = TypeVar("M", bound=Module)

_FLOAT16_MAX = float(np.finfo(np.float16).max)

# The optimizers whose `scale_loss` was called since their last `step`, by id. Python objects,
# not state: inside `jax.jit` the loss function and the step see the same Python copy of the
# optimizer, so the mark is set and read while tracing (a cached call runs neither). A weak
# reference lets the entry go with the optimizer.
_SCALED: dict[int, weakref.ReferenceType] = {}


def _mark_scaled(optimizer: LossScaledOptimizer) -> None:
    key = id(optimizer)

    def forget(ref: weakref.ReferenceType, key: int = key) -> None:
        if _SCALED.get(key) is ref:
            del _SCALED[key]

    _SCALED[key] = weakref.ref(optimizer, forget)


def _take_scaled(optimizer: LossScaledOptimizer) -> bool:
    ref = _SCALED.pop(id(optimizer), None)
    return ref is not None and ref() is optimizer


_FORGOT_SCALE_LOSS = (
    "LossScaledOptimizer.step: scale_loss was not called on this optimizer since its last "
    "step, so `grads` are most likely gradients of the unscaled loss: the step would divide "
    "them by the loss scale{scale} and training would stall without an error. Fix: take "
    "the gradients of the scaled loss, "
    "`grads = jax.grad(lambda p: opt.scale_loss(loss_fn(p)))(params)`, then "
    "`model = opt.step(grads, model)` (or let pax.utils.build_update_fn do both). If the "
    "loss was scaled with this optimizer in another traced function (another jax.jit, "
    "jax.vmap or jax.checkpoint, e.g. to accumulate gradients), say so: "
    "`model = opt.step(grads, model, loss_scaled=True)`."
)


def _check_loss_scale(loss_scale: Any) -> None:
    """Refuses a scale that is not a finite number > 0, and a static one beyond float16."""
    value = loss_scale.loss_scale
    if isinstance(value, Tracer):
        return
    array = np.asarray(value)
    if array.shape != () or not np.issubdtype(array.dtype, np.number):
        raise TypeError(
            f"with_loss_scale: the loss scale must be a scalar, got {value!r}. Fix: "
            f"jmp.DynamicLossScale(jnp.float32(2**15))."
        )
    scale = float(array)
    kind = type(loss_scale).__name__
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(
            f"with_loss_scale: the loss scale must be a finite number > 0, got "
            f"jmp.{kind}({scale!r}). Fix: jmp.DynamicLossScale(jnp.float32(2**15))."
        )
    if isinstance(loss_scale, jmp.StaticLossScale) and scale > _FLOAT16_MAX:
        raise ValueError(
            f"with_loss_scale: the static loss scale {scale:.10g} is beyond float16's range (its "
            f"largest value is {_FLOAT16_MAX:g}): float16 gradients of the scaled loss "
            f"overflow to inf, the steps with non-finite gradients are skipped, and a static "
            f"scale never comes down, so training would stop without an error. Fix: "
            f"jmp.DynamicLossScale(jnp.float32(2**15)) (it lowers itself), or "
            f"jmp.StaticLossScale(jnp.float32(2**15)) or lower."
        )


class LossScaledOptimizer(Optimizer):
    """An optimizer whose steps unscale the gradients and skip the non-finite ones.

    Made by `with_loss_scale`; see there. Its state: the wrapped optimizer (``inner``), the
    current scale (``loss_scale``, float32), the count of finite steps since the scale last
    changed (``good_steps``, int32; dynamic scaling only) and whether the last step's gradients
    were finite (``last_step_finite``). All are saved by `pax.save`.

    A hand-written step differentiates ``opt.scale_loss(loss)``; `step` refuses gradients
    when `scale_loss` was not called on this optimizer since its last step.

    Example:
      >>> import jax, jax.numpy as jnp, jmp, pax
      >>> net = pax.nn.Linear(2, 1)
      >>> opt = pax.optim.with_loss_scale(
      ...     pax.optim.sgd(net.parameters(), 0.1), jmp.DynamicLossScale(jnp.float32(2**15))
      ... )
      >>> @jax.jit
      ... def train_step(net, opt, x):
      ...     def loss_fn(params):
      ...         return jnp.mean(net.update(params)(x) ** 2)
      ...     grads = jax.grad(lambda p: opt.scale_loss(loss_fn(p)))(net.parameters())
      ...     return opt.step(grads, net), opt
      >>> net, opt = train_step(net, opt, jnp.ones((4, 2)))
      >>> bool(opt.last_step_finite)
      True
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
        if isinstance(inner, LossScaledOptimizer):
            raise TypeError(
                "with_loss_scale: the optimizer is already loss-scaled (a LossScaledOptimizer): "
                "its steps would unscale the gradients twice, dividing them by the scale once "
                "more. Fix: wrap once, pax.optim.with_loss_scale(opt.inner, loss_scale), or "
                "use opt as it is."
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
        _check_loss_scale(loss_scale)
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

        It also notes, on this Python object, that the loss was scaled: the next `step` of the
        same optimizer checks it.

        Example:
          >>> import jax.numpy as jnp, jmp, optax, pax
          >>> net = pax.nn.Linear(2, 1)
          >>> opt = pax.optim.from_optax(optax.sgd(0.1))(net.parameters())
          >>> opt = pax.optim.with_loss_scale(opt, jmp.StaticLossScale(jnp.float32(8.0)))
          >>> float(opt.scale_loss(jnp.float32(0.5)))
          4.0
        """
        _mark_scaled(self)  # read by the next `step` (see `_SCALED`)
        return self._jmp().scale(loss)

    def step(self, grads: M, model: M, *, loss_scaled: bool = False) -> M:
        """Unscales `grads`; applies the wrapped optimizer's step if they are all finite, else
        returns `model`'s parameters and leaves the wrapped optimizer unchanged; then adjusts
        the scale (dynamic scaling: halved after a non-finite step, doubled after `period`
        finite ones).

        `scale_loss` must have been called on this optimizer since its last step: inside
        `jax.jit`, in the loss function that `jax.grad` differentiates (as
        `pax.utils.build_update_fn` does), it is the same Python object as the one stepping.

        Args:
          grads: gradients of the scaled loss (`scale_loss`) with respect to
            ``model.parameters()``.
          model: the model to update.
          loss_scaled: set it when the loss was scaled with this optimizer in another traced
            function (another `jax.jit`, `jax.vmap` or `jax.checkpoint` sees a copy of the
            optimizer, whose `scale_loss` call this one cannot see).

        Returns:
          The updated model (unchanged parameters if the step was skipped).

        Raises:
          RuntimeError: if `scale_loss` was not called since the last step and `loss_scaled`
            is not set (the gradients of an unscaled loss would be divided by the scale).
        """
        scaled = _take_scaled(self)
        if not (scaled or loss_scaled is True):
            if loss_scaled is not False:
                raise TypeError(
                    f"LossScaledOptimizer.step: loss_scaled must be True or False, got "
                    f"{loss_scaled!r}. Fix: opt.step(grads, model, loss_scaled=True)."
                )
            scale = self.loss_scale
            shown = "" if isinstance(scale, Tracer) else f" ({float(scale):.10g})"
            raise RuntimeError(_FORGOT_SCALE_LOSS.format(scale=shown))
        scale = self._jmp()
        grads = scale.unscale(grads)
        finite = jmp.all_finite(grads)
        before = jax.tree_util.tree_map(lambda x: x, self.inner)  # arrays shared, not copied
        new_model = self.inner.step(grads, model)
        self.inner = jmp.select_tree(finite, self.inner, before)
        new_model = jmp.select_tree(finite, new_model, model)
        if self.dynamic:
            adjusted = scale.adjust(finite)
            self.loss_scale = adjusted.loss_scale
            self.good_steps = jnp.asarray(adjusted.counter, jnp.int32)
        self.last_step_finite = finite
        return new_model

    # --- the wrapped optimizer's hyperparameters -----------------------------------------

    def _inner_attribute(self, name: str) -> Any:
        try:
            return getattr(self.inner, name)
        except AttributeError:
            raise AttributeError(
                f"LossScaledOptimizer.{name}: the wrapped {type(self.inner).__name__} has no "
                f"{name!r}. Fix: read it where the wrapped optimizer defines it, "
                f"opt.inner.<attribute>."
            ) from None

    @property
    def learning_rate(self) -> Any:
        """The wrapped optimizer's learning rate (``opt.inner.learning_rate``); assignable
        in place when the wrapped optimizer's is (e.g. `pax.optim.adam`)."""
        return self._inner_attribute("learning_rate")

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        self._inner_attribute("learning_rate")  # the same error when there is none
        self.inner.learning_rate = value

    @property
    def hyperparams(self) -> dict[str, Any]:
        """The wrapped optimizer's injected hyperparameters (``opt.inner.hyperparams``)."""
        return self._inner_attribute("hyperparams")

    def set_hyperparams(self, **values: Any) -> None:
        """Sets the wrapped optimizer's hyperparameters (``opt.inner.set_hyperparams``).

        Example:
          >>> import jax.numpy as jnp, jmp, pax
          >>> opt = pax.optim.adam(pax.nn.Linear(2, 1).parameters(), 1e-3)
          >>> opt = pax.optim.with_loss_scale(opt, jmp.StaticLossScale(jnp.float32(8.0)))
          >>> opt.set_hyperparams(learning_rate=1e-4)
          >>> round(float(opt.learning_rate), 6)
          0.0001
        """
        self._inner_attribute("set_hyperparams")(**values)


def with_loss_scale(optimizer: Optimizer, loss_scale: Any) -> LossScaledOptimizer:
    """Wraps `optimizer` with loss scaling, for float16 training.

    The scale lives in the returned optimizer's state, so it is carried through `jax.jit`
    and saved in checkpoints. `pax.utils.build_update_fn` sees the wrapper and scales the
    loss before taking gradients; after a step whose gradients are not all finite, the
    model (parameters and states, such as BatchNorm statistics) and the optimizer state are
    left as they were. A hand-written step does the same with ``opt.scale_loss(loss)`` in the
    loss function and ``model = opt.step(grads, model)`` (check ``opt.last_step_finite``).

    The wrapper forwards ``learning_rate``, ``hyperparams`` and ``set_hyperparams`` to the
    wrapped optimizer. Its `step` refuses gradients taken without ``opt.scale_loss``: they
    would be divided by the scale (see `LossScaledOptimizer.step`).

    Args:
      optimizer: a pax optimizer (e.g. from `pax.optim.from_optax`), not already loss-scaled.
      loss_scale: a `jmp.DynamicLossScale` (halves the scale after a non-finite step, doubles
        it after ``period`` finite ones, never below ``min_loss_scale``) or a
        `jmp.StaticLossScale` of at most float16's largest value, 65504 (a larger static
        scale makes float16 gradients overflow at every step, and every step is skipped).

    Raises:
      TypeError: if `optimizer` is not a pax optimizer or is already loss-scaled, or
        `loss_scale` not one of these.
      ValueError: if the scale is not a finite number > 0, or is static and above 65504.

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
