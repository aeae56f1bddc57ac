"""`RngSeq`: a module holding an RNG key and handing out fresh keys (Pax v0.2's `RngSeq`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import jax.extend.core
import numpy as np

from pax._src.core._jax_compat import is_batch_tracer
from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key
from pax._src.describe import describe
from pax._src.nn.dropout import axis_names, fold_axis_indices

T = TypeVar("T")

# The return type of a Pax v0.2 loss function ``loss_fn(params, model, inputs)``:
# ``(loss, (aux, model))``, the form `pax.utils.build_update_fn` takes.
LossFnOutput = tuple[jax.Array, tuple[Any, T]]

# JAX has no public API saying "inside jax.vmap"; `jax.extend.core` has these two (as
# pax.metrics uses). A JAX without them only loses the warning.
_under_vmap = getattr(jax.extend.core, "unsafe_am_i_under_a_vmap_DO_NOT_USE", None)
_take_current_trace = getattr(jax.extend.core, "take_current_trace", None)


def _vmap_with_unbatched(key: Any) -> bool:
    """True when `key` is shared by every example of an enclosing `jax.vmap`.

    A key batched by the vmap is a batch tracer. An unbatched one is either a concrete array
    under a vmap, or a tracer of an outer transformation while the innermost one is the vmap
    (``jax.jit(jax.vmap(f))``). A tracer of an inner transformation (``jax.vmap(jax.jit(f))``,
    a ``lax.scan`` body) is left alone: batched or not cannot be told there.
    """
    if _under_vmap is None or is_batch_tracer(key):
        return False
    try:
        if not _under_vmap():
            return False
        if not isinstance(key, jax.core.Tracer):
            return True
        if _take_current_trace is None:
            return False
        with _take_current_trace() as trace:
            return type(trace).__name__ == "BatchTrace"
    except Exception:  # best effort: a changed internal only loses the warning
        return False


def _check_key(key: Any) -> Any:
    """Returns `key`, or raises `TypeError` if it is not a JAX random key."""
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == np.uint32 and np.shape(key) in ((2,), (4,))  # threefry, rbg
    if not ((typed and np.ndim(key) == 0) or raw):
        raise TypeError(
            f"RngSeq: rng_key must be one JAX random key (uint32[2] from jax.random.PRNGKey, "
            f"or a jax.random.key), got {describe(key)}. Fix: RngSeq(rng_key="
            f"jax.random.PRNGKey(0)); for one RngSeq per example, jax.vmap(lambda k: "
            f"RngSeq(rng_key=k))(jax.random.split(key, n))."
        )
    return key


class RngSeq(Module):
    """A sequence of RNG keys: each `next_rng_key` call returns new keys and advances the state.

    The key is the state ``rng_key``. In training mode each call splits it, returns the new
    subkeys and keeps the rest, so a model holding an `RngSeq` draws new keys on every step,
    also inside ``jax.jit`` when the updated model is returned (as for any pax state). In
    ``eval()`` mode the key does not advance: every call returns the same keys (as Pax v0.2's
    `RngSeq`), so evaluation is deterministic.

    Under ``jax.vmap`` with the `RngSeq` shared by every example (``in_axes=None``, as Pax
    v0.2's dropout code was written) **every example gets the same keys**; in training mode
    this warns. Either pass `axis_name` (the index along each named mapped axis is folded into
    the returned keys, the stored key stays shared), or give every example its own `RngSeq`
    (batched, ``in_axes=0``). As `pax.nn.Dropout`, the warning is best effort: a vmap whose
    body is itself jitted or scanned is not seen.

    Args:
      seed: an int seed, used when `rng_key` is None.
      rng_key: the initial key; default ``jax.random.PRNGKey(seed)`` with a seed, else
        `pax.next_rng_key()`.
      axis_name: the name (or tuple of names) of mapped axes (``jax.vmap(axis_name=...)``,
        ``jax.shard_map``, ``jax.pmap``) over which the returned keys must differ.

    Raises:
      TypeError: for a seed that is not an int, both a seed and a key, a key that is not one
        JAX random key, or an `axis_name` that is not a string or a tuple of strings.

    Example:
      >>> import jax, pax
      >>> seq = pax.utils.RngSeq(seed=0)
      >>> k1 = seq.next_rng_key()
      >>> k2, k3 = seq.next_rng_key(2)
      >>> bool((k1 != k2).any())
      True
      >>> step = jax.jit(lambda seq: (seq.next_rng_key(), seq))
      >>> key, seq = step(seq)  # the advanced state comes back
      >>> seq = pax.utils.RngSeq(seed=0, axis_name="batch")
      >>> noise = lambda s, x: (x + jax.random.normal(s.next_rng_key()), s)
      >>> (a, b), seq = jax.vmap(noise, (None, 0), (0, None), axis_name="batch")(
      ...     seq, jax.numpy.zeros(2))  # the key advances once, for every example
      >>> bool(a != b)
      True
    """

    rng_key: jax.Array

    def __init__(
        self,
        seed: int | None = None,
        *,
        rng_key: jax.Array | None = None,
        axis_name: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(seed, np.integer):
            seed = int(seed)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(
                f"RngSeq: seed must be an int or None, got {seed!r}. Fix: RngSeq(seed=42), or "
                f"RngSeq(rng_key=key) with a JAX key."
            )
        if seed is not None and rng_key is not None:
            raise TypeError(
                "RngSeq: got both a seed and an rng_key; pass one. Fix: RngSeq(rng_key=key) or "
                f"RngSeq(seed={seed})."
            )
        if rng_key is not None:
            _check_key(rng_key)
        self.axis_name = axis_names("RngSeq", axis_name)
        key = jax.random.PRNGKey(seed) if seed is not None else resolve_rng_key(rng_key)
        self.register_state("rng_key", key)

    def next_rng_key(self, num_keys: int = 1) -> jax.Array | list[jax.Array]:
        """Returns one new key (`num_keys` = 1) or a list of `num_keys` keys.

        In training mode the state advances; in eval mode it does not.

        Args:
          num_keys: how many keys to return.

        Raises:
          ValueError: for `num_keys` not a positive int.

        Example:
          >>> import pax
          >>> seq = pax.utils.RngSeq(seed=0)
          >>> len(seq.next_rng_key(3))
          3
          >>> a, b = seq.eval().next_rng_key(), seq.eval().next_rng_key()
          >>> bool((a == b).all())  # eval mode: the key does not advance
          True
        """
        if not isinstance(num_keys, int) or isinstance(num_keys, bool) or num_keys < 1:
            raise ValueError(
                f"RngSeq.next_rng_key: num_keys must be a positive int, got {num_keys!r}. Fix: "
                f"seq.next_rng_key() for one key, seq.next_rng_key(4) for a list of four."
            )
        new_key, *keys = jax.random.split(self.rng_key, num_keys + 1)
        if self.training:
            if self.axis_name is None:
                self._warn_if_shared()
            self.rng_key = new_key
        if self.axis_name is not None:
            keys = [self._fold_axis_indices(key) for key in keys]
        return keys[0] if num_keys == 1 else keys

    def _fold_axis_indices(self, key: jax.Array) -> jax.Array:
        return fold_axis_indices(
            key,
            self.axis_name,
            lambda name: (
                f"RngSeq: axis_name {name!r} is not bound here; next_rng_key must be called "
                f"inside jax.vmap / jax.shard_map / jax.pmap over an axis named {name!r}. "
                f"Fix: call it there, or outside them use seq.axis_name = None."
            ),
        )

    def _warn_if_shared(self) -> None:
        if _vmap_with_unbatched(self.rng_key):
            warnings.warn(
                "RngSeq.next_rng_key: called under jax.vmap with an unbatched rng_key "
                "(in_axes=None) and no axis_name: every example gets the same keys. Fix: "
                "RngSeq(..., axis_name='batch') with jax.vmap(..., axis_name='batch'), or one "
                "RngSeq per example: jax.vmap(f, in_axes=(0, 0))(seqs, xs).",
                UserWarning,
                stacklevel=3,
            )

    def __call__(self, num_keys: int = 1) -> jax.Array | list[jax.Array]:
        """Same as `next_rng_key`.

        Example:
          >>> import pax
          >>> pax.utils.RngSeq(seed=0)().shape
          (2,)
        """
        return self.next_rng_key(num_keys)
