"""`pax.optim.from_optax`: any optax gradient transformation as a pax optimizer."""

from __future__ import annotations

import pickle
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import optax

from pax._src.core.module import Module
from pax._src.describe import describe
from pax._src.optim import hyperparams as checks
from pax._src.optim import key_path_dict
from pax._src.optim.base import Optimizer

M = TypeVar("M", bound=Module)

_INJECT_STATES = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def _is_inject_state(x: Any) -> bool:
    return isinstance(x, _INJECT_STATES)


def _check_transform(transform: Any, where: str) -> None:
    if not (
        callable(getattr(transform, "init", None)) and callable(getattr(transform, "update", None))
    ):
        raise TypeError(
            f"{where}: expected an optax.GradientTransformation (an object with init and update "
            f"functions), got {type(transform).__name__}. Fix: pass an optax transform, e.g. "
            f"pax.optim.from_optax(optax.adam(1e-3))."
        )
    try:
        hash(transform)
    except TypeError:
        raise TypeError(
            f"{where}: the transform must be hashable (it is static data of the optimizer's "
            f"treedef), got an unhashable {type(transform).__name__}."
        ) from None


class _TransformState:
    """`OptaxOptimizer.transform` while pickling: optax transforms are closures, which pickle
    cannot save, so pickling refuses with the fix; copies get the transform itself."""

    __slots__ = ("transform",)

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        try:
            pickle.dumps(self.transform)
        except Exception as error:
            raise TypeError(
                "OptaxOptimizer: cannot be pickled: its optax transform is made of closures "
                f"({type(error).__name__}: {error}). Fix: save the arrays with "
                "pax.save(path, (model, opt)) and load them into a freshly built model and "
                "optimizer with pax.load."
            ) from None
        return _identity, (self.transform,)

    def __copy__(self) -> Any:
        return self.transform

    def __deepcopy__(self, memo: dict) -> Any:
        return self.transform


def _identity(x: Any) -> Any:
    return x


