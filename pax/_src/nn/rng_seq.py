"""`RngSeq`: a module holding an RNG key and handing out fresh keys (Pax v0.2's `RngSeq`)."""

from __future__ import annotations

from typing import Any, TypeVar

import jax

from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key

T = TypeVar("T")

# The return type of a Pax v0.2 loss function ``loss_fn(params, model, inputs)``:
# ``(loss, (aux, model))``, the form `pax.utils.build_update_fn` takes.
LossFnOutput = tuple[jax.Array, tuple[Any, T]]


class RngSeq(Module):
    """A sequence of RNG keys: each `next_rng_key` call returns new keys and advances the state.

    The key is the state ``rng_key``. In training mode each call splits it, returns the new
    subkeys and keeps the rest, so a model holding an `RngSeq` draws new keys on every step,
    also inside ``jax.jit`` when the updated model is returned (as for any pax state). In
    ``eval()`` mode the key does not advance: every call returns the same keys (as Pax v0.2's
    `RngSeq`), so evaluation is deterministic.

    Args:
      seed: an int seed, used when `rng_key` is None.
      rng_key: the initial key; default ``jax.random.PRNGKey(seed)`` with a seed, else
        `pax.next_rng_key()`.

    Raises:
      TypeError: for a seed that is not an int, or both a seed and a key.

    Example:
      >>> import jax, pax
      >>> seq = pax.utils.RngSeq(seed=0)
      >>> k1 = seq.next_rng_key()
      >>> k2, k3 = seq.next_rng_key(2)
      >>> bool((k1 != k2).any())
      True
      >>> step = jax.jit(lambda seq: (seq.next_rng_key(), seq))
      >>> key, seq = step(seq)  # the advanced state comes back
    """

    rng_key: jax.Array

    def __init__(self, seed: int | None = None, *, rng_key: jax.Array | None = None) -> None:
        super().__init__()
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
            self.rng_key = new_key
        return keys[0] if num_keys == 1 else keys

    def __call__(self, num_keys: int = 1) -> jax.Array | list[jax.Array]:
        """Same as `next_rng_key`.

        Example:
          >>> import pax
          >>> pax.utils.RngSeq(seed=0)().shape
          (2,)
        """
        return self.next_rng_key(num_keys)
