"""A global, thread-safe RNG key for convenient eager initialization."""

from __future__ import annotations

import threading

import jax

from pax._src.core._jax_compat import trace_state_clean

_DEFAULT_SEED = 42
_lock = threading.Lock()
_key: jax.Array | None = None

_TRACED_ERROR = (
    "pax.next_rng_key() was called inside a JAX transformation (jax.jit, jax.grad, jax.vmap, "
    "jax.lax.scan, ...). The global key would either leak a tracer or bake one constant key into "
    "the compiled program. Fix: create the module outside the transformation, or pass a key "
    "explicitly: Module(..., rng_key=key), with `key` split from a key you pass in."
)


def seed_rng_key(seed: int) -> None:
    """Resets the global RNG key to ``jax.random.PRNGKey(seed)``.

    Example:
      >>> import pax
      >>> pax.seed_rng_key(0)
      >>> k1 = pax.next_rng_key()
      >>> pax.seed_rng_key(0)
      >>> bool((pax.next_rng_key() == k1).all())
      True
    """
    global _key
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"pax.seed_rng_key expects an int seed, got {seed!r}.")
    with _lock:
        _key = jax.random.PRNGKey(seed)


def next_rng_key() -> jax.Array:
    """Splits the global RNG key and returns a fresh key (seeded with 42 until `seed_rng_key`).

    Only for eager code: inside a JAX transformation it raises `RuntimeError`.

    Example:
      >>> import pax
      >>> pax.seed_rng_key(1)
      >>> pax.next_rng_key().shape
      (2,)
    """
    global _key
    if not trace_state_clean():
        raise RuntimeError(_TRACED_ERROR)
    with _lock:
        key = jax.random.PRNGKey(_DEFAULT_SEED) if _key is None else _key
        new_key, sub = jax.random.split(key)
        if isinstance(sub, jax.core.Tracer):
            raise RuntimeError(_TRACED_ERROR)
        _key = new_key
    return sub


def resolve_rng_key(rng_key: jax.Array | None) -> jax.Array:
    """Returns `rng_key` (checked to be a PRNG key), or the next global key when it is None.

    Example:
      >>> import jax, pax
      >>> from pax._src.core.rng import resolve_rng_key
      >>> resolve_rng_key(jax.random.PRNGKey(0)).shape
      (2,)
      >>> resolve_rng_key("0")
      Traceback (most recent call last):
      ...
      TypeError: rng_key must be a JAX PRNG key, got str '0'. Fix: rng_key=jax.random.PRNGKey(0) ...
    """
    if rng_key is None:
        return next_rng_key()
    if not _is_key(rng_key):
        shown = getattr(rng_key, "dtype", None)
        what = (
            f"an array of dtype {shown} and shape {tuple(rng_key.shape)}"
            if shown is not None and hasattr(rng_key, "shape")
            else f"{type(rng_key).__name__} {rng_key!r}"
        )
        raise TypeError(
            f"rng_key must be a JAX PRNG key, got {what}. Fix: rng_key=jax.random.PRNGKey(0) "
            f"or jax.random.key(0) (split one key per module: jax.random.split(key)), or leave "
            f"it out to draw the next key of pax.next_rng_key()."
        )
    return rng_key


def _is_key(value: object) -> bool:
    """A typed key (``jax.random.key``) or raw key data: uint32 with a last axis of 2 or 4."""
    dtype = getattr(value, "dtype", None)
    shape = getattr(value, "shape", None)
    if dtype is None or shape is None:
        return False
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return str(dtype) == "uint32" and len(shape) >= 1 and shape[-1] in (2, 4)