class OptaxOptimizer(Optimizer):
    """An optax gradient transformation with its state, as a pax optimizer.

    The state is built by ``transform.init`` over a flat ordered mapping
    ``{key path: parameter}`` of the model's trainable leaves (key paths as written by
    `jax.tree_util.keystr`, e.g. ``".layers[0].weight"``), in the model's leaf order. Frozen
    parameters and states are not in it and are never updated. `step` checks the gradients and
    the model against the parameters the optimizer was built for.

    Usually built with `pax.optim.from_optax` or `pax.optim.sgd` / `adam` / `adamw`.

    Args:
      params: the trainable parameters, ``model.parameters()`` (a module is accepted as well:
        its parameters are taken).
      transform: the optax transformation; it is static data of the treedef, so reuse one object
        to keep jitted steps from recompiling.

    Attributes:
      transform: the optax transformation.
      key_paths: key-path strings of the parameters, in order.
      param_specs: ``(shape, dtype name)`` of each parameter, checked by `step`.
      opt_state: the optax state (a registered state subtree).

    Example:
      >>> import jax, jax.numpy as jnp, optax, pax
      >>> net = pax.nn.Linear(2, 1)
      >>> opt = pax.optim.OptaxOptimizer(net.parameters(), optax.sgd(0.1))
      >>> opt.key_paths
      ('.weight', '.bias')
      >>> grads = jax.tree_util.tree_map(jnp.ones_like, net.parameters())
      >>> (opt.step(grads, net).bias - net.bias).tolist()
      [-0.10000000149011612]
    """

    transform: optax.GradientTransformation
    key_paths: tuple[str, ...]
    opt_state: Any

    def __init__(self, params: Module, transform: optax.GradientTransformation) -> None:
        super().__init__()
        if not isinstance(params, Module):
            raise TypeError(
                f"OptaxOptimizer: params must be a pax.Module (model.parameters()), got "
                f"{type(params).__name__}. Fix: opt = pax.optim.from_optax(tx)(model.parameters())."
            )
        _check_transform(transform, "OptaxOptimizer")
        keys, leaves, _ = key_path_dict.flatten_parameters(params.parameters())
        self.transform = transform
        self.key_paths = keys
        self.param_specs = tuple(key_path_dict.spec_of(leaf) for leaf in leaves)
        try:
            opt_state = transform.init(key_path_dict.as_mapping(keys, leaves))
        except Exception as error:
            hint = checks.called_as_schedule(error)
            if hint is not None:
                raise TypeError(hint) from error
            raise
        self.register_state_subtree("opt_state", opt_state)

    def step(self, grads: M, model: M, **extra_args: Any) -> M:
        """Applies one optax update: updates ``opt_state`` in place and returns the new model.

        Args:
          grads: gradients with respect to ``model.parameters()``.
          model: the model the optimizer was built for.
          **extra_args: passed on to ``transform.update`` (for transforms that take them).

        Returns:
          The model with ``optax.apply_updates`` applied to its trainable parameters.

        Raises:
          ValueError: if `grads` does not have the structure (or shapes) of
            ``model.parameters()``, or the model's trainable parameters are not those the
            optimizer was built for; the message names the first differing key path.
        """
        owner = type(self).__name__
        if not isinstance(model, Module):
            raise TypeError(
                f"{owner}.step: model must be a pax.Module, got {type(model).__name__}. "
                f"Fix: model = opt.step(grads, model)."
            )
        params = model.parameters()
        keys, leaves, treedef = key_path_dict.flatten_parameters(params)
        key_path_dict.check_model(
            owner,
            self.key_paths,
            self.param_specs,
            keys,
            leaves,
            "pax.optim.from_optax(opt.transform)(model.parameters())",
        )
        grad_leaves = key_path_dict.grads_leaves(owner, grads, params, treedef, leaves)
        flat_params = key_path_dict.as_mapping(keys, leaves)
        updates, self.opt_state = self.transform.update(
            key_path_dict.as_mapping(keys, grad_leaves), self.opt_state, flat_params, **extra_args
        )
        new_params = optax.apply_updates(flat_params, updates)
        return model.update(jax.tree_util.tree_unflatten(treedef, list(new_params.values())))

    # --- hyperparameters (optax.inject_hyperparams) ------------------------------------------

    def _inject_state(self, name: str | None) -> Any:
        owner = type(self).__name__
        found = [
            s
            for s in jax.tree_util.tree_leaves(self.opt_state, is_leaf=_is_inject_state)
            if _is_inject_state(s) and (name is None or name in s.hyperparams)
        ]
        what = "injected hyperparameters" if name is None else f"injected hyperparameter {name!r}"
        if not found:
            raise ValueError(
                f"{owner}: this optimizer has no {what} (to read or set). Fix: wrap the "
                f"optax factory with optax.inject_hyperparams, e.g. pax.optim.from_optax("
                f"optax.inject_hyperparams(optax.adam)(learning_rate=1e-3))(params); "
                f"pax.optim.sgd/adam/adamw do this for the learning rate."
            )
        if len(found) > 1:
            raise ValueError(
                f"{owner}: {len(found)} optax.inject_hyperparams states hold {what}, which is "
                f"ambiguous. Fix: read or replace it in opt.opt_state directly."
            )
        return found[0]

    @property
    def hyperparams(self) -> dict[str, jax.Array]:
        """The hyperparameters injected with ``optax.inject_hyperparams`` (a new dict).

        Values driven by a schedule are recomputed on every step, so they show the value used
        in the last step.
        """
        return dict(self._inject_state(None).hyperparams)

    def set_hyperparams(self, **values: Any) -> None:
        """Sets hyperparameters injected with ``optax.inject_hyperparams``, in place.

        Values keep the dtype and shape of the current ones, so a jitted step does not
        recompile. Works inside a jitted function too (then return the optimizer).

        Args:
          **values: new values by name, e.g. ``learning_rate=1e-4``.

        Raises:
          ValueError: if a name is not an injected hyperparameter, or a value has another shape.
          TypeError: if a value is not a number (None, a string, a bool), or has a fractional
            part while the hyperparameter is an integer (it would be truncated).

        Example:
          >>> import jax.numpy as jnp, pax
          >>> opt = pax.optim.adam(pax.nn.Linear(2, 1).parameters(), learning_rate=1e-3)
          >>> opt.set_hyperparams(learning_rate=1e-4)
          >>> round(float(opt.learning_rate), 6)
          0.0001
        """
        owner = type(self).__name__
        targets = {name: self._inject_state(name) for name in values}

        def replace(state: Any) -> Any:
            mine = [n for n in values if targets[n] is state]
            if not mine:
                return state
            hyperparams = dict(state.hyperparams)
            for name in mine:
                old = hyperparams[name]
                checks.check_assigned(owner, name, values[name], old)
                new = jnp.asarray(values[name], dtype=old.dtype)
                if new.shape != old.shape:
                    raise ValueError(
                        f"{owner}.set_hyperparams: {name} must have shape {old.shape}, got "
                        f"{new.shape}."
                    )
                hyperparams[name] = new
            return state._replace(hyperparams=hyperparams)

        self.opt_state = jax.tree_util.tree_map(replace, self.opt_state, is_leaf=_is_inject_state)

    @property
    def learning_rate(self) -> jax.Array:
        """The injected learning rate (``optax.inject_hyperparams``); assignable in place.

        With a schedule it holds the value used in the last step; assigning it then has no
        effect, since the schedule recomputes it at every step.
        """
        return self._inject_state("learning_rate").hyperparams["learning_rate"]

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        self.set_hyperparams(learning_rate=value)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["transform"] = _TransformState(state["transform"])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        transform = state.get("transform")
        if isinstance(transform, _TransformState):  # copy.copy passes the state on as is
            state = {**state, "transform": transform.transform}
        super().__setstate__(state)

    def __repr__(self) -> str:
        def short(x: Any) -> Any:
            if isinstance(x, key_path_dict.KeyPathDict):
                return _Text(f"{{{len(x)} parameters}}")
            return _Text(describe(x))

        state = jax.tree_util.tree_map(
            short, self.opt_state, is_leaf=lambda x: isinstance(x, key_path_dict.KeyPathDict)
        )
        text = repr(state)
        if len(text) > 300:
            text = text[:297] + "..."
        return f"{type(self).__name__}(parameters={len(self.key_paths)}, opt_state={text})"


