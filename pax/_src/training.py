"""Helpers that build training steps around modules and optimizers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jmp
import numpy as np

from pax._src.core import registry, tracing
from pax._src.core.module import Module
from pax._src.core.pytree import read_layout
from pax._src.core.sharing import check, modules_are_distinct
from pax._src.core.structure import check_same_structure, describe_difference
from pax._src.describe import describe
from pax._src.optim.base import Optimizer
from pax._src.optim.loss_scale import LossScaledOptimizer

LossFn = Callable[[Any, Any, Any], tuple[Any, tuple[Any, Any]]]
UpdateFn = Callable[[Any, Any, Any], tuple[Any, Any, Any]]

_LOSS_FN_FORM = (
    "def loss_fn(params, model, inputs):\n"
    "    model = model.update(params)\n"
    "    loss = ...\n"
    "    return loss, (loss, model)"
)


def _check_arguments(model: Any, optimizer: Any) -> None:
    if isinstance(model, Optimizer) and not isinstance(optimizer, Optimizer):
        raise TypeError(
            "update_fn: the first argument is an optimizer and the second is not; the order is "
            "update_fn(model, optimizer, inputs). Fix: loss, model, opt = "
            "update_fn(model, opt, inputs)."
        )
    if not isinstance(model, Module):
        raise TypeError(
            f"update_fn: model must be a pax.Module, got {type(model).__name__}. Fix: "
            f"loss, model, opt = update_fn(model, opt, inputs)."
        )
    if not isinstance(optimizer, Module) or not callable(getattr(optimizer, "step", None)):
        fix = "opt = pax.optim.adam(model.parameters(), 1e-3)"
        if hasattr(optimizer, "init") and hasattr(optimizer, "update"):
            fix = "wrap the optax transform: opt = pax.optim.from_optax(tx)(model.parameters())"
        raise TypeError(
            f"update_fn: optimizer must be a pax.Optimizer (a module with a "
            f"step(grads, model) method), got {type(optimizer).__name__}. Fix: {fix}."
        )


def _leaf_ids(tree: Any) -> set[int]:
    return {id(x) for x in jax.tree_util.tree_leaves(tree)}


def _check_params_used(params: Any, model: Module, new_model: Module) -> None:
    """Raises if the model loss_fn returns does not hold the parameters it was given."""
    given = _leaf_ids(params)
    returned = _leaf_ids(new_model.parameters())
    if given and returned and not (returned & given) and returned <= _leaf_ids(model.parameters()):
        raise ValueError(
            f"build_update_fn: the {type(new_model).__name__} returned by loss_fn holds its "
            f"original parameters, none of the `params` loss_fn was given: gradients would all "
            f"be zero and the model would silently stop learning. Fix: start loss_fn with "
            f"`model = model.update(params)`:\n{_LOSS_FN_FORM}"
        )


def _unpack(out: Any) -> tuple[Any, Any, Any]:
    """Checks the ``(loss, (aux, model))`` form of `loss_fn`'s output."""
    ok = isinstance(out, tuple) and len(out) == 2
    ok = ok and isinstance(out[1], (tuple, list)) and len(out[1]) == 2
    if not ok or not isinstance(out[1][1], Module):
        got = type(out).__name__
        if isinstance(out, tuple):
            got = f"a tuple of {len(out)}: ({', '.join(describe(x) for x in out)})"
        raise TypeError(
            f"build_update_fn: loss_fn must return (loss, (loss, model)) with the updated "
            f"pax.Module last, got {got}. Fix:\n{_LOSS_FN_FORM}"
        )
    return out[0], out[1][0], out[1][1]


def _shape_difference(a: Any, b: Any) -> str | None:
    pairs_a = jax.tree_util.tree_leaves_with_path(a)
    for (path, x), y in zip(pairs_a, jax.tree_util.tree_leaves(b)):
        if np.shape(x) != np.shape(y):
            return f"at {jax.tree_util.keystr(path)}: shape {np.shape(x)} vs {np.shape(y)}"
    return None


