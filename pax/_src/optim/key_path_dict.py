"""Flat views of a model's trainable parameters, keyed by key-path strings, and their checks.

Optimizer state is kept over an ordered mapping ``{key path: leaf}`` of the trainable leaves
rather than over a copy of the module tree: flattening it at the `jax.jit` boundary costs one
node instead of one per module, and masks or labels can still be written per key path.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.tree_util import DictKey

from pax._src.core.module import Module
from pax._src.core.structure import describe_difference

Spec = tuple[tuple[int, ...], str]

_GRADS_FIX = (
    "take gradients with respect to model.parameters() only, e.g. "
    "grads, (loss, model) = jax.grad(loss_fn, has_aux=True)(model.parameters(), model, inputs)"
)


class KeyPathDict(dict):
    """A dict of trainable leaves keyed by key-path strings, kept in the model's leaf order.

    Optimizer state is built over it (``opt.opt_state`` holds them where optax mirrors the
    parameters), and optax mask or label functions receive one. As a pytree it keeps insertion
    order (a plain dict's leaves are sorted by key), so reductions over all leaves, such as
    ``optax.clip_by_global_norm``, add them in the same order as optax over the module tree, and
    it flattens faster than a dict or an ``OrderedDict``. Build masks with
    `pax.optim.by_key_path`, or as ``type(params)((k, ...) for k in params)``: a plain dict has
    another pytree structure.

    Example:
      >>> import jax, pax
      >>> d = pax.optim.KeyPathDict({".b": 1, ".a": 2})
      >>> jax.tree_util.tree_leaves(d)
      [1, 2]
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"KeyPathDict({dict.__repr__(self)})"


def _flatten(d: KeyPathDict) -> tuple[tuple, tuple]:
    return tuple(d.values()), tuple(d)


def _flatten_with_keys(d: KeyPathDict) -> tuple[tuple, tuple]:
    return tuple((DictKey(k), v) for k, v in d.items()), tuple(d)


def _unflatten(keys: tuple, values: Any) -> KeyPathDict:
    return KeyPathDict(zip(keys, values))


jax.tree_util.register_pytree_with_keys(KeyPathDict, _flatten_with_keys, _unflatten, _flatten)


def flatten_parameters(params: Any) -> tuple[tuple[str, ...], list[Any], Any]:
    """Returns (key-path strings, leaves, treedef) of the non-None leaves of `params`."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = tuple(jax.tree_util.keystr(path) for path, _ in pairs)
    return keys, [leaf for _, leaf in pairs], treedef


def spec_of(leaf: Any) -> Spec:
    """The (shape, dtype name) of an array leaf."""
    return tuple(np.shape(leaf)), str(np.dtype(leaf.dtype))


def _spec_repr(spec: Spec) -> str:
    return f"{spec[1]}{list(spec[0])}"


def as_mapping(keys: tuple[str, ...], leaves: list[Any]) -> KeyPathDict:
    """The flat mapping given to optax: key-path strings to leaves, in the model's order."""
    return KeyPathDict(zip(keys, leaves))


def grads_leaves(owner: str, grads: Any, params: Module, treedef: Any, leaves: list) -> list:
    """Returns the leaves of `grads` after checking that it has the structure of `params`.

    Raises:
      ValueError: naming the first key path where `grads` and `params` differ (structure or
        shape).
    """
    grad_leaves, grad_def = jax.tree_util.tree_flatten(grads)
    if grad_def != treedef:
        diff = describe_difference(params, grads, names=("model.parameters()", "grads"))
        raise ValueError(
            f"{owner}.step: `grads` does not have the structure of model.parameters(): "
            f"{diff or f'{grad_def} vs {treedef}'}. Fix: {_GRADS_FIX}."
        )
    for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(grads), leaves):
        if np.shape(g) != np.shape(p):
            raise ValueError(
                f"{owner}.step: the gradient at {jax.tree_util.keystr(path)} has shape "
                f"{np.shape(g)} but the parameter has shape {np.shape(p)}. Fix: {_GRADS_FIX}."
            )
    return grad_leaves


def check_model(
    owner: str,
    expected_keys: tuple[str, ...],
    expected_specs: tuple[Spec, ...],
    keys: tuple[str, ...],
    leaves: list[Any],
    rebuild: str,
) -> None:
    """Checks that a model's trainable leaves are those the optimizer was built for.

    Raises:
      ValueError: naming the first key path that is missing, extra, or has another shape or
        dtype.
    """
    fix = f"Fix: build a new optimizer for this model, e.g. `opt = {rebuild}`."
    if keys != expected_keys:
        known, have = set(expected_keys), set(keys)
        extra = [k for k in keys if k not in known]
        missing = [k for k in expected_keys if k not in have]
        if extra:
            what = (
                f"{extra[0]!r} is a trainable parameter of the model but not one the optimizer "
                f"was built for (it was added, renamed or unfrozen since)"
            )
        elif missing:
            what = (
                f"{missing[0]!r} was a trainable parameter when the optimizer was built but is "
                f"not one of the model's (it was removed, renamed or frozen since)"
            )
        else:
            what = "the model's parameters are in another order than the optimizer's"
        raise ValueError(
            f"{owner}.step: the model does not have the parameters this optimizer was built "
            f"for: {what}. {fix}"
        )
    for key, spec, leaf in zip(keys, expected_specs, leaves):
        got = spec_of(leaf)
        if got != spec:
            raise ValueError(
                f"{owner}.step: the model's parameter {key} is {_spec_repr(got)} but the "
                f"optimizer was built for {_spec_repr(spec)}. {fix}"
            )
