"""Embedding lookup table."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key
from pax._src.describe import describe
from pax._src.nn import _validate as v
from pax._src.nn import initializers
from pax._src.nn.initializers import Initializer


class Embed(Module):
    """A lookup table mapping integer ids to vectors, numerically as Haiku's ``hk.Embed``.

    Args:
      vocab_size: number of rows (ids ``0 .. vocab_size - 1``).
      embed_dim: size of each vector.
      w_init: initializer of the table; default (as Haiku) a normal truncated at 2 std with
        std parameter 1.
      rng_key: key for the initializer; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    The table is the parameter ``weight`` of shape ``(vocab_size, embed_dim)``. Like
    ``jnp.take``, out-of-range ids are clamped under ``jax.jit``; use `attend` to tie the table
    to an output layer.

    Raises:
      ValueError: for non-positive sizes, or (at call) non-integer ids.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> emb = pax.nn.Embed(10, 4)
      >>> emb(jnp.array([[1, 2, 3]])).shape
      (1, 3, 4)
    """

    weight: jax.Array

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        w_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        cls = type(self).__name__
        self.vocab_size = v.positive_int(cls, "vocab_size", vocab_size)
        self.embed_dim = v.positive_int(cls, "embed_dim", embed_dim)
        inits = initializers.layer_init_args(cls, param_dtype, w_init=w_init)
        w_init = inits["w_init"] or initializers.truncated_normal(stddev=1.0)
        shape = (self.vocab_size, self.embed_dim)
        self.register_parameter("weight", w_init(resolve_rng_key(rng_key), shape, inits["dtype"]))

    def __call__(self, ids: jax.Array) -> jax.Array:
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(
                f"{type(self).__name__}: ids must be integers, got {describe(ids)}. Fix: "
                f"ids.astype(jnp.int32)."
            )
        return jnp.asarray(self.weight)[ids,]

    def attend(self, x: jax.Array) -> jax.Array:
        """Returns ``x @ weight.T``: logits over the vocabulary (weight tying).

        Example:
          >>> import jax.numpy as jnp, pax
          >>> pax.nn.Embed(10, 4).attend(jnp.ones((2, 4))).shape
          (2, 10)
        """
        v.check_last_dim(type(self).__name__, x, self.embed_dim)
        return jnp.dot(x, self.weight.T)
