"""Which mapped axes a metric update runs under, to warn when it is not summed over them.

Under ``jax.shard_map`` or ``jax.pmap`` each device traces the update with its own shard of the
batch; a metric without `axis_name` then adds only that shard, and every device ends up with
its own partial totals (one device's value, read as the metric's). This file finds the named
axes bound where an update runs and tells which of them the update may differ over.

`varying_axes` and `is_batch_tracer` are the core's (`pax/_src/core/_jax_compat.py`), shared
with `pax.nn.Dropout` and `pax.utils.RngSeq`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.extend.core

from pax._src.core._jax_compat import is_batch_tracer, varying_axes

# JAX has no public API listing the named axes bound here (shard_map mesh axes, pmap and
# named vmap axes); `jax.extend.core` exports one marked "do not use". Without it (a JAX that
# renames it) the warning is lost, nothing else.
_bound_axis_names = getattr(jax.extend.core, "unsafe_get_axis_names_DO_NOT_USE", None)

PMAP_DEFAULT_AXIS = "_internal_pmap_axis_name"  # the name jax.pmap binds without axis_name


def bound_axis_names() -> tuple[Any, ...]:
    """The named mapped axes bound where this runs (empty outside shard_map / pmap / vmap).

    Example:
      >>> bound_axis_names()
      ()
    """
    if _bound_axis_names is None:
        return ()
    try:
        return tuple(_bound_axis_names())
    except Exception:  # best effort: any failure means "none known"
        return ()


def _tracks_variance(name: Any) -> bool:
    """True where JAX knows which values vary over `name` (shard_map with check_vma)."""
    try:
        return name in varying_axes(jax.lax.axis_index(name))
    except Exception:  # best effort: an axis we cannot ask about counts as tracked (no warning)
        return True


def unreduced_axes(deltas: Iterable[Any], states: Iterable[Any]) -> tuple[Any, ...]:
    """The bound mapped axes over which `deltas` may differ while the `states` do not.

    An update on such an axis adds one device's (or one example's) share to totals meant to
    be shared: the metric would report that share. Under shard_map with check_vma the answer
    is exact; under jax.pmap (or check_vma=False) every bound axis counts unless the states
    themselves are mapped (per-device metrics kept on purpose).

    Example:
      >>> import jax.numpy as jnp
      >>> unreduced_axes([jnp.ones(())], [jnp.zeros(())])  # not inside shard_map / pmap
      ()
    """
    names = bound_axis_names()
    if not names:
        return ()
    deltas, states = list(deltas), list(states)
    state_axes = frozenset().union(*map(varying_axes, states))
    delta_axes = frozenset().union(*map(varying_axes, deltas))
    states_batched = any(is_batch_tracer(s) for s in states)
    out = []
    for name in names:
        if name in state_axes:
            continue
        if _tracks_variance(name):
            if name in delta_axes:
                out.append(name)
        elif not states_batched:
            out.append(name)
    return tuple(out)
