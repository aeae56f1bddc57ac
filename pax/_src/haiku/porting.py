"""Porting weights between a Haiku program's ``params``/``state`` dicts and a pax model.

The mapping rule. A Haiku program names its modules as Haiku does: the first ``hk.Linear``
created in a scope is ``linear``, the next ``linear_1``, and so on; a module's own submodules
live under its name (``mlp/~/linear_0``, ``lstm/linear``). The pax model's `HaikuModule`s are
taken in pax order (the order of ``jax.tree_util.tree_leaves``, i.e. attribute registration
order, lists in order) and named by the same rule: each module's Haiku name (``name=`` if
given, else Haiku's default such as ``conv2_d``) gets the suffix ``_1``, ``_2``, ... when it
was seen before, and `prefix` in front. So a model built with the same layers in the order the
Haiku program creates them gets the Haiku program's names. `names` overrides the name of single
modules by their pax path (``{".layers[2]": "encoder/~/linear_1"}``), and `haiku_module_names`
shows the names in use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import jax.numpy as jnp
import numpy as np

from pax._src.core.module import Module
from pax._src.haiku.config import module_name
from pax._src.haiku.init import haiku_modules_with_path
from pax._src.haiku.module import HaikuDict, HaikuModule

_MAX_LISTED = 12

_FIX = (
    "Fix: build the model from the same Haiku layers, in the order the Haiku program creates "
    "them; if the Haiku program nests them inside a module, pass prefix (e.g. "
    "prefix='my_net/~/'); rename single modules with names={{'.layers[0]': 'conv2_d_1'}}. "
    "The model's names now (pax path -> Haiku name): {table}."
)


def _entries(
    model: Any, prefix: str, names: Mapping[str, str] | None, fn: str
) -> list[tuple[str, HaikuModule, str, str]]:
    """(pax path, module, Haiku base name, full Haiku name) of every `HaikuModule`."""
    if not isinstance(model, Module):
        raise TypeError(f"{fn} expects a pax.Module, got {type(model).__name__}.")
    if not isinstance(prefix, str):
        raise TypeError(f"{fn}: prefix must be a str such as 'my_net/~/', got {prefix!r}.")
    modules = haiku_modules_with_path(model)
    names = dict(names or {})
    unknown = sorted(set(names) - {path for path, _ in modules})
    if unknown:
        raise ValueError(
            f"{fn}: names has keys that are not paths of pax.from_haiku modules in the model: "
            f"{unknown}. Fix: use paths among {[path or '' for path, _ in modules]} "
            f"(see pax.haiku.haiku_module_names(model))."
        )
    counts: dict[str, int] = {}
    entries = []
    for path, module in modules:
        base = module_name(module.hk_config)
        if path in names:
            full = names[path]
        else:
            n = counts.get(base, 0)
            counts[base] = n + 1
            full = prefix + (base if n == 0 else f"{base}_{n}")
        entries.append((path, module, base, full))
    return entries


def _outer(inner: str, base: str, full: str) -> str:
    """The Haiku program's name of a key of a module's own dict (``mlp/~/linear_0``)."""
    if inner == base:
        return full
    if inner.startswith(base + "/"):
        return full + inner[len(base) :]
    return f"{full}/{inner}"


def _table(entries: list) -> str:
    rows = [f"{path or '<the model>'} -> {full}" for path, _, _, full in entries]
    return ", ".join(rows) if rows else "(none)"


def _require_initialized(entries: list, fn: str) -> None:
    for path, module, _, _ in entries:
        if not module.is_initialized:
            raise ValueError(
                f"{fn}: {path or '<the model>'} ({module._describe()}) is not initialized, so "
                f"its Haiku names and shapes are unknown. Fix: model = "
                f"model.hk_init(*dummy_inputs) first (enable_jit=True computes nothing "
                f"eagerly)."
            )


def haiku_module_names(
    model: Module, *, prefix: str = "", names: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Returns ``{pax path: Haiku module name}`` for every `pax.from_haiku` module of `model`.

    These are the names `load_haiku_params` and `to_haiku_params` use (see the module
    docstring of the rule).

    Example:
      >>> import jax, pax
      >>> net = pax.nn.Sequential(pax.haiku.linear(2, 4), jax.nn.relu, pax.haiku.linear(4, 1))
      >>> pax.haiku.haiku_module_names(net)
      {'.modules[0]': 'linear', '.modules[2]': 'linear_1'}
    """
    entries = _entries(model, prefix, names, "haiku_module_names")
    return {path: full for path, _, _, full in entries}


def to_haiku_params(
    model: Module, *, prefix: str = "", names: Mapping[str, str] | None = None
) -> tuple[HaikuDict, HaikuDict]:
    """Returns the ``(params, state)`` dicts of the Haiku program equivalent to `model`.

    The result can be passed to ``hk.transform_with_state(f).apply`` of a Haiku program that
    creates the same modules in the same order (see `load_haiku_params` for the naming rule).

    Raises:
      ValueError: if a module is not initialized, or two modules get the same Haiku name.

    Example:
      >>> import jax, pax
      >>> net = pax.nn.Sequential(pax.haiku.linear(2, 4), jax.nn.relu, pax.haiku.linear(4, 1))
      >>> params, state = pax.haiku.to_haiku_params(net)
      >>> sorted(params), params["linear_1"]["w"].shape, state
      (['linear', 'linear_1'], (4, 1), {})
    """
    entries = _entries(model, prefix, names, "to_haiku_params")
    _require_initialized(entries, "to_haiku_params")
    params: HaikuDict = {}
    state: HaikuDict = {}
    owner: dict[str, str] = {}
    for path, module, base, full in entries:
        for own, out in ((module.params, params), (module.state, state)):
            for inner, leaves in cast(HaikuDict, own).items():
                outer = _outer(inner, base, full)
                if outer in out:
                    raise ValueError(
                        f"to_haiku_params: {owner[outer] or '<the model>'} and "
                        f"{path or '<the model>'} both get the Haiku name {outer!r}. Fix: give "
                        f"one of them another name with names={{{path!r}: '...'}}."
                    )
                owner[outer] = path
                out[outer] = dict(leaves)
    return params, state


