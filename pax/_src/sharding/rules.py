"""Sharding by key path: ``(pattern, PartitionSpec)`` rules placed over a named mesh.

A leaf is matched by its key-path string, as `jax.tree_util.keystr` writes it from the root of
the tree (``".layers[0].weight"``; ``"[0].layers[0].weight"`` when the tree is a tuple). The
first rule whose pattern `re.search` finds in that string gives the leaf its
`jax.sharding.PartitionSpec`.

A leaf inside a `pax.optim.KeyPathDict` (the moments of a ``from_optax`` optimizer) is matched by
its key there, the parameter's key path (``".layers[0].weight"``): moments are placed as their
parameters. ``^\\.layers`` matches them and the model alone, not ``(model, opt)``
(``[0].layers...``); ``\\.weight$`` matches everywhere. A catch-all replicates the rest.

Every rule must place a leaf (a typo, ``\\.wieght$``, would leave its leaves to the catch-all),
except a catch-all, a `presets.OptionalRule` (the presets' rules), any with ``allow_unused=True``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pax._src.describe import describe
from pax._src.optim.key_path_dict import KeyPathDict

T = TypeVar("T")

Rule = tuple[str | re.Pattern, PartitionSpec]
Rules = Sequence[Rule]

CATCH_ALL = 'add a catch-all rule last: (r".*", P()) replicates every other leaf'
_FORM = 'rules=[(r"\\.weight$", P(None, "model")), (r".*", P())]'
_SHOWN = 6  # patterns listed when no rule matches


class CompiledRule:
    """One checked rule: its compiled pattern, its spec and how it is written in messages."""

    __slots__ = ("index", "optional", "pattern", "search", "spec", "text")

    def __init__(self, pattern: re.Pattern, spec: PartitionSpec, index: int, optional: bool):
        self.index, self.optional, self.pattern = index, optional, pattern
        self.search = pattern.search
        self.spec = spec
        self.text = f"({pattern.pattern!r}, {spec})"

    def catch_all(self) -> bool:
        """True for a pattern that matches every key path (``.*``, ``""``, ``^``)."""
        return self.search("") is not None and self.search(".x[0]['y']") is not None


def _bad_form(owner: str, what: str) -> TypeError:
    return TypeError(
        f"pax.sharding.{owner}: {what}. Rules are a sequence of (pattern, PartitionSpec) pairs, "
        f"tried in order. Fix: {_FORM} with P = jax.sharding.PartitionSpec."
    )


def _axis_names(owner: str, index: int, pattern: str, spec: PartitionSpec) -> list[str]:
    """The mesh axis names `spec` uses, after checking each entry's form."""
    names = []
    for entry in spec:
        parts = entry if isinstance(entry, tuple) else (entry,)
        for part in parts:
            if part is None and not isinstance(entry, tuple):
                continue
            if not isinstance(part, str):
                raise _bad_form(
                    owner,
                    f"rule {index} ({pattern!r}, {spec}) has the spec entry {entry!r}; an entry "
                    f"must be None, a mesh axis name or a tuple of axis names",
                )
            names.append(part)
    return names


def check_mesh(mesh: Any, owner: str) -> None:
    """Raises `TypeError` if `mesh` is not a `jax.sharding.Mesh`."""
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"pax.sharding.{owner}: mesh must be a jax.sharding.Mesh, got "
            f"{type(mesh).__name__}. Fix: mesh = jax.sharding.Mesh(np.array(jax.devices()), "
            f"('data',))."
        )


