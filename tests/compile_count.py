"""Counts XLA compilations with JAX's public ``jax_log_compiles`` option.

    with count_compilations(step) as compilations:
        step(x)
        step(x)
    assert compilations() == 1

With the option on, JAX logs ``Compiling jit(step) with global shapes and types ...`` (at WARNING
level, under the ``jax`` logger) each time it lowers and compiles a program for a new call
signature; a call that reuses a compiled program logs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax

# "Compiling jit(step) with ...", or in older JAX "Compiling step for ..." / "jit_step".
_COMPILING = re.compile(r"Compiling (?:jit\((?P<a>.+?)\)|jit_(?P<b>\S+)|(?P<c>\S+))[ ]")


def _compiled_name(message: str) -> str | None:
    match = _COMPILING.match(message)
    if match is None:
        return None
    return match.group("a") or match.group("b") or match.group("c")


class _CompileLog(logging.Handler):
    def __init__(self, name: str | None) -> None:
        super().__init__(logging.DEBUG)
        self.name_filter = name
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        name = _compiled_name(record.getMessage())
        if name is not None and self.name_filter in (None, name):
            self.names.append(name)


@contextlib.contextmanager
def count_compilations(fn: Any = None) -> Iterator[Callable[[], int]]:
    """Yields a function returning how many programs were compiled so far inside the block.

    `fn` restricts the count to one jitted function (matched by ``__name__``, or pass the name):
    eager operations compile small programs of their own the first time they run.
    """
    name = fn if fn is None or isinstance(fn, str) else fn.__name__
    handler = _CompileLog(name)
    logger = logging.getLogger("jax")
    level = logger.level
    logger.addHandler(handler)
    if not logger.isEnabledFor(logging.WARNING):
        logger.setLevel(logging.WARNING)
    try:
        with jax.log_compiles(True):
            yield lambda: len(handler.names)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
