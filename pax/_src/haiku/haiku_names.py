"""The naming rule: which parts of a pax model hold Haiku entries, and under which names.

A Haiku program names its modules as Haiku does: the first ``hk.Linear`` created in a scope is
``linear``, the next ``linear_1``, and so on; a module's own submodules live under its name
(``mlp/~/linear_0``, ``lstm/linear``). A pax model is read the same way. Its *units* are taken
in pax order (the order of ``jax.tree_util.tree_leaves``: attribute registration order, lists
in order): every `pax.from_haiku` module and every native layer with a Haiku twin
(`native_names.HAIKU_NAMES`: ``pax.nn.Linear`` is ``linear``, ``pax.nn.MLP`` is ``mlp``, ...;
a layer built with ``name=`` is named so, as ``hk.Linear(3, name="head")`` is).
Each unit's Haiku name (for a wrapped module ``name=`` if given, else Haiku's default such as
``conv2_d``) gets the suffix ``_1``, ``_2``, ... when it was seen before, and ``prefix`` in
front. Other modules (`pax.nn.Sequential`, a user's own `pax.Module`, ...) built with
``name=`` are a Haiku scope, as an ``hk.Module`` of that name is: their units are named
``name/~/linear``, ... (``name_1/~/...`` for the second module of that name in a scope); built
without a name they add none: their units are named as if they were created directly in the
program, which is what happens when a Haiku program creates its layers in order. A
`pax.nn.Stack` is Haiku's ``hk.layer_stack``: a scope named ``__layer_stack_no_per_layer``
(a name given to ``hk.layer_stack(n, name=...)`` goes into ``names``) whose layers are
named inside it and whose arrays carry the leading axis ``n``. ``names`` overrides the full
name of single units (or stacks) by their pax path (``{".layers[2]": "encoder/~/linear_1"}``).
A `pax.haiku.from_transformed` program adds no name: its keys are the program's own (with
``prefix``, or its ``names`` entry, in front). The
arrays of a module without twin (a loose parameter, a `pax.utils.RngSeq` key) are named as
Haiku names ``hk.get_parameter`` in the scope they sit in (``my_net/~/`` gives module
``my_net``, leaf the attribute name), or by ``names`` (``{".rng.rng_key": "my_net"}``); outside
any scope they are refused with their path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

import jax

from pax._src.core.module import Module
from pax._src.haiku.config import module_name
from pax._src.haiku.module import HaikuDict, HaikuModule
from pax._src.haiku.native_names import HAIKU_NAMES, is_pending, native_slots, twin_name
from pax._src.haiku.programs import HaikuProgram
from pax._src.nn.dropout import Dropout
from pax._src.nn.stack import Stack

STACK_NAME = "__layer_stack_no_per_layer"


class Entry(NamedTuple):
    """A unit of the model: its pax path, the module, its Haiku base and full names (`unit`:
    the path owning the Haiku name, for the own arrays of a module without twin)."""

    path: str
    module: Module
    base: str
    full: str
    unit: str = ""


class Item(NamedTuple):
    """One Haiku array ``what[module][leaf]`` of the model, with how to read and write it."""

    what: str
    module: str
    leaf: str
    unit: str
    pax: str
    read: Callable[[], Any]
    write: Callable[[Any], None]
    accepts: Callable[[tuple[int, ...]], bool] | None


def where(path: str) -> str:
    """A pax path as shown in messages."""
    return path or "<the model>"


def _children(module: Module) -> tuple[list[tuple[str, Module]], list[str]]:
    """The direct submodules of `module` with their relative paths, and its own array paths."""
    pairs = jax.tree_util.tree_flatten_with_path(
        module, is_leaf=lambda x: x is not module and isinstance(x, Module)
    )[0]
    subs, own = [], []
    for key_path, leaf in pairs:
        if isinstance(leaf, Module):
            subs.append((jax.tree_util.keystr(key_path), leaf))
        else:
            own.append(jax.tree_util.keystr(key_path))
    return subs, own


def _no_twin(fn: str, path: str, module: Module, own: list[str]) -> ValueError:
    twins = sorted({cls.__name__ for cls in HAIKU_NAMES})
    first = path + own[0]
    return ValueError(
        f"{fn}: {where(path)} is a {type(module).__name__} holding arrays of its own "
        f"({', '.join(own[:4])}{', ...' if len(own) > 4 else ''}) and has no Haiku twin, so "
        f"its arrays have no Haiku names. Fix: give it (or a module around it) a Haiku scope "
        f"with name='my_net' (its arrays are then named as Haiku names hk.get_parameter in "
        f"that scope: 'my_net', leaf {own[0][1:]!r}), or map each array to a Haiku module "
        f"name with names={{{first!r}: 'my_net'}}; or build that part from layers with a "
        f"Haiku twin (pax.nn.{', pax.nn.'.join(twins)}) or from pax.from_haiku modules."
    )


ARRAY = "~array"  # the `base` of an Entry that is one array of a module without twin


def _own_arrays(
    fn: str, module: Module, path: str, own: list[str], scope: Scoped, names: dict[str, str]
) -> list[Entry]:
    """Entries for the arrays of a module without twin: named by `names` (``{array path:
    Haiku module}``), else by the Haiku scope they sit in (``a/~/b/~/`` is module ``a/~/b``);
    outside any scope they are refused."""
    out, missing = [], []
    for rel in own:
        full = names.get(path + rel) or scope.module
        if not full or not rel.startswith(".") or not rel[1:].isidentifier():
            missing.append(rel)
            continue
        unit = path + rel if path + rel in names else scope.path
        out.append(Entry(path + rel, module, ARRAY, full, unit))
    if missing:
        raise _no_twin(fn, path, module, missing)
    return out


class Scoped(NamedTuple):
    """The Haiku module that a scope string names and the pax path of the module opening it."""

    module: str
    path: str


def entries(model: Any, prefix: str, names: Mapping[str, str] | None, fn: str) -> list[Entry]:
    """Every unit of `model` with its Haiku names (see the module docstring for the rule)."""
    if not isinstance(model, Module):
        raise TypeError(f"{fn} expects a pax.Module, got {type(model).__name__}.")
    if not isinstance(prefix, str):
        raise TypeError(f"{fn}: prefix must be a str such as 'my_net/~/', got {prefix!r}.")
    names = dict(names or {})
    found: list[Entry] = []
    named: set[str] = set()

    owners: dict[str, str] = {}  # Haiku scope -> the pax path that opened it

    def visit(module: Module, path: str, scope: str, counts: dict[str, int]) -> None:
        base = None
        if isinstance(module, HaikuProgram):  # adds no scope: its keys are the program's
            full = names.get(path, scope)
            named.update([path] if path in names else [])
            found.append(Entry(path, module, "", full))
            return
        if isinstance(module, HaikuModule):
            if module.is_initialized and not module.params and not module.state:
                return  # no arrays (hk.Flatten, hk.MaxPool): nothing to name
            base = module_name(module.hk_config)
        elif isinstance(module, Stack):
            base = STACK_NAME
        else:  # a native twin is named by its name= as Haiku does, else by its class
            base = twin_name(module) and (getattr(module, "name", None) or twin_name(module))
        if base is None:
            subs, own = _children(module)
            inner_scope, inner_counts = scope, counts
            own_name = getattr(module, "name", None)
            if isinstance(own_name, str) and own_name:  # a named module is a Haiku scope
                n = counts.get(own_name, 0)
                counts[own_name] = n + 1
                inner = own_name if n == 0 else f"{own_name}_{n}"
                inner_scope, inner_counts = f"{scope}{inner}/~/", {}
                owners[inner_scope] = path
            if own and not isinstance(module, Dropout):  # hk.dropout has no arrays
                # arrays created in a scope are named by it, as hk.get_parameter's are
                at = Scoped(inner_scope[:-3], owners.get(inner_scope, path))
                arrays = _own_arrays(fn, module, path, own, at, names)
                named.update(e.path for e in arrays if e.path in names)
                found.extend(arrays)
            for sub_path, sub in subs:
                visit(sub, path + sub_path, inner_scope, inner_counts)
            return
        if path in names:
            full = names[path]
            named.add(path)
        else:
            n = counts.get(base, 0)
            counts[base] = n + 1
            full = scope + (base if n == 0 else f"{base}_{n}")
        if isinstance(module, Stack):
            visit(module.stacked, path + ".stacked", full + "/", {})
        else:
            found.append(Entry(path, module, base, full))

    visit(model, "", prefix, {})
    unknown = sorted(set(names) - named)
    if unknown:
        raise ValueError(
            f"{fn}: names has keys that are not paths of layers with Haiku names in the model: "
            f"{unknown}. Fix: use paths among {[e.path for e in found]} (see "
            f"pax.haiku.haiku_module_names(model))."
        )
    if not found:
        raise ValueError(
            f"{fn}: {type(model).__name__} holds no layer with a Haiku name (no pax.from_haiku "
            f"module, no pax.nn layer with a Haiku twin), so there is nothing to port. Fix: "
            f"pass the model that holds the layers; for other arrays use pax.state_dict."
        )
    return found


def require_initialized(found: list[Entry], fn: str) -> None:
    """Raises if a unit does not know its shapes yet (uninitialized or lazy)."""
    for path, module, base, _, _ in found:
        if base == ARRAY:
            continue
        if isinstance(module, HaikuModule) and not module.is_initialized:
            raise ValueError(
                f"{fn}: {where(path)} ({module._describe()}) is not initialized, so its Haiku "
                f"names and shapes are unknown. Fix: model = model.hk_init(*dummy_inputs) "
                f"first (enable_jit=True computes nothing eagerly)."
            )
        if not isinstance(module, HaikuModule) and is_pending(module):
            raise ValueError(
                f"{fn}: {where(path)} ({type(module).__name__}) was built without its input "
                f"size and is not initialized, so its Haiku shapes are unknown. Fix: model = "
                f"model.lazy_init(*example_inputs) first."
            )


def outer_name(inner: str, base: str, full: str) -> str:
    """The program's name of a key of a wrapped module's own dict (``mlp/~/linear_0``).

    A key that is not under the module's own name was created in its parent's scope (a
    module whose ``__call__`` is ``@hk.transparent``): it keeps that scope.
    """
    if not base:  # a program: its keys are already the program's names
        return (full + "/" if full and not full.endswith("/") else full) + inner
    if inner == base:
        return full
    if inner.startswith(base + "/"):
        return full + inner[len(base) :]
    scope = full.rsplit("/", 1)[0] + "/" if "/" in full else ""
    return scope + inner


def _reader(leaves: dict, leaf: str) -> Callable[[], Any]:
    return lambda: leaves[leaf]


def _writer(leaves: dict, leaf: str) -> Callable[[Any], None]:
    def write(a: Any) -> None:
        leaves[leaf] = a

    return write


def _haiku_items(entry: Entry) -> list[Item]:
    module = cast(HaikuModule, entry.module)
    out = []
    for what in ("params", "state"):
        own = cast(HaikuDict, getattr(module, what))
        for inner, leaves in own.items():
            outer = outer_name(inner, entry.base, entry.full)
            for leaf in leaves:
                pax = f"{entry.path}.{what}[{inner!r}][{leaf!r}]"
                read, write = _reader(leaves, leaf), _writer(leaves, leaf)
                out.append(Item(what, outer, leaf, entry.path, pax, read, write, None))
    return out


def items(found: list[Entry], input_ranks: Mapping[str, int] | None = None) -> list[Item]:
    """Every Haiku array of the units, in order."""
    ranks = dict(input_ranks or {})
    out: list[Item] = []
    for entry in found:
        if isinstance(entry.module, HaikuModule):
            out.extend(_haiku_items(entry))
            continue
        if entry.base == ARRAY:
            out.append(_array_item(entry))
            continue
        slots = native_slots(entry.module, ranks.get(entry.path))
        _check_covered(entry.module, entry.path, slots)
        for slot in slots:
            module = entry.full if not slot.inner else f"{entry.full}/{slot.inner}"
            pax = entry.path + slot.pax
            out.append(
                Item(
                    slot.what,
                    module,
                    slot.leaf,
                    entry.path,
                    pax,
                    slot.read,
                    slot.write,
                    slot.accepts,
                )
            )
    return out


def _array_item(entry: Entry) -> Item:
    """The Haiku entry ``(module, attribute)`` of one array of a module without twin."""
    owner, attr = entry.module, entry.path.rsplit(".", 1)[1]
    kind = owner.registry.get(attr)
    what = "state" if kind is not None and "state" in kind.value else "params"
    return Item(
        what,
        entry.full,
        attr,
        entry.unit,
        entry.path,
        lambda: getattr(owner, attr),
        lambda a: setattr(owner, attr, a),
        None,
    )


def describe_table(found: list[Entry]) -> str:
    """``path -> name, ...`` for messages."""
    return ", ".join(f"{where(e.path)} -> {e.full}" for e in found) or "(none)"


def _check_covered(module: Any, path: str, slots: list) -> None:
    """Refuses a native layer holding arrays its Haiku twin has no entry for (a subclass that
    added its own): exporting or loading it would silently skip them."""
    covered = {p for slot in slots for p in slot.pax.split(", ")}
    extra = [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(module)
        if jax.tree_util.keystr(p) not in covered
    ]
    if extra:
        where = path or "the model"
        raise ValueError(
            f"{where} ({type(module).__name__}) holds arrays its Haiku twin has no entry for: "
            f"{', '.join(extra)}; they would be left out of the Haiku dicts. Fix: keep them "
            f"in a separate submodule, or port this layer with pax.state_dict / "
            f"pax.load_state_dict."
        )
