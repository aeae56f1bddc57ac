"""Recording module calls during an abstract pass, for `summary(*example_inputs)`.

The wrapped ``__call__`` of every module (`tracing.wrap_call`) tests ``ACTIVE`` (the protocol's
``tracing.CALL_RECORDERS``), a list that is empty unless some thread is recording: one
truthiness test of a closure-bound list per call when nothing records. While a recorder is
active in *this* thread, each module call is recorded with the shapes of its inputs and
outputs; calls in other threads are not.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax

from pax._src.core import tracing
from pax._src.describe import describe, is_array_like

# One entry per recorder active in any thread (the protocol's list: the hot path only tests
# its truthiness).
ACTIVE: list[Any] = tracing.CALL_RECORDERS
_LOCK = threading.Lock()
_LOCAL = threading.local()


def shapes(tree: Any) -> str:
    """The array leaves of `tree` written with `describe`, comma-separated (others by type).

    Example:
      >>> import jax.numpy as jnp
      >>> shapes(((jnp.ones((2, 3)),), {"mask": None, "n": 3}))
      'f32[2,3], int'
    """
    leaves = jax.tree_util.tree_leaves(tree)
    return ", ".join(describe(x) for x in leaves if is_array_like(x) or x is not None)


class Recorder:
    """Collects ``{id(module): [(inputs, outputs), ...]}`` of the calls made while active.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = pax.nn.Linear(2, 3)
      >>> with recording() as recorder:
      ...     _ = net(jnp.ones((1, 2)))
      >>> recorder.calls[id(net)]
      [('f32[1,2]', 'f32[1,3]')]
    """

    def __init__(self) -> None:
        self.calls: dict[int, list[tuple[str, str]]] = {}
        self.keep: list[Any] = []  # the called modules, so that their ids stay unique
        self.aliases: dict[int, int] = {}  # id of a copy -> id of the module it stands for

    def record(self, module: Any, call: Callable, args: tuple, kwargs: dict) -> Any:
        """The hook the wrapped ``__call__`` calls while recorders are active (in any thread):
        records the call if this thread records (`record`), else just makes it."""
        return record(module, call, args, kwargs)

    def call(self, module: Any, call: Callable, args: tuple, kwargs: dict) -> Any:
        out = call(module, *args, **kwargs)
        entry = (shapes((args, kwargs)), shapes(out))
        calls = self.calls.setdefault(self.aliases.get(id(module), id(module)), [])
        if id(module) not in self.aliases or entry not in calls:  # a traced body: once
            calls.append(entry)
        self.keep.append(module)
        return out


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """Records the module calls made in this thread within the block."""
    recorder = Recorder()
    previous = getattr(_LOCAL, "recorder", None)
    _LOCAL.recorder = recorder
    with _LOCK:
        ACTIVE.append(recorder)
    try:
        yield recorder
    finally:
        with _LOCK:
            ACTIVE.remove(recorder)
        _LOCAL.recorder = previous


def alias(copies: Iterable[Any], originals: Iterable[Any]) -> None:
    """Records the calls of each module of `copies` as calls of the module of `originals` at
    the same position, if this thread records (else does nothing).

    For a module that calls a copy of a submodule it holds, e.g. `pax.nn.Stack`, whose scan
    body calls one layer rebuilt from the stacked arrays (it passes the layer's modules and the
    stacked ones, in `iter_modules` order). Identical calls of a copy (a body traced again)
    are recorded once.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net, copy = pax.nn.Linear(2, 3), pax.nn.Linear(2, 3)
      >>> with recording() as recorder:
      ...     alias([copy], [net])
      ...     _ = copy(jnp.ones((1, 2)))
      >>> recorder.calls[id(net)]
      [('f32[1,2]', 'f32[1,3]')]
    """
    recorder = getattr(_LOCAL, "recorder", None)
    if recorder is None:
        return
    for copy, original in zip(copies, originals):
        recorder.aliases[id(copy)] = recorder.aliases.get(id(original), id(original))
        recorder.keep += [copy, original]


def record(module: Any, call: Callable, args: tuple, kwargs: dict) -> Any:
    """Calls ``call(module, *args, **kwargs)``, recording it if this thread records."""
    recorder = getattr(_LOCAL, "recorder", None)
    if recorder is None:
        return call(module, *args, **kwargs)
    return recorder.call(module, call, args, kwargs)