def _describe_array(x: Any) -> str:
    return f"{np.dtype(getattr(x, 'dtype', np.asarray(x).dtype))}{tuple(np.shape(x))}"


def _compare(
    expected: dict[str, dict[str, Any]], given: Any, what: str, problems: dict[str, list]
) -> None:
    if not isinstance(given, Mapping) or not all(isinstance(v, Mapping) for v in given.values()):
        raise TypeError(
            f"load_haiku_params: {what} must be a dict {{module_name: {{name: array}}}}, as "
            f"returned by hk.transform_with_state(f).init, got {type(given).__name__}."
        )
    for outer, leaves in expected.items():
        got = given.get(outer, {})
        for leaf, mine in leaves.items():
            where = f"{what}[{outer!r}][{leaf!r}]"
            if leaf not in got:
                problems["missing"].append(where)
            elif _describe_array(got[leaf]) != _describe_array(mine):
                problems["mismatched"].append(
                    f"{where} is {_describe_array(got[leaf])} in {what} but "
                    f"{_describe_array(mine)} in the model"
                )
        problems["unexpected"].extend(
            f"{what}[{outer!r}][{leaf!r}]" for leaf in got if leaf not in leaves
        )
    problems["unexpected"].extend(f"{what}[{outer!r}]" for outer in given if outer not in expected)


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def load_haiku_params(
    model: Module,
    params: Mapping[str, Mapping[str, Any]],
    state: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    prefix: str = "",
    names: Mapping[str, str] | None = None,
    strict: bool = True,
) -> Module:
    """Returns a copy of `model` holding the weights of a Haiku program.

    `params` and `state` are the dicts of ``hk.transform_with_state(f).init`` (or of a
    checkpoint). Each `pax.from_haiku` / `pax.haiku` module of `model` takes the entries of its
    Haiku name: modules are named as Haiku names them (``linear``, ``linear_1``, ...), in pax
    order, with `prefix` in front, unless `names` maps its pax path to a name; see
    `haiku_module_names`. Every module must be initialized (``model.hk_init(...)``) so that the
    expected names and shapes are known.

    Args:
      model: the pax model.
      params: the Haiku parameters.
      state: the Haiku state; None keeps the model's state.
      prefix: put in front of every name, e.g. ``"my_net/~/"`` when the Haiku program creates
        its layers inside a module ``MyNet``.
      names: ``{pax path: Haiku module name}`` for modules named otherwise.
      strict: with False, entries missing from `params`/`state` keep the model's values and
        entries no module uses are ignored (shapes must still match).

    Returns:
      The model with the loaded arrays.

    Raises:
      ValueError: listing the missing and unexpected entries and the shape or dtype
        mismatches, with the model's names; or if a module is not initialized.

    Example:
      >>> import haiku as hk, jax, jax.numpy as jnp, pax
      >>> def forward(x):
      ...     x = jax.nn.relu(hk.Linear(4)(x))  # Haiku names it "linear"
      ...     return hk.Linear(1)(x)  # "linear_1"
      >>> f = hk.transform_with_state(forward)
      >>> params, state = f.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))
      >>> net = pax.nn.Sequential(pax.haiku.linear(2, 4), jax.nn.relu, pax.haiku.linear(4, 1))
      >>> net = pax.haiku.load_haiku_params(net, params, state)
      >>> x = jnp.ones((3, 2))
      >>> bool(jnp.allclose(net(x), f.apply(params, state, None, x)[0]))
      True
    """
    fn = "load_haiku_params"
    result = model.copy()
    entries = _entries(result, prefix, names, fn)
    _require_initialized(entries, fn)
    problems: dict[str, list] = {"missing": [], "unexpected": [], "mismatched": []}
    sources = [("params", params)] + ([("state", state)] if state is not None else [])
    plans = []
    for what, given in sources:
        expected: dict[str, dict[str, Any]] = {}
        for _, module, base, full in entries:
            for inner, leaves in getattr(module, what).items():
                expected[_outer(inner, base, full)] = leaves
        _compare(expected, given, what, problems)
        plans.append((what, given))
    if not strict:
        problems["missing"] = problems["unexpected"] = []
    if any(problems.values()):
        lines = [f"{fn}: the Haiku weights do not fit the model."]
        labels = {
            "missing": "missing (the model has them, the Haiku dicts do not)",
            "unexpected": "unexpected (in the Haiku dicts, used by no module of the model)",
            "mismatched": "shape or dtype mismatch",
        }
        for kind, label in labels.items():
            if problems[kind]:
                lines.append(f"  {label}: {_listed(problems[kind])}")
        lines.append(_FIX.format(table=_table(entries)))
        raise ValueError("\n".join(lines))
    for what, given in plans:
        for _, module, base, full in entries:
            loaded = {}
            for inner, leaves in getattr(module, what).items():
                got = given.get(_outer(inner, base, full), {})
                loaded[inner] = {
                    leaf: jnp.asarray(got[leaf]) if leaf in got else mine
                    for leaf, mine in leaves.items()
                }
            setattr(module, what, loaded)
    return result