class _Text(str):
    def __repr__(self) -> str:
        return str(self)


class OptaxBuilder:
    """Builds `OptaxOptimizer` s around one optax transformation: ``builder(params)``.

    Builders compare equal (and hash alike) when they hold the same transform object, and the
    optimizers they build have equal treedefs.

    Args:
      transform: the optax transformation.

    Example:
      >>> import optax, pax
      >>> tx = optax.adam(1e-3)
      >>> pax.optim.from_optax(tx) == pax.optim.from_optax(tx)
      True
    """

    __slots__ = ("transform",)

    transform: optax.GradientTransformation

    def __init__(self, transform: optax.GradientTransformation) -> None:
        _check_transform(transform, "pax.optim.from_optax")
        object.__setattr__(self, "transform", transform)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("OptaxBuilder is immutable")

    def __call__(self, params: Module) -> OptaxOptimizer:
        """Returns an optimizer for `params` (``model.parameters()``)."""
        return OptaxOptimizer(params, self.transform)

    def __eq__(self, other: object) -> bool:
        return type(other) is OptaxBuilder and other.transform is self.transform

    def __hash__(self) -> int:
        return hash((OptaxBuilder, id(self.transform)))

    def __repr__(self) -> str:
        return f"pax.optim.from_optax({type(self.transform).__name__}(...))"


def from_optax(transform: optax.GradientTransformation) -> OptaxBuilder:
    """Turns an optax gradient transformation into a pax optimizer builder.

    ``from_optax(tx)(model.parameters())`` returns an `OptaxOptimizer`; its
    ``step(grads, model)`` is bit-identical to ``tx.update`` + ``optax.apply_updates`` on the
    model's trainable leaves. Any transform works, compound and stateful ones included
    (``optax.chain``, ``optax.clip_by_global_norm``, schedules, ``optax.MultiSteps``); wrap the
    factory in ``optax.inject_hyperparams`` to read and set hyperparameters
    (``opt.learning_rate``, ``opt.set_hyperparams``). Masks and labels can be given per key path
    with `pax.optim.by_key_path`.

    Args:
      transform: an ``optax.GradientTransformation`` (or an ``optax.MultiSteps``).

    Returns:
      A builder: call it with ``model.parameters()``.

    Raises:
      TypeError: if `transform` is not an optax transformation.

    Example:
      >>> import jax, jax.numpy as jnp, optax, pax
      >>> net = pax.nn.Linear(2, 1)
      >>> opt = pax.optim.from_optax(optax.adam(1e-3))(net.parameters())
      >>> grads = jax.tree_util.tree_map(jnp.ones_like, net.parameters())
      >>> net = opt.step(grads, net)
    """
    return OptaxBuilder(transform)
