"""Porting weights between a Haiku program's ``params``/``state`` dicts and a pax model.

The model may hold `pax.from_haiku` modules, native `pax.nn` layers with a Haiku twin, or
both; the naming rule is in `pax._src.haiku.haiku_names` and the per-layer mapping in
`pax._src.haiku.native_names`. `haiku_module_names` shows the names in use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, overload

import jax.numpy as jnp
import numpy as np

from pax._src.checkpoint.matching import match_names, settle, spec
from pax._src.core.module import Module
from pax._src.haiku import haiku_names as hn
from pax._src.haiku.module import HaikuDict

_FIX = (
    "build the model from the same layers, in the order the Haiku program creates them (if "
    "the Haiku program nests them inside a module, pass prefix (e.g. prefix='my_net/~/') or "
    "strip that scope from the dicts with strip_prefix='my_net/~/'; rename single layers with "
    "names={{'.layers[0]': 'conv2_d_1'}}); the model's names now (pax path -> Haiku name): "
    "{table}"
)

T = Any


class HaikuLoadReport(NamedTuple):
    """What ``pax.haiku.load_haiku_params(..., strict=False)`` did.

    Entries are written ``params['linear']['w']`` (with the dicts' own names). ``missing``
    and ``unexpected`` are ``left`` and ``skipped`` by the names of `pax.LoadReport`.

    Attributes:
      loaded: the entries copied into the model.
      skipped: entries of the dicts used by no layer of the model (ignored), as given (before
        `strip_prefix`).
      left: entries of the model absent from the dicts (they keep the model's value).

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = pax.nn.Linear(2, 3)
      >>> params = {"linear": {"w": jnp.zeros((2, 3))}, "extra": {"b": jnp.ones(1)}}
      >>> net, report = pax.haiku.load_haiku_params(net, params, strict=False)
      >>> report.loaded, report.skipped, report.left
      (("params['linear']['w']",), ("params['extra']['b']",), ("params['linear']['b']",))
      >>> report.missing == report.left
      True
    """

    loaded: tuple[str, ...]
    skipped: tuple[str, ...]
    left: tuple[str, ...]

    @property
    def missing(self) -> tuple[str, ...]:
        """`left`, by the name `pax.LoadReport` and `pax.CheckpointMismatchError` use."""
        return self.left

    @property
    def unexpected(self) -> tuple[str, ...]:
        """`skipped`, by the name `pax.LoadReport` and `pax.CheckpointMismatchError` use."""
        return self.skipped


def haiku_module_names(
    model: Module, *, prefix: str = "", names: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Returns ``{pax path: Haiku module name}`` for every layer of `model` with a Haiku name.

    These are the names `load_haiku_params` and `to_haiku_params` use: every `pax.from_haiku`
    module and every native `pax.nn` layer with a Haiku twin, named as a Haiku program creating
    them in pax order would name them (``linear``, ``linear_1``, ...; a `pax.nn.Stack` is a
    ``hk.layer_stack`` scope).

    Raises:
      ValueError: if a module holds arrays of its own and has no Haiku twin (naming its
        path), or the model has no layer with a Haiku name.

    Example:
      >>> import jax, pax
      >>> net = pax.nn.Sequential(pax.haiku.linear(2, 4), jax.nn.relu, pax.nn.Linear(4, 1))
      >>> pax.haiku.haiku_module_names(net)
      {'.modules[0]': 'linear', '.modules[2]': 'linear_1'}
      >>> pax.haiku.haiku_module_names(pax.nn.MLP([3, 4, 2]), prefix="net/~/")
      {'': 'net/~/mlp'}
    """
    return {e.path: e.full for e in hn.entries(model, prefix, names, "haiku_module_names")}


def _check_ranks(found: list[hn.Entry], input_ranks: Mapping[str, int] | None) -> None:
    paths = {e.path for e in found}
    for path, rank in (input_ranks or {}).items():
        if path not in paths or not isinstance(rank, int) or rank < 2:
            raise ValueError(
                f"to_haiku_params: input_ranks maps pax paths of BatchNorm/GroupNorm layers to "
                f"the rank of their input (an int >= 2), got {path!r}: {rank!r}. Fix: e.g. "
                f"input_ranks={{'.layers[1]': 3}}; paths: {sorted(paths)}."
            )


def to_haiku_params(
    model: Module,
    *,
    prefix: str = "",
    names: Mapping[str, str] | None = None,
    input_ranks: Mapping[str, int] | None = None,
) -> tuple[HaikuDict, HaikuDict]:
    """Returns the ``(params, state)`` dicts of the Haiku program equivalent to `model`.

    The result can be passed to ``hk.transform_with_state(f).apply`` of a Haiku program that
    creates the same layers in the same order (see `haiku_module_names` for the naming rule).
    Native layers give their arrays in Haiku's layout (e.g. an LSTM's two weights as Haiku's
    one concatenated ``w``).

    Args:
      model: the pax model.
      prefix: put in front of every name.
      names: ``{pax path: Haiku module name}`` for layers named otherwise.
      input_ranks: ``{pax path: rank}`` for native BatchNorm (and channels-first GroupNorm)
        layers: Haiku keeps their arrays in a shape that depends on the input rank
        (``(1, 1, 1, C)`` for images). Default 4 for `pax.nn.BatchNorm2D`, 2 for the others.

    Raises:
      ValueError: if a layer is not initialized, two layers get the same Haiku name, a module
        with arrays has no Haiku twin, or the model has no layer with a Haiku name.

    Example:
      >>> import jax, pax
      >>> net = pax.nn.Sequential(pax.nn.Linear(2, 4), jax.nn.relu, pax.haiku.linear(4, 1))
      >>> params, state = pax.haiku.to_haiku_params(net)
      >>> sorted(params), params["linear_1"]["w"].shape, state
      (['linear', 'linear_1'], (4, 1), {})
    """
    fn = "to_haiku_params"
    found = hn.entries(model, prefix, names, fn)
    hn.require_initialized(found, fn)
    _check_ranks(found, input_ranks)
    out: dict[str, HaikuDict] = {"params": {}, "state": {}}
    owner: dict[tuple[str, str], str] = {}
    for item in hn.items(found, input_ranks):
        first = owner.setdefault((item.what, item.module), item.unit)
        if first != item.unit:
            raise ValueError(
                f"{fn}: {hn.where(first)} and {hn.where(item.unit)} both get the Haiku name "
                f"{item.module!r}. Fix: give one of them another name with "
                f"names={{{item.unit!r}: '...'}}."
            )
        out[item.what].setdefault(item.module, {})[item.leaf] = item.read()
    return out["params"], out["state"]


def _dtype(x: Any) -> np.dtype:
    return np.dtype(getattr(x, "dtype", np.asarray(x).dtype))


def _is_array(x: Any) -> bool:
    return (hasattr(x, "shape") and hasattr(x, "dtype")) or isinstance(x, (int, float))


def nested(given: Any, what: str, fn: str = "load_haiku_params") -> dict[str, dict[str, Any]]:
    """A Haiku dict in nested form, from the nested ``{module: {name: array}}`` or the flat
    ``{"module/name": array}`` form (as ``np.savez`` of a flattened dict gives)."""
    form = (
        f"{fn}: {what} must be a dict {{module_name: {{name: array}}}} as returned by "
        f"hk.transform_with_state(f).init, or its flat form {{'module_name/name': array}}"
    )
    if not isinstance(given, Mapping):
        raise TypeError(f"{form}; got {type(given).__name__}.")
    if all(isinstance(v, Mapping) for v in given.values()):
        return {str(k): dict(v) for k, v in given.items()}
    out: dict[str, dict[str, Any]] = {}
    for key, value in given.items():
        if isinstance(value, Mapping) or not _is_array(value):
            raise TypeError(
                f"{form}; got a mix, or a value that is not an array: {what}[{key!r}] is "
                f"{type(value).__name__}. Fix: pass one form."
            )
        if not isinstance(key, str) or "/" not in key:
            raise TypeError(
                f"{form}; the flat key {key!r} has no '/' between the module name and the "
                f"array name (e.g. 'linear/w')."
            )
        module, leaf = key.rsplit("/", 1)
        out.setdefault(module, {})[leaf] = value
    return out


def _label(what: str, module: str, leaf: str) -> str:
    """How reports and errors name an entry: ``params['linear']['w']``."""
    return f"{what}[{module!r}][{leaf!r}]"


Key = tuple[str, str, str]  # (what, module, leaf)


def _scope_of(longer: list[Key], shorter: list[Key]) -> str | None:
    """The scope ``s`` (ending in ``/``) with ``longer == s + shorter``, name by name."""
    if not longer or len(longer) != len(shorter):
        return None
    first, want = longer[0][1], set(shorter)
    for i in [i + 1 for i, c in enumerate(first) if c == "/"]:
        scope = first[:i]
        if all(m.startswith(scope) and (w, m[i:], leaf) in want for w, m, leaf in longer):
            return scope
    return None


def prefix_hint(missing: list[Key], unexpected: list[Key], strip_prefix: str) -> list[str]:
    """A fix for a strict load whose unmatched names all differ by one scope, or none."""
    scope = _scope_of(unexpected, missing)
    if scope is not None:
        return [
            f"every unexpected name is a missing one inside the scope {scope!r} (the Haiku "
            f"program nests the model in a module): pass prefix={scope!r} (or "
            f"strip_prefix={strip_prefix + scope!r})"
        ]
    scope = _scope_of(missing, unexpected)
    if scope is not None:
        return [
            f"every missing name is an unexpected one inside the scope {scope!r}, which the "
            f"model adds and the Haiku dicts lack: build the model without that name= (or "
            f"load_haiku_params(model, {{{scope!r} + k: v for k, v in params.items()}}))"
        ]
    return []


@overload
def load_haiku_params(
    model: T,
    params: Mapping[str, Any],
    state: Mapping[str, Any] | None = ...,
    *,
    prefix: str = ...,
    strip_prefix: str = ...,
    names: Mapping[str, str] | None = ...,
    strict: Literal[True] = ...,
) -> T: ...


@overload
def load_haiku_params(
    model: T,
    params: Mapping[str, Any],
    state: Mapping[str, Any] | None = ...,
    *,
    prefix: str = ...,
    strip_prefix: str = ...,
    names: Mapping[str, str] | None = ...,
    strict: Literal[False],
) -> tuple[T, HaikuLoadReport]: ...


def load_haiku_params(
    model: T,
    params: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
    *,
    prefix: str = "",
    strip_prefix: str = "",
    names: Mapping[str, str] | None = None,
    strict: bool = True,
) -> T | tuple[T, HaikuLoadReport]:
    """Returns a copy of `model` holding the weights of a Haiku program.

    `params` and `state` are the dicts of ``hk.transform_with_state(f).init`` (or of a
    checkpoint), nested ``{module: {name: array}}`` or flat ``{"module/name": array}``. Every
    `pax.from_haiku` module and every native `pax.nn` layer with a Haiku twin takes the entries
    of its Haiku name (see `haiku_module_names`): layers are named as Haiku names them
    (``linear``, ``linear_1``, ...), in pax order, with `prefix` in front, unless `names` maps
    its pax path to a name. Native layers take the arrays in their own layout (an LSTM's
    ``w`` is split into ``weight_ih`` and ``weight_hh``). Every layer must be initialized
    (``model.hk_init(...)`` / ``model.lazy_init(...)``) so that the expected shapes are known.
    Nothing is changed on error.

    Args:
      model: the pax model.
      params: the Haiku parameters.
      state: the Haiku state; None keeps the model's state.
      prefix: put in front of every model name, e.g. ``"my_net/~/"`` when the Haiku program
        creates its layers inside a module ``MyNet`` and the pax model holds only the layers.
      strip_prefix: removed from the front of every name of `params` and `state` (names
        without it are unused): the converse of `prefix`, e.g. ``"program/"`` when the dicts
        come from a program that wrapped its layers in a module the pax model does not have.
      names: ``{pax path: Haiku module name}`` for layers named otherwise.
      strict: with False, entries of the model missing from the dicts keep the model's values
        and entries no layer uses are ignored; shapes and dtypes must still match.

    Returns:
      The model with the loaded arrays; with ``strict=False``, ``(model, report)`` where the
      `HaikuLoadReport` lists what was loaded, skipped and left.

    Raises:
      CheckpointMismatchError: (a ValueError) listing the missing and unexpected entries
        and the shape or dtype mismatches, with the model's names (with ``strict=False``:
        mismatches, or no entry matching at all), worded as `pax.load` and
        `pax.load_state_dict` word them.
      ValueError: if a layer is not initialized.
      TypeError: if `params` or `state` is not a Haiku dict.

    Example:
      >>> import haiku as hk, jax, jax.numpy as jnp, pax
      >>> def forward(x):
      ...     x = jax.nn.relu(hk.Linear(4)(x))  # Haiku names it "linear"
      ...     return hk.Linear(1)(x)  # "linear_1"
      >>> f = hk.transform_with_state(forward)
      >>> params, state = f.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))
      >>> net = pax.nn.Sequential(pax.nn.Linear(2, 4), jax.nn.relu, pax.nn.Linear(4, 1))
      >>> net = pax.haiku.load_haiku_params(net, params, state)
      >>> x = jnp.ones((3, 2))
      >>> bool(jnp.allclose(net(x), f.apply(params, state, None, x)[0]))
      True
      >>> net, report = pax.haiku.load_haiku_params(net, {"linear/w": params["linear"]["w"]},
      ...                                           strict=False)
      >>> report.loaded, report.left
      (("params['linear']['w']",), ("params['linear']['b']", "params['linear_1']['w']", "params['linear_1']['b']"))
    """  # noqa: E501
    fn = "load_haiku_params"
    if not isinstance(strip_prefix, str):
        raise TypeError(
            f"{fn}: strip_prefix must be a str such as 'program/', got {strip_prefix!r}."
        )
    result = model.copy() if isinstance(model, Module) else model
    found = hn.entries(result, prefix, names, fn)
    hn.require_initialized(found, fn)
    keys: dict[str, Key] = {}  # every label, read back as (what, module, leaf)
    given: dict[str, Any] = {}  # every entry of the dicts, by its label, after strip_prefix
    renamed: dict[str, str | None] = {}  # strip_prefix as a rename of the labels
    for what, tree in (("params", params), ("state", state)):
        for module, leaves in ({} if tree is None else nested(tree, what, fn)).items():
            inside = module.startswith(strip_prefix)
            for leaf, value in leaves.items():
                label = _label(what, module, leaf)
                stripped = _label(what, module[len(strip_prefix) :], leaf) if inside else None
                renamed[label] = stripped
                given[stripped or label] = value
                keys[label] = (what, module, leaf)
                if stripped:
                    keys[stripped] = (what, module[len(strip_prefix) :], leaf)
    targets: dict[str, list[hn.Item]] = {}
    for item in hn.items(found):
        if (params if item.what == "params" else state) is not None:
            label = _label(item.what, item.module, item.leaf)
            targets.setdefault(label, []).append(item)
            keys[label] = (item.what, item.module, item.leaf)
    matched = match_names(
        targets,
        renamed,
        rename=renamed if strip_prefix else None,
        dropped=f"outside strip_prefix {strip_prefix!r}",
        fn=fn,
    )
    mismatched: dict[str, str] = {}
    plan = []
    for label in matched.pairs:
        value = given[label]
        for item in targets[label]:
            mine, shape = item.read(), tuple(np.shape(value))
            fits = item.accepts(shape) if item.accepts else shape == tuple(np.shape(mine))
            if not fits or _dtype(value) != np.dtype(mine.dtype):
                mismatched[label] = (
                    f"{label} (at {item.pax}): given {spec(value)}, model {spec(mine)}"
                )
            else:
                plan.append((item, value))
    settle(
        matched,
        mismatched,
        strict=strict,
        fn=fn,
        source="the Haiku dicts",
        plural=True,
        target="the model",
        fixes=[
            *prefix_hint(
                [keys[k] for k in matched.missing if k in keys],
                [keys[k] for k in matched.unexpected if k in keys],
                strip_prefix,
            ),
            _FIX.format(table=hn.describe_table(found)),
        ],
        non_strict="pax.haiku.load_haiku_params(model, params, state, strict=False)",
    )
    for item, value in plan:
        item.write(jnp.asarray(value))
    if strict:
        return result
    loaded = tuple(label for label in matched.pairs if label not in mismatched)
    return result, HaikuLoadReport(loaded, matched.unexpected, matched.missing)
