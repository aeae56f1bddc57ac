"""Tracer marking: detecting modules changed inside a transformation and not returned by it.

Assigning a traced value to a registered attribute marks the module (`mark`). Two checks
follow from it:

- A marked module takes a checking path in flatten and in ``__call__``: outside any
  transformation, a tracer left in it means it was changed inside a transformed function and
  used afterwards (the module was closed over).
- A marked module is also recorded as *pending* until it is flattened inside the
  transformation (as its output, e.g. ``return y, model``). Modules passed as arguments are
  copies made by JAX, so when one is changed and not returned the user never touches it again:
  the next pax operation outside any transformation (a module call, a flatten that rebuilds
  its cache, a view such as ``parameters()``, a `build_update_fn` step, `pax.save`) finds the
  leftover and raises, naming ``Class.attribute``. The check costs one truthiness test of a
  list while nothing is pending.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax

from pax._src.core import registry
from pax._src.core._jax_compat import Tracer, current_trace, trace_state_clean

LEAK_FIX = (
    "A module changed inside a transformed function must be returned by it; the object you "
    "passed in is not updated. Fix:\n"
    "    @jax.jit\n"
    "    def step(model, x):\n"
    "        y = model(x)\n"
    "        return y, model      # return the updated model\n"
    "    y, model = step(model, x)"
)


_NOT_RETURNED = (
    "{where} was changed inside a transformed function (jax.jit, jax.grad, jax.vmap, "
    "jax.lax.scan, ...) that did not return the module: the change is lost, and the model "
    "you passed in still holds its old state (e.g. BatchNorm statistics that never move). "
    "To drop such changes on purpose (gradients only, jax.eval_shape, jax.jit(...).lower or "
    ".trace), run the transformation under `with pax.discard_state_changes():`. (If that "
    "transformation raised an error before it could return, this report is stale and is not "
    "repeated.) "
)


class _Pending:
    """A change made inside a transformation and not returned yet: weak references to the
    module and to the copies that carry the changed value (a view returned instead of the
    module), ``Class.attribute`` of the first change, and the thread that traced it (only that
    thread's next pax call checks it: another thread's trace may be in progress). When all of
    them died without being flattened inside the transformation, the change is lost for sure;
    one still alive is the user's own object (it was closed over), a loss only if it still
    holds tracers."""

    __slots__ = ("name", "refs", "thread", "where")

    def __init__(self, module: Any, name: str) -> None:
        self.refs = [weakref.ref(module)]
        self.name = name
        self.where = f"{type(module).__name__}.{name}"
        self.thread = threading.get_ident()

    def holds(self, module: Any) -> bool:
        return any(ref() is module for ref in self.refs)


PENDING: list[_Pending] = []
_LOCK = threading.Lock()
_LOCAL = threading.local()


def mark(module: Any, name: str, old: Any, new: Any) -> None:
    """Records that `module.name` was changed from `old` to `new` inside a transformation.

    Exact: nothing is recorded when `new` holds the same leaves (by identity) in the same
    structure as `old` (a stateless module writing back its empty state, eval-mode layers).
    A module constructed inside the transformation being traced is marked (a tracer leaking
    out of it is still caught) but never pending: nothing outside it can have lost the change.
    """
    if _same_value(old, new):  # invariant 9: only a real change is tracked
        return
    d = module.__dict__
    registry.mark_traced(d)
    if getattr(_LOCAL, "discarding", False):
        return
    born = registry.born_in(d)
    if born is not None and born == current_trace():
        return
    with _LOCK:
        if not any(entry.holds(module) for entry in PENDING):
            PENDING.append(_Pending(module, name))


def _same_value(old: Any, new: Any) -> bool:
    """True if `new` is `old`, or has its structure and the very same leaves (modules are
    compared as leaves, by identity: nothing is flattened, so no flatten side effect)."""
    if old is new:
        return True
    if old is None or new is None:
        return False
    old_leaves, old_def = jax.tree_util.tree_flatten(old, is_leaf=registry.is_module)
    new_leaves, new_def = jax.tree_util.tree_flatten(new, is_leaf=registry.is_module)
    return old_def == new_def and all(a is b for a, b in zip(old_leaves, new_leaves))


def flattened_in_trace(module: Any) -> None:
    """`module` is being flattened inside a transformation (it is returned, not lost), or was
    checked outside of it: it is no longer pending."""
    if PENDING:
        with _LOCK:
            PENDING[:] = [entry for entry in PENDING if not entry.holds(module)]


def copied(source: Any, copy: Any) -> None:
    """`copy` (a view of `source`, made while `source` is pending) carries `source`'s changed
    value: returning either one returns the change (``return y, model.states()``). A copy that
    dropped the value (``model.parameters()`` after a state changed) does not."""
    with _LOCK:
        for entry in PENDING:
            if entry.holds(source):
                value = source.__dict__.get(entry.name)
                if value is not None and copy.__dict__.get(entry.name) is value:
                    entry.refs.append(weakref.ref(copy))


@contextlib.contextmanager
def discarding() -> Iterator[None]:
    """Within this block, modules changed inside transformations may be dropped on purpose.

    Public as `pax.discard_state_changes`. For computations whose state changes you do not
    want: gradients only, `jax.eval_shape`, a `jax.vmap` over copies of a model.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> bn = pax.nn.BatchNorm1D(3)
      >>> with pax.discard_state_changes():
      ...     y = jax.jit(lambda m, x: m(x))(bn, jnp.ones((4, 3)))
      >>> y.shape
      (4, 3)
    """
    previous = getattr(_LOCAL, "discarding", False)
    _LOCAL.discarding = True
    try:
        yield
    finally:
        _LOCAL.discarding = previous


def check_pending() -> None:
    """Outside any transformation: raises if a module this thread changed inside one was not
    returned. Entries of other threads are theirs to check (their trace may be running)."""
    if not PENDING or not trace_state_clean():
        return
    me = threading.get_ident()  # invariant 9: only this thread's entries
    with _LOCK:
        pending = [entry for entry in PENDING if entry.thread == me]
        if not pending:
            return
        PENDING[:] = [entry for entry in PENDING if entry.thread != me]
    for entry in pending:
        alive = [module for module in (ref() for ref in entry.refs) if module is not None]
        if not alive or any(_first_tracer(module) is not None for module in alive):
            raise RuntimeError(_NOT_RETURNED.format(where=entry.where) + LEAK_FIX)


def _first_tracer(module: Any) -> str | None:
    """``Class.attribute[path]`` of the first tracer held by `module`, or None."""
    d = module.__dict__
    for name in registry.layout_in(d).children:
        for path, leaf in jax.tree_util.tree_leaves_with_path(d[name]):
            if isinstance(leaf, Tracer):
                return f"{type(module).__name__}.{name}{jax.tree_util.keystr(path)}"
    return None


def check_no_leaked_tracers(module: Any) -> None:
    """Raises if `module` (touched inside a transform) still holds tracers outside of it."""
    if not trace_state_clean():
        return  # inside a transformation: tracers are legitimate here
    d = module.__dict__
    donated = registry.donated_as(d)
    if donated is not None:
        raise RuntimeError(
            f"{type(module).__name__}: this module was the {donated} passed to a step built "
            f"with build_update_fn(..., donate=True): its arrays were donated to the step and "
            f"are deleted. Fix: use the {donated} the step returned, never the one passed in: "
            f"loss, model, opt = update_fn(model, opt, batch)."
        )
    flattened_in_trace(module)  # reported here (or clean): no longer pending
    where = _first_tracer(module)
    if where is not None:
        raise RuntimeError(
            f"{where} holds a JAX tracer from a transformation (jax.jit, jax.grad, jax.vmap, "
            f"...) that has already returned: the module was modified inside it and used "
            f"afterwards. {LEAK_FIX}"
        )
    registry.clear_traced(d)


def wrap_call(call: Callable) -> Callable:
    """Wraps a module's ``__call__`` so that a module holding leaked tracers raises first."""
    key, view = registry.TRACERS_KEY, registry.VIEW_KEY
    recorders = CALL_RECORDERS  # non-empty only while `summary(*inputs)` records calls

    @functools.wraps(call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if key in self.__dict__:
            check_no_leaked_tracers(self)
        if PENDING:
            check_pending()
        if view in self.__dict__:  # invariant 10: a view is never called as a model
            raise TypeError(_VIEW_CALLED.format(cls=type(self).__name__, view=self.__dict__[view]))
        if recorders:
            return recorders[0].record(self, call, args, kwargs)
        return call(self, *args, **kwargs)

    __call__.__leak_checked__ = True  # type: ignore[attr-defined]
    return __call__


# The call recorders active in any thread (`recording.py`, a feature above the protocol, adds
# and removes them): the wrapped ``__call__`` tests this list's truthiness, and hands a call to
# ``CALL_RECORDERS[0].record`` while it is not empty.
CALL_RECORDERS: list[Any] = []

_VIEW_CALLED = (
    "{cls}: this module is the view model.{view}(): it holds only some of the model's arrays "
    "(the others are None) and cannot compute. Fix: call the model itself, `model(x)`, or "
    "merge the view back first: `model.update(params)(x)`."
)


def is_wrapped(call: Any) -> bool:
    """True if `call` was made by `wrap_call`."""
    return getattr(call, "__leak_checked__", False)