def _check_optimizer_state(optimizer: Module, grads: Module) -> None:
    """Checks per-parameter states of `optimizer` that mirror the model (e.g. a velocity)."""
    d = optimizer.__dict__
    cls = type(optimizer).__name__
    for name in read_layout(optimizer).children:
        state = d[name]
        if type(state) is not type(grads):
            continue
        diff = describe_difference(
            state, grads, none_is_wildcard=True, names=(f"{cls}.{name}", "the gradients")
        )
        same_def = jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(grads)
        diff = diff or (_shape_difference(state, grads) if same_def else None)
        if diff:
            raise ValueError(
                f"update_fn: {cls}.{name} does not match the gradients of this model: {diff}. "
                f"The optimizer was built for another model, or before the model's structure "
                f"changed. Fix: build it from this model, e.g. opt = {cls}(model.parameters())."
            )


def build_update_fn(loss_fn: LossFn, *, jit: bool = True, donate: bool = False) -> UpdateFn:
    """Builds ``update_fn(model, optimizer, inputs) -> (loss, model, optimizer)``.

    ``loss_fn(params, model, inputs)`` must return ``(loss, (loss, model))`` and call
    ``model = model.update(params)`` before using the model. The step takes gradients with
    respect to ``model.parameters()``, checks that the model returned by ``loss_fn`` has the
    same structure as the one that went in, and applies ``optimizer.step(grads, model)``. The
    checks run while tracing, so a jitted step pays nothing for them.

    Args:
      loss_fn: the loss function.
      jit: compile the step with `jax.jit`.
      donate: donate the buffers of `model` and `optimizer` to the step (saves memory; the
        model and optimizer passed in cannot be used afterwards).

    With an optimizer from `pax.optim.with_loss_scale`, the step differentiates the scaled
    loss, and a step whose gradients are not finite returns the model unchanged (parameters
    and states) with the optimizer unchanged but for its lowered scale.

    Returns:
      The update function; the loss it returns is the first element of ``loss_fn``'s
      auxiliary output.

    Metrics: hold them in the model (``self.train_loss = pax.metrics.Mean()``) and update
    them inside ``loss_fn`` (``model.train_loss(loss)``): they are states, so they take no
    gradient, and they come back updated in the returned model, also with the default
    ``jit=True`` and with `donate`; read them with ``model.train_loss.compute()`` and start a
    new epoch with ``model.train_loss.reset()``. A metric held outside the model (a global or
    a closure) is refused: its update would be lost in the compiled step.

    The first call also runs `pax.check` on the model and optimizer: a module reachable twice
    (or an array reachable twice inside the model) would silently become two copies under jit;
    with `donate`, any array reachable twice is refused. Later calls check that no module is
    reachable twice (by identity, a few microseconds).

    Raises:
      ValueError: if `donate` is set without `jit`.
      TypeError: if `loss_fn` is not callable, or (when called) it does not return
        ``(loss, (loss, model))``, or the arguments are not ``(model, optimizer, inputs)``.
      StructureChangedError: (when called) if `loss_fn` returned a model whose static
        attributes or registry changed (e.g. a Python int counter incremented in
        ``__call__``), naming the attribute.
      ValueError: (when called) if the optimizer was built for another model, naming the first
        differing key path; with `donate`, if the model or optimizer passed in was donated to
        an earlier step (use the returned ones).
      RuntimeError: (when called) if `loss_fn` changed a module that is neither in the model
        nor the optimizer (e.g. a `pax.metrics` metric held in a global), naming it.

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
    if not callable(loss_fn):
        raise TypeError(
            f"build_update_fn: loss_fn must be a function, got {type(loss_fn).__name__}. "
            f"Fix:\n{_LOSS_FN_FORM}"
        )
    if donate and not jit:
        raise ValueError(
            "build_update_fn: donate=True needs jit=True (buffers are donated to the compiled "
            "step). Fix: build_update_fn(loss_fn, jit=True, donate=True)."
        )

    def checked_loss(
        params: Any, model: Module, inputs: Any, optimizer: Any
    ) -> tuple[Any, tuple[Any, Any]]:
        loss, aux, new_model = _unpack(loss_fn(params, model, inputs))
        _check_params_used(params, model, new_model)
        check_same_structure(model, new_model, what="the model returned by loss_fn")
        if isinstance(optimizer, LossScaledOptimizer):
            loss = optimizer.scale_loss(loss)
        return loss, (aux, new_model)

    grad_fn = jax.grad(checked_loss, has_aux=True)

    def update_fn(model: Any, optimizer: Any, inputs: Any) -> tuple[Any, Any, Any]:
        _check_arguments(model, optimizer)
        grads, (loss, new_model) = grad_fn(model.parameters(), model, inputs, optimizer)
        _check_optimizer_state(optimizer, grads)
        optimizer_def = jax.tree_util.tree_structure(optimizer)
        before = optimizer.copy()
        new_model = optimizer.step(grads, new_model)
        if not isinstance(new_model, Module):
            raise TypeError(
                f"update_fn: {type(optimizer).__name__}.step must return the updated model, got "
                f"{type(new_model).__name__}. Fix: end step with `return model.update(new_params)`."
            )
        check_same_structure(model, new_model, what="the model returned by optimizer.step")
        if isinstance(optimizer, LossScaledOptimizer):  # a skipped step keeps the states too
            new_model = jmp.select_tree(optimizer.last_step_finite, new_model, model)
        if jax.tree_util.tree_structure(optimizer) != optimizer_def:
            check_same_structure(before, optimizer, what="the optimizer after step")
        return loss, new_model, optimizer

    step = jax.jit(update_fn, donate_argnums=(0, 1) if donate else ()) if jit else update_fn
    checked: list[bool] = []

    @functools.wraps(update_fn)
    def first_call_checked(model: Any, optimizer: Any, inputs: Any) -> tuple[Any, Any, Any]:
        # Before JAX sees the arguments: an optax transform would fail inside jit's argument
        # handling with an unrelated message.
        _check_arguments(model, optimizer)
        for what, tree in (("model", model), ("optimizer", optimizer)):
            if registry.donated_as(tree.__dict__) is not None:  # passed to an earlier step
                raise ValueError(_donated_message(what, type(tree).__name__))
        tracing.check_pending()  # a module changed in an earlier transformation, not returned
        # Sharing is invisible inside jit (the flattened copies are already independent), so
        # look at the real arguments: in full once (arrays too when donated), then modules by
        # identity on every call (a few microseconds), for sharing introduced between steps.
        if not checked:
            check((model, optimizer), donate=donate)
            checked.append(True)
        elif not modules_are_distinct(model, optimizer):
            check((model, optimizer), donate=donate)
        if not donate:
            result = step(model, optimizer, inputs)
            _check_nothing_lost()
            return result
        try:
            result = step(model, optimizer, inputs)
        except Exception as error:
            # Only on failure (free on the hot path): JAX's "Buffer has been deleted or
            # donated" names neither the argument nor the fix.
            _check_not_donated(model, optimizer, error)
            raise
        _check_nothing_lost()
        # The objects passed in now hold deleted arrays: their next use raises, naming this.
        registry.mark_donated(model.__dict__, "model")
        registry.mark_donated(optimizer.__dict__, "optimizer")
        return result

    first_call_checked.step = step  # type: ignore[attr-defined]
    return first_call_checked


def _check_nothing_lost() -> None:
    """Raises if the step changed a module it does not return (free when nothing was lost)."""
    try:
        tracing.check_pending()
    except RuntimeError as error:
        where = str(error).split(" ", 1)[0]
        raise RuntimeError(
            f"update_fn: loss_fn changed {where}, which is in neither the model nor the "
            f"optimizer (e.g. a pax.metrics metric held in a global or a closure), so the "
            f"change was lost in the step. Fix: hold it in the model and update it there, "
            f"e.g. in __init__ self.train_loss = pax.metrics.Mean(), in loss_fn "
            f"model.train_loss(loss); after the step read model.train_loss.compute()."
        ) from error


def _check_not_donated(model: Any, optimizer: Any, error: Exception) -> None:
    """Raises naming `model` or `optimizer` when one of their arrays was donated (deleted)."""
    for what, tree in (("model", model), ("optimizer", optimizer)):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        deleted = [p for p, x in leaves if isinstance(x, jax.Array) and x.is_deleted()]
        if deleted:
            where = f"{type(tree).__name__}{jax.tree_util.keystr(deleted[0])}"
            raise ValueError(_donated_message(what, where)) from error


def _donated_message(what: str, where: str) -> str:
    return (
        f"update_fn: the {what} passed to update_fn was donated to a previous step "
        f"(build_update_fn(..., donate=True)): its arrays are deleted, e.g. {where}. Fix: "
        f"loss, model, opt = update_fn(model, opt, batch) -- use the returned model and "
        f"optimizer, never the ones passed in."
    )
