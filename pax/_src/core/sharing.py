"""Guards against stateful-JAX mistakes that fail silently: shared modules and arrays."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import numpy as np

from pax._src.core import pytree
from pax._src.core.registry import Kind, is_module
from pax._src.describe import describe
from pax._src.errors import SharedObjectError

_ARRAYS = (jax.Array, np.ndarray)

_SHARING_EXPLANATION = (
    "JAX transformations (jax.jit, jax.grad, jax.vmap, optimizer steps) flatten a pytree into "
    "its leaves and rebuild it, so an object reachable twice comes back as two independent "
    "copies: shared weights silently stop being shared (they are updated separately), and "
    "donating the buffers fails."
)
_SHARING_FIX = (
    "Fix: keep one reference and use it twice, e.g. self.block = Block(...) then "
    "y = self.block(self.block(x)); to tie one weight (e.g. input and output embeddings), "
    "register it once and read it from both places, e.g. logits = x @ self.embed.weight.T; "
    "to keep two independent modules (a target network), use module.copy(): it copies the "
    "arrays too."
)


_DONATE_FIX = (
    "With donate=True one buffer would be donated twice. Fix: give each place its own copy, "
    "e.g. opt = make_optimizer(jax.tree_util.tree_map(jnp.copy, model.parameters())), or "
    "build_update_fn(loss_fn, donate=False)."
)


def _what(x: Any) -> str:
    return f"{type(x).__name__} module" if is_module(x) else f"{describe(x)} array"


# `is_leaf(path, x)` lets one flatten both find the modules and stop at repeated ones.
_PATH_IS_LEAF = (
    "is_leaf_takes_path" in inspect.signature(jax.tree_util.tree_flatten_with_path).parameters
)


def _find_one_pass(tree: Any) -> tuple[list, list]:
    seen: dict[int, tuple[Any, Any]] = {}  # the values keep the objects alive
    modules: list[tuple[Any, Any, Any]] = []

    def is_leaf(path: Any, x: Any) -> bool:
        if not is_module(x):
            return False
        first = seen.get(id(x))
        if first is None:
            seen[id(x)] = (path, x)
            return False
        modules.append((first[0], path, x))
        return True  # do not walk into it again (and never loop on a cycle)

    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf, is_leaf_takes_path=True)
    arrays = _repeated_arrays(leaves[0])
    return [(_key(a), _key(b), x) for a, b, x in modules], arrays


def _find_recursive(tree: Any) -> tuple[list, list]:
    """The same walk for a JAX without `is_leaf_takes_path`: one flatten per module."""
    seen: dict[int, tuple[str, Any]] = {}
    modules: list[tuple[str, str, Any]] = []
    leaves: list[tuple[str, Any]] = []

    def walk(node: Any, prefix: str) -> None:
        started = False

        def is_leaf(x: Any) -> bool:
            nonlocal started
            if not started:  # the first call is on `node` itself: expand it
                started = True
                return False
            return is_module(x)

        for key_path, leaf in jax.tree_util.tree_flatten_with_path(node, is_leaf=is_leaf)[0]:
            where = prefix + jax.tree_util.keystr(key_path)
            if not is_module(leaf):
                leaves.append((where, leaf))
            elif id(leaf) in seen:
                modules.append((seen[id(leaf)][0], where, leaf))
            else:
                seen[id(leaf)] = (where, leaf)
                walk(leaf, where)

    if is_module(tree):
        seen[id(tree)] = ("", tree)
    walk(tree, "")
    return modules, _repeated_arrays(leaves)


def _repeated_arrays(leaves: list) -> list[tuple[str, str, Any]]:
    seen: dict[int, Any] = {}
    out = []
    for path, leaf in leaves:
        if isinstance(leaf, _ARRAYS):
            first = seen.setdefault(id(leaf), path)
            if first is not path:
                out.append((_key(first), _key(path), leaf))
    return out


def _key(path: Any) -> str:
    return path if isinstance(path, str) else jax.tree_util.keystr(path)


def _item(path: str) -> str:
    """The top-level item of a key path string: ``"[1]"`` for ``"[1].opt_state['w']"``."""
    return path[: path.index("]") + 1] if path.startswith("[") and "]" in path else path


def _find(tree: Any, arrays: str = "all") -> list[tuple[str, str, Any]]:
    modules, shared_arrays = (_find_one_pass if _PATH_IS_LEAF else _find_recursive)(tree)
    if arrays == "within" and not is_module(tree):
        shared_arrays = [a for a in shared_arrays if _item(a[0]) == _item(a[1])]
    return modules + shared_arrays


def modules_are_distinct(*roots: Any) -> bool:
    """True if no module is reachable twice from `roots` (modules only; about 0.5 us each)."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        module = stack.pop()
        if id(module) in seen:
            return False
        seen.add(id(module))
        d = module.__dict__
        for name, kind in pytree.read_layout(module).module_children:
            value = d[name]
            if kind is Kind.MODULE:
                if value is not None:
                    stack.append(value)
            elif type(value) is list or type(value) is tuple:  # the usual container: no flatten
                for item in value:
                    if is_module(item):
                        stack.append(item)
                    elif item is not None:
                        stack.extend(_modules_in(item))
            else:
                stack.extend(_modules_in(value))
    return True