def compile_rules(rules: Rules, mesh: Mesh, owner: str) -> list[CompiledRule]:
    """Checks `rules` against `mesh` and compiles their patterns.

    Raises:
      TypeError: if `mesh` is not a `jax.sharding.Mesh`, or `rules` is not a sequence of
        ``(str or re.Pattern, PartitionSpec)`` pairs.
      ValueError: if a pattern is not a valid regular expression, or a spec names an axis that
        is not in the mesh or names one axis twice.
    """
    check_mesh(mesh, owner)
    if isinstance(rules, (str, bytes, dict)) or not isinstance(rules, Sequence):
        raise _bad_form(owner, f"rules must be a list of pairs, got {type(rules).__name__}")
    if len(rules) == 2 and isinstance(rules[0], (str, re.Pattern)):
        raise _bad_form(
            owner, f"rules is a single pair {tuple(rules)!r}; put it in a list: [{tuple(rules)!r}]"
        )
    compiled = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise _bad_form(owner, f"rule {index} is {rule!r}, not a (pattern, spec) pair")
        pattern, spec = rule
        if isinstance(pattern, str):
            try:
                pattern = re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"pax.sharding.{owner}: the pattern {pattern!r} of rule {index} is not a "
                    f"valid regular expression ({error}). Fix: escape special characters, e.g. "
                    f"r'\\.layers\\[0\\]\\.weight$' or re.escape(key_path)."
                ) from None
        if not isinstance(pattern, re.Pattern):
            raise _bad_form(
                owner,
                f"the pattern of rule {index} is a {type(pattern).__name__}, not a str or "
                f"re.Pattern",
            )
        if not isinstance(spec, PartitionSpec):
            raise _bad_form(
                owner,
                f"the spec of rule {index} ({pattern.pattern!r}) is {spec!r}, not a "
                f"jax.sharding.PartitionSpec",
            )
        names = _axis_names(owner, index, pattern.pattern, spec)
        for name in names:
            if name not in mesh.shape:
                raise ValueError(
                    f"pax.sharding.{owner}: rule {index} ({pattern.pattern!r}, {spec}) names the "
                    f"mesh axis {name!r}, but the mesh has the axes {tuple(mesh.axis_names)}. "
                    f"Fix: use one of them, e.g. P({mesh.axis_names[0]!r}), or build the mesh "
                    f"with that name: jax.make_mesh(shape, names)."
                )
        if len(set(names)) != len(names):
            raise ValueError(
                f"pax.sharding.{owner}: rule {index} ({pattern.pattern!r}, {spec}) uses a mesh "
                f"axis more than once; a leaf can be split over each axis in one dimension "
                f"only. Fix: name each axis once, e.g. P('data', 'model')."
            )
        optional = getattr(rule, "allow_unused", False) is True  # presets.OptionalRule
        compiled.append(CompiledRule(pattern, spec, index, optional))
    return compiled


def rule_keys(tree: Any) -> Iterator[tuple[str, str, Any]]:
    """Yields ``(rule key, key path, leaf)`` for every leaf of `tree`, in leaf order.

    The rule key is what patterns are matched against: the leaf's key path, or for a leaf
    inside a `pax.optim.KeyPathDict`, its key there (the parameter's key path in the model).

    Example:
      >>> import optax, pax
      >>> net = pax.nn.Linear(2, 3)
      >>> opt = pax.optim.from_optax(optax.adam(1e-3))(net.parameters())
      >>> [key for key, _, _ in rule_keys(opt)][:3]
      ['.opt_state[0].count', '.weight', '.bias']
    """
    outer = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_key_path_dict)[0]
    for path, node in outer:
        if not isinstance(node, KeyPathDict):
            yield jax.tree_util.keystr(path), jax.tree_util.keystr(path), node
            continue
        for key, value in node.items():
            for sub, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
                full = jax.tree_util.keystr((*path, jax.tree_util.DictKey(key), *sub))
                yield key, full, leaf


def _is_key_path_dict(x: Any) -> bool:
    return isinstance(x, KeyPathDict)


def _where(key: str, full: str) -> str:
    if key == full:
        return f"the leaf {full}"
    return f"the leaf {full} (matched by its parameter's key path {key!r})"


def rule_for(
    key: str, full: str, leaf: Any, rules: list[CompiledRule], mesh: Mesh, owner: str
) -> CompiledRule:
    """The first rule matching `key`, its spec checked against the leaf's shape.

    Raises:
      ValueError: if no rule matches, the spec has more entries than the leaf has dimensions,
        or a dimension is not divisible by the number of devices it is split over.
    """
    rule = next((r for r in rules if r.search(key) is not None), None)
    if rule is None:
        shown = ", ".join(r.text for r in rules[:_SHOWN])
        more = f", ... ({len(rules)} in all)" if len(rules) > _SHOWN else ""
        hint = ""
        if key.startswith("[") and any(r.pattern.pattern.startswith("^") for r in rules):
            hint = (
                f" (Its key path starts with {key[: key.index(']') + 1]} as the tree is a tuple, "
                f"list or dict: a pattern anchored with '^' does not match it; anchor at the end.)"
            )
        raise ValueError(
            f"pax.sharding.{owner}: no rule matches {_where(key, full)} ({describe(leaf)}); the "
            f"rules are [{shown}{more}].{hint} Fix: {CATCH_ALL}, or write a rule for {key!r}."
        )
    shape = np.shape(leaf)
    if len(rule.spec) > len(shape):
        raise ValueError(
            f"pax.sharding.{owner}: the rule {rule.text} gives {_where(key, full)} "
            f"({describe(leaf)}) a spec of {len(rule.spec)} dimensions, but the leaf has "
            f"{len(shape)}. Fix: a spec of at most {len(shape)} entries (P() replicates), or a "
            f"pattern that does not match this leaf, e.g. anchored with '$'."
        )
    for dim, entry in enumerate(rule.spec):
        axes = () if entry is None else entry if isinstance(entry, tuple) else (entry,)
        size = math.prod(mesh.shape[a] for a in axes)
        if shape[dim] % size:
            axis = axes[0] if len(axes) == 1 else axes
            raise ValueError(
                f"pax.sharding.{owner}: {_where(key, full)} has shape {shape}; the rule "
                f"{rule.text} splits its dimension {dim} (of size {shape[dim]}) over the mesh "
                f"axis {axis!r} of size {size}, which does not divide it. Fix: a dimension "
                f"divisible by {size}, another dimension to split, or P() to replicate it."
            )
    return rule


