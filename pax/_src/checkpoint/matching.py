"""The one name-matching routine of every loader: `pax.load`, `pax.load_state_dict` and
`pax.haiku.load_haiku_params`.

A loader has the names its target expects (key paths of ``like`` or of the model, or Haiku
entries) and the names it is given (a checkpoint's key paths, a mapping's names, a Haiku
dict's entries). `match_names` renames the given names and pairs them with the expected ones;
the loader then compares the arrays of each pair and calls `settle`, which raises one
`pax.CheckpointMismatchError` listing every problem, or returns the `LoadReport` of a
non-strict load. So every loader words the same mismatch the same way, and has the same rules:

- a missing or unexpected name is an error only when ``strict``;
- a shape or dtype mismatch is always an error;
- so is a load where no name matches at all (nothing would be loaded), even if not ``strict``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from pax._src.describe import listing
from pax._src.errors import CheckpointMismatchError

MAX_LISTED = 20
Rename = Callable[[str], "str | None"] | Mapping[str, "str | None"] | Sequence[tuple[str, str]]
_RENAME_FIX = r"e.g. rename=[(r'^(\d+)\.weight$', r'.modules[\1].weight')]"


class LoadReport(NamedTuple):
    """What a non-strict load (``pax.load(..., strict=False)``, ``pax.load_state_dict``) left out.

    Attributes:
      missing: key paths of ``like`` (or of the model) not given: they keep their value.
      unexpected: names given (as given, before renaming) that match no key path: ignored.

    Example:
      >>> import numpy as np, pax
      >>> given = {".weight": np.ones((2, 3), np.float32), "extra": np.ones(1)}
      >>> net, report = pax.load_state_dict(pax.nn.Linear(2, 3), given, strict=False)
      >>> report
      LoadReport(missing=('.bias',), unexpected=('extra',))
    """

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


class Matched(NamedTuple):
    """The result of `match_names`.

    Attributes:
      pairs: ``{expected name: given name}`` for every expected name given, in expected order.
      missing: expected names no given name was renamed to, in expected order.
      unexpected: given names (as given) that match no expected name, in given order.
      notes: ``{given name: note}`` saying how an unexpected name was renamed, for messages.
    """

    pairs: dict[str, str]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    notes: dict[str, str]


def renamer(rename: Rename | None, fn: str) -> Callable[[str], str | None]:
    """`rename` (None, a function, a mapping, or ``(regex, replacement)`` rules) as a function.

    A mapping renames the names it holds and keeps the others; with rules, the first whose
    regex matches (``re.search``) rewrites the name with ``re.sub``, and names no rule matches
    are kept. A function or a mapping may give None to drop a name.
    """
    if rename is None:
        return lambda name: name
    if isinstance(rename, Mapping):
        table = dict(rename)
        for name, value in table.items():
            fix = "rename={'0.weight': '.modules[0].weight'}"
            _check_renamed(fn, f"rename maps {name!r} to", value, fix)
        return lambda name: table.get(name, name)
    if callable(rename):
        function = rename

        def checked(name: str) -> str | None:
            fix = "rename=lambda name: '.modules[0]' + name"
            return _check_renamed(fn, f"rename({name!r}) returned", function(name), fix)

        return checked
    form = "rename must be a function name -> key path, a dict, or a list of (regex, replacement)"
    if isinstance(rename, (str, bytes)) or not isinstance(rename, Sequence):
        raise TypeError(
            f"{fn}: {form} pairs of str, got the {type(rename).__name__} {rename!r}. "
            f"Fix: {_RENAME_FIX}."
        )
    rules = []
    for rule in rename:
        if not (
            isinstance(rule, tuple) and len(rule) == 2 and all(isinstance(r, str) for r in rule)
        ):
            raise TypeError(
                f"{fn}: {form} pairs of str, got the rule {rule!r}. Fix: {_RENAME_FIX}."
            )
        rules.append((re.compile(rule[0]), rule[1]))

    def by_rules(name: str) -> str:
        for pattern, replacement in rules:
            if pattern.search(name):
                return pattern.sub(replacement, name)
        return name

    return by_rules


def _check_renamed(fn: str, what: str, key: Any, fix: str) -> str | None:
    if key is not None and not isinstance(key, str):
        raise TypeError(
            f"{fn}: {what} {key!r} of type {type(key).__name__}; it must give a key path "
            f"(str) or None to drop the entry. Fix: e.g. {fix}."
        )
    return key


def match_names(
    expected: Iterable[str],
    given: Iterable[str],
    *,
    rename: Rename | None = None,
    dropped: str = "dropped by rename",
    fn: str,
) -> Matched:
    """Pairs the `given` names, renamed by `rename`, with the `expected` ones.

    Args:
      expected: the names the target has (e.g. ``like``'s key paths), in their order.
      given: the names given (e.g. a mapping's keys), in their order.
      rename: see `renamer`; default: the given names are expected names already.
      dropped: how messages explain a name `rename` dropped (gave None).
      fn: the loader's name, for errors.

    Raises:
      ValueError: if two given names are renamed to one expected name.
      TypeError: for a bad `rename`.

    Example:
      >>> match_names([".w", ".b"], ["0.w", "x"], rename=[(r"^0", "")], fn="f")
      Matched(pairs={'.w': '0.w'}, missing=('.b',), unexpected=('x',), notes={})
    """
    to_key = renamer(rename, fn)
    wanted = dict.fromkeys(expected)
    source: dict[str, str] = {}
    unexpected: list[str] = []
    notes: dict[str, str] = {}
    for name in given:
        key = to_key(name)
        if key is None or key not in wanted:
            unexpected.append(name)
            if key is None:
                notes[name] = dropped
            elif key != name:
                notes[name] = f"renamed {key!r}"
            continue
        if key in source:
            raise ValueError(
                f"{fn}: the names {source[key]!r} and {name!r} are both renamed to {key!r}. "
                f"Fix: make rename map them to distinct key paths (or None to drop one)."
            )
        source[key] = name
    pairs = {key: source[key] for key in wanted if key in source}
    missing = tuple(key for key in wanted if key not in source)
    return Matched(pairs, missing, tuple(unexpected), notes)


def spec(x: Any) -> str:
    """``float32[2, 3]``: the dtype and shape of an array, as every mismatch line writes it."""
    dtype = getattr(x, "dtype", None)
    dtype = np.asarray(x).dtype if dtype is None else dtype
    name = dtype.name if isinstance(dtype, np.dtype) else str(dtype)  # '>f4' is float32
    return f"{name}{list(np.shape(x))}"


def settle(
    matched: Matched,
    mismatched: Mapping[str, str],
    *,
    strict: bool,
    fn: str,
    source: str,
    target: str,
    fixes: Sequence[str],
    non_strict: str,
    subject: str = "",
    plural: bool = False,
    context: str = "",
) -> LoadReport:
    """Raises one error for every problem of a load, or returns its report.

    Args:
      matched: from `match_names`.
      mismatched: ``{expected name: "name: given float32[2], model float32[3]"}`` for the
        pairs whose arrays differ in shape or dtype.
      strict: whether missing and unexpected names are errors.
      fn: the loader, e.g. ``"pax.load"``.
      source: what was given, e.g. ``"the checkpoint"``; `subject` (default `source`) in
        the first line.
      target: what is loaded into, e.g. ``"`like`"`` or ``"the model"``.
      fixes: the loader's fixes, tried in order (joined with "or").
      non_strict: the call loading only what matches, e.g. ``"pax.load(path, like,
        strict=False)"``: offered when a strict load has missing or unexpected names.
      plural: whether `subject` (or `source`) is plural ("do not match").
      context: added after `target` in the first line, e.g. the saved and given root types.

    Raises:
      CheckpointMismatchError: (a ValueError) listing at most `MAX_LISTED` names of each
        kind; its ``missing``, ``unexpected`` and ``mismatched`` attributes hold all of them.
    """
    missing, unexpected = matched.missing, matched.unexpected
    nothing = bool(missing or unexpected) and not matched.pairs
    if not (mismatched or nothing or (strict and (missing or unexpected))):
        return LoadReport(missing, unexpected)
    if nothing and not strict:
        head = f"{fn}: no key path of {source} is in {target}{context}, so nothing would be "
        head += "loaded. Nothing was loaded."
    else:
        verb = "do" if plural else "does"
        head = f"{fn}: {subject or source} {verb} not match {target}{context}. Nothing was loaded."
    parts = [head]
    if strict or nothing:
        if missing:
            parts.append(_section(f"{len(missing)} missing from {source}", missing))
        if unexpected:
            shown = [_noted(name, matched.notes) for name in unexpected]
            parts.append(_section(f"{len(unexpected)} unexpected in {source}", shown))
    if mismatched:
        parts.append(
            _section(f"{len(mismatched)} with another shape or dtype", mismatched.values())
        )
    if max(len(missing), len(unexpected), len(mismatched)) > MAX_LISTED:
        parts.append(
            "Every key path is in the error's attributes: error.missing, error.unexpected, "
            "error.mismatched."
        )
    tried = list(fixes)
    if strict and (missing or unexpected) and not nothing:  # else strict=False fails too
        tried.append(
            f"to load only what matches, call {non_strict}, which returns the missing and "
            f"unexpected names too"
        )
    parts.append("Fix: " + "; or ".join(tried) + ".")
    raise CheckpointMismatchError(
        "\n".join(parts), missing=missing, unexpected=unexpected, mismatched=tuple(mismatched)
    )


def _noted(name: str, notes: Mapping[str, str]) -> str:
    return f"{name} ({notes[name]})" if name in notes else name


def _section(title: str, items: Iterable[str]) -> str:
    return f"{title}:\n" + "\n".join(f"  {item}" for item in listing(list(items), MAX_LISTED))