def _modules_in(tree: Any) -> list[Any]:
    return [m for m in jax.tree_util.tree_leaves(tree, is_leaf=is_module) if is_module(m)]


def find_shared(tree: Any) -> list[tuple[str, str]]:
    """Returns the key paths of every module or array object reachable twice in ``tree``.

    Each pair is ``(first path, later path)`` as `jax.tree_util.keystr` strings (the root
    itself is ``""``): shared modules first, then shared arrays, each in flatten order. Objects
    are compared by identity; the contents of a module reported as shared are not reported
    again. The cost is about one ``jax.tree_util.tree_flatten_with_path`` of ``tree``.

    Args:
      tree: a module, optimizer, or any pytree of them.

    Returns:
      The list of pairs; empty if nothing is shared.

    Example:
      >>> import pax
      >>> fc = pax.nn.Linear(2, 2)
      >>> pax.find_shared(pax.nn.Sequential(fc, pax.nn.Linear(2, 2), fc))
      [('.modules[0]', '.modules[2]')]
    """
    return [(first, second) for first, second, _ in _find(tree)]


def describe_shared(
    tree: Any, *, who: str = "pax.check", arrays: str = "all", donate: bool = False
) -> str | None:
    """The error message explaining the objects `find_shared` finds in ``tree``, or None.

    Args:
      tree: a module, optimizer, or any pytree of them.
      who: the function named at the start of the message.
      arrays: ``"all"`` reports every shared array, ``"within"`` only arrays shared inside
        one top-level item of a tuple, list or dict `tree` (see `check`).
      donate: explain that the buffers are donated.

    Returns:
      A message listing both key paths of each shared object and how to share weights
      explicitly, or None if nothing is shared.

    Example:
      >>> import pax
      >>> print(describe_shared(pax.nn.Linear(2, 2)))
      None
    """
    found = _find(tree, arrays)
    if not found:
        return None
    root = type(tree).__name__ if is_module(tree) else "tree"
    lines = [
        f"  {root}{second} is the same {_what(obj)} as {root}{first}"
        for first, second, obj in found
    ]
    count = f"{len(found)} object{'s are' if len(found) > 1 else ' is'}"
    return (
        f"{who}: {count} reachable twice in one {root}:\n"
        + "\n".join(lines)
        + f"\n{_SHARING_EXPLANATION} {_DONATE_FIX if donate else _SHARING_FIX}"
    )


def check(tree: Any, *, donate: bool = False) -> None:
    """Raises if a module, or an array within one model, is reachable twice in ``tree``.

    A pytree cannot express sharing: after any JAX transformation the two places hold two
    independent copies. Call ``pax.check(model)`` after building a model to catch it early.

    Modules reachable twice are always reported: their updates silently stop being shared. An
    array reachable twice is reported when both places are inside one model (the root module,
    or one top-level item when ``tree`` is a tuple, list or dict): that is an attempt to tie
    weights, which silently unties after the first step. ``module.copy()`` copies the arrays, so
    a target network made with it is never reported. The same array in two top-level items,
    e.g. an optimizer that keeps the initial parameters (``optax.contrib.prodigy``), is a
    shared immutable value and is accepted, unless `donate` is set: a buffer donated twice
    fails. `find_shared` lists every shared object.

    Args:
      tree: a module, optimizer, or any pytree of them.
      donate: report every array reachable twice (the buffers of ``tree`` will be donated).

    Raises:
      SharedObjectError: listing both key paths of every shared object, with the fix.

    Example:
      >>> import pax
      >>> fc = pax.nn.Linear(2, 2)
      >>> pax.check(pax.nn.Sequential(fc, fc))
      Traceback (most recent call last):
      ...
      pax.SharedObjectError: pax.check: 1 object is reachable twice in one Sequential:
        Sequential.modules[1] is the same Linear module as Sequential.modules[0]
      ...
    """
    message = describe_shared(tree, arrays="all" if donate else "within", donate=donate)
    if message is not None:
        raise SharedObjectError(message)