def shardings(tree: T, mesh: Mesh, rules: Rules, *, allow_unused: bool = False) -> T:
    """Returns the `NamedSharding` the rules give each leaf of `tree`, in the tree's structure.

    `tree` is any pytree: a model, a `pax.optim.from_optax` optimizer, a tuple of both, or their
    `jax.eval_shape` outputs (`jax.ShapeDtypeStruct` leaves). Each leaf is matched by its
    key-path string (`jax.tree_util.keystr`, e.g. ``".layers[0].weight"``); a leaf inside an
    optimizer's per-parameter state (a `pax.optim.KeyPathDict`) by its parameter's key path, so
    the moments of a parameter are placed like the parameter. The first pattern that
    `re.search` finds wins. Rank-0 leaves (a step count) need a rule too: end with the
    catch-all ``(r".*", P())``. Integer leaves and RNG keys are placed like any other leaf (a
    ``uint32[2]`` key cannot be split over 8 devices: give it P()). Specs are `canonical`, as a
    compiled step writes its outputs', so a jitted step given these shardings (``jax.jit(...,
    in_shardings=..., out_shardings=...)``) does not compile again on its next call.

    Args:
      tree: the pytree to place.
      mesh: a `jax.sharding.Mesh` whose axis names the specs use.
      rules: a sequence of ``(pattern, PartitionSpec)``; a pattern is a regular expression
        (str or compiled).
      allow_unused: accept rules that place no leaf of `tree` (by default they raise: a typo
        such as ``\\.wieght$``; a catch-all and a `presets.OptionalRule` are always accepted).

    Returns:
      A tree of the structure of `tree` with a `jax.sharding.NamedSharding` at each leaf.

    Raises:
      TypeError: if `mesh` is not a Mesh or `rules` is not a sequence of (pattern, spec) pairs.
      ValueError: if a leaf matches no rule, a rule places no leaf (unless `allow_unused`), a
        spec has more entries than its leaf has dimensions, a dimension is not divisible by
        the devices it is split over, or a spec names an axis the mesh does not have; the
        message names the key path or the rule.

    Example:
      >>> import jax, numpy as np, pax
      >>> from jax.sharding import Mesh, PartitionSpec as P
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("model",))
      >>> net = pax.nn.Linear(2, 4)
      >>> s = pax.sharding.shardings(net, mesh, [(r"\\.weight$", P(None, "model")), (r".*", P())])
      >>> s.weight.spec, s.bias.spec
      (P(None, 'model'), P())
    """
    return _map_specs(
        tree, mesh, rules, "shardings", lambda spec: NamedSharding(mesh, spec), allow_unused
    )


def specs(tree: T, mesh: Mesh, rules: Rules, *, allow_unused: bool = False) -> T:
    """Like `shardings`, with the `PartitionSpec` (not the `NamedSharding`) at each leaf.

    Example:
      >>> import jax, numpy as np, pax
      >>> from jax.sharding import Mesh, PartitionSpec as P
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
      >>> pax.sharding.specs(pax.nn.Linear(2, 4), mesh, [(r".*", P())]).weight
      P()
    """
    return _map_specs(tree, mesh, rules, "specs", lambda spec: spec, allow_unused)


def canonical(spec: PartitionSpec) -> PartitionSpec:
    """`spec` as a compiled step writes its outputs' specs: no trailing None, no 1-tuples.

    A step's inputs then have the very shardings of its outputs, and the next call does not
    compile again for an equivalent but unequal spec.

    Example:
      >>> from jax.sharding import PartitionSpec as P
      >>> canonical(P("model", None)), canonical(P(("data",), None, "model"))
      (P('model',), P('data', None, 'model'))
    """
    entries = [e[0] if isinstance(e, tuple) and len(e) == 1 else e for e in spec]
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def check_allow_unused(owner: str, allow_unused: Any) -> bool:
    """Returns `allow_unused`, or raises `TypeError` if it is not a bool."""
    if isinstance(allow_unused, bool):
        return allow_unused
    raise TypeError(
        f"pax.sharding.{owner}: allow_unused must be True or False, got {allow_unused!r}. Fix: "
        f"allow_unused=True to accept rules that place no leaf of this tree."
    )


