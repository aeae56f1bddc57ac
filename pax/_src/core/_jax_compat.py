"""The only file of pax that touches JAX internals; everything else uses public JAX APIs.

`trace_state_clean()` answers "is any JAX transformation being traced right now?". JAX has no
public function for it; it lives in ``jax._src.core`` (checked for every JAX release pax
supports, see `SUPPORTED`). If a future JAX moves it, pax falls back to a public probe and
raises a clear error only if that fails too.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# The JAX releases whose internals this file was written against.
SUPPORTED = ((0, 4, 30), (0, 10, 99))

Tracer = jax.core.Tracer


def _version() -> tuple[int, ...]:
    parts = []
    for piece in jax.__version__.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _probe_trace_state_clean() -> bool:
    """Public fallback: a fresh constant is a tracer exactly when a trace is active."""
    return not isinstance(jnp.zeros(()), Tracer)


def _load_trace_state_clean() -> Callable[[], bool]:
    internal: Callable[[], bool] | None
    try:
        from jax._src.core import trace_state_clean as internal
    except ImportError:
        internal = None
    if internal is not None and SUPPORTED[0] <= _version() <= SUPPORTED[1]:
        return internal
    if internal is not None:
        return internal  # newer JAX that still has it: same semantics so far
    try:
        _probe_trace_state_clean()
    except Exception as e:  # pragma: no cover - depends on a future JAX
        raise ImportError(
            f"pax supports jax {'.'.join(map(str, SUPPORTED[0]))} to "
            f"{'.'.join(map(str, SUPPORTED[1][:2]))}.x; jax {jax.__version__} has no "
            f"trace_state_clean and the public fallback failed ({e}). Fix: pip install "
            f"'jax<{SUPPORTED[1][0]}.{SUPPORTED[1][1] + 1}'."
        ) from e
    return _probe_trace_state_clean


trace_state_clean: Callable[[], bool] = _load_trace_state_clean()
"""True when no JAX transformation (jit, grad, vmap, scan, ...) is being traced."""


def _load_current_trace() -> Callable[[], object]:
    try:
        from jax.extend.core import get_opaque_trace_state
    except ImportError:  # pragma: no cover - older JAX
        try:
            from jax._src.core import get_opaque_trace_state
        except ImportError:
            return lambda: None
    return get_opaque_trace_state


current_trace: Callable[[], object] = _load_current_trace()
"""An opaque token of the innermost transformation being traced; tokens of the same trace
compare equal (`jax.extend.core.get_opaque_trace_state`, as Flax NNX uses it). Outside any
transformation it stands for the evaluation context. A JAX without it gives None (then every
module counts as made outside the transformation: detection as strict as before)."""


def is_batch_tracer(x: object) -> bool:
    """True when `x` is batched by an enclosing `jax.vmap` (looking through grad's tracers).

    JAX has no public API telling whether a value is batched by an enclosing vmap; the tracer
    type's name is the least fragile signal (a renamed type only loses the warnings using it).
    """
    for _ in range(4):  # look through grad's tracers (vmap of grad)
        if not isinstance(x, Tracer):
            return False
        if type(x).__name__ == "BatchTracer":
            return True
        x = getattr(x, "primal", None)
    return False


def varying_axes(x: object) -> frozenset:
    """The shard_map axes `x` varies over (empty when unknown or outside shard_map)."""
    try:
        aval = jax.typeof(x)
    except Exception:  # best effort: any failure means "unknown"
        return frozenset()
    vma = getattr(aval, "vma", None)
    if vma is None:  # the attribute's other spelling
        vma = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
    return frozenset(vma) if isinstance(vma, (set, frozenset)) else frozenset()


__all__ = [
    "SUPPORTED",
    "Tracer",
    "current_trace",
    "is_batch_tracer",
    "trace_state_clean",
    "varying_axes",
]