def _closest(pattern: str, keys: list[str]) -> list[tuple[str, str]]:
    """``(key path, its tail most like `pattern` as text)``, best first (difflib ratios)."""
    text = re.sub(r"\\(.)", r"\1", pattern).strip("^$")
    scored = []
    for key in keys:
        tails = [key] + [key[i:] for i, ch in enumerate(key) if ch in ".[" and i]
        ratios = [difflib.SequenceMatcher(None, text, tail).ratio() for tail in tails]
        best = max(range(len(tails)), key=lambda i: (ratios[i], -len(tails[i])))
        scored.append((ratios[best], key, tails[best]))
    scored.sort(key=lambda item: -item[0])
    return [(key, tail) for ratio, key, tail in scored[:3] if ratio >= 0.5]


def check_unused(keys: list[str], rules: list[CompiledRule], used: set[int], owner: str) -> None:
    """Raises `ValueError` for the first rule that placed no leaf (see the module docstring)."""
    unused = [r for r in rules if r.index not in used and not r.optional and not r.catch_all()]
    if not keys or not unused:
        return
    rule, more = unused[0], ", ".join(r.text for r in unused[1:_SHOWN])
    head = f"pax.sharding.{owner}: rule {rule.index} {rule.text}"
    others = f" (so do {more})" if more else ""
    matched = [k for k in keys if rule.search(k) is not None]
    if matched:  # shadowed: every leaf it matches goes to an earlier rule
        win = next(r for r in rules if r.search(matched[0]) is not None)  # at worst `rule`
        raise ValueError(
            f"{head} places no leaf{others}: it matches {matched[0]!r}, but rule {win.index} "
            f"{win.text} comes first, and the first matching rule wins. Fix: put rule "
            f"{rule.index} before rule {win.index}, or delete it."
        )
    close = _closest(rule.pattern.pattern, sorted(set(keys)))
    near = f"; the closest key paths are {', '.join(repr(k) for k, _ in close)}" if close else ""
    fix = f"the pattern, e.g. r'{re.escape(close[0][1])}$', " if close else "the pattern, "
    raise ValueError(
        f"{head} matches no leaf of the tree ({len(keys)} leaves){others}, so the leaves it was "
        f"meant for fall to the later rules{near}. Fix: correct {fix}or, for rules meant for "
        f"other models too, pax.sharding.{owner}(tree, mesh, rules, allow_unused=True)."
    )


def _map_specs(
    tree: T, mesh: Mesh, rules: Rules, owner: str, make: Callable[[Any], Any], allow_unused: bool
) -> T:
    allow_unused = check_allow_unused(owner, allow_unused)
    compiled = compile_rules(rules, mesh, owner)
    placed = [(k, rule_for(k, f, x, compiled, mesh, owner)) for k, f, x in rule_keys(tree)]
    if not allow_unused:
        check_unused([k for k, _ in placed], compiled, {r.index for _, r in placed}, owner)
    out = [make(canonical(rule.spec)) for _, rule in placed]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), out)


def shard(tree: T, mesh: Mesh, rules: Rules, *, allow_unused: bool = False) -> T:
    """Returns `tree` with each array placed on `mesh` as the rules say (``jax.device_put`` of
    `shardings`; an optimizer's moments follow their parameters, a jitted step keeps them).

    Args:
      tree: a model, an optimizer, a tuple of both, or any pytree of arrays.
      mesh: a `jax.sharding.Mesh`.
      rules: a sequence of ``(pattern, PartitionSpec)``, the first match wins.
      allow_unused: accept rules that place no leaf (see `shardings`).

    Returns:
      `tree`, its arrays `jax.device_put` to ``NamedSharding(mesh, spec)``.

    Raises:
      TypeError, ValueError: as `shardings`.

    Example:
      >>> import jax, numpy as np, optax, pax
      >>> from jax.sharding import Mesh, PartitionSpec as P
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
      >>> net = pax.nn.MLP([2, 8, 1])
      >>> opt = pax.optim.from_optax(optax.adam(1e-3))(net.parameters())
      >>> rules = [(r"\\.weight$", P("data")), (r".*", P())]
      >>> net, opt = pax.sharding.shard((net, opt), mesh, rules)
      >>> net.layers[0].weight.sharding.spec
      P('data',)
    """
    return jax.device_put(tree, shardings(tree, mesh, rules, allow_unused=allow_unused))
