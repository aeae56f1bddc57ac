"""Multi-head attention, numerically as Haiku's ``hk.MultiHeadAttention``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key
from pax._src.nn import _validate as v
from pax._src.nn import initializers
from pax._src.nn.initializers import Initializer
from pax._src.nn.linear import Linear

_V02_SQUARE: Any = object()  # in_dim not given: Pax v0.2's form (see the class docstring)


def _in_dim(cls: str, in_dim: Any, num_heads: Any, key_size: Any) -> Any:
    """`in_dim`, or in Pax v0.2's keyword form (no input size) ``num_heads * key_size``."""
    if num_heads is None:
        raise TypeError(
            f"{cls}: num_heads is required. Fix: {cls}(in_dim, num_heads), e.g. {cls}(64, 4)."
        )
    if in_dim is not _V02_SQUARE:
        return in_dim
    if key_size is None:
        raise TypeError(
            f"{cls}: give the input size: {cls}(in_dim, num_heads), or None to take it from a "
            f"first input with an explicit key_size (Pax v0.2's {cls}(num_heads=..., "
            f"key_size=...) form means in_dim = num_heads * key_size)."
        )
    return num_heads * key_size


class MultiHeadAttention(Module):
    """Multi-head scaled dot-product attention (Vaswani et al., 2017).

    Numerically Haiku's ``hk.MultiHeadAttention``: queries, keys and values are projected to
    `num_heads` heads (``query_proj``, ``key_proj``, ``value_proj``), the logits
    ``q . k / sqrt(key_size)`` are masked with ``-1e30`` where `mask` is False, and the
    softmax-weighted values of all heads are concatenated and projected by ``out_proj``.

    Args:
      in_dim: feature size of the queries (and of keys and values unless given); None to take
        it (and `key_in_dim`, `value_in_dim` unless given) from a first input: then `key_size`
        is required and ``model = model.lazy_init(example_query)`` initializes the layer.
      num_heads: number of heads.
      key_size: size of each query/key head; default ``in_dim // num_heads``.
      value_size: size of each value head; default `key_size`.
      out_dim: output size; default ``num_heads * key_size`` (as Haiku's ``model_size``).
      with_bias: projections with biases.
      w_init: weight initializer of the four projections; default
        ``variance_scaling(1.0)`` (Haiku makes you choose one).
      b_init: bias initializer; default zeros.
      key_in_dim: feature size of the keys; default `in_dim`.
      value_in_dim: feature size of the values; default `key_in_dim`.
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.
      w_init_scale: deprecated (Haiku's and Pax v0.2's spelling): use
        ``w_init=pax.initializers.variance_scaling(w_init_scale)``.

    Pax v0.2 and Haiku name the output size ``model_size``: it is accepted as a deprecated
    keyword for `out_dim`. Pax v0.2's keyword form ``MultiHeadAttention(num_heads=4,
    key_size=16, w_init_scale=0.5)`` has no input size: it means Pax v0.2's square layer,
    ``in_dim = num_heads * key_size``, as there (write ``MultiHeadAttention(64, 4)`` today).
    A mask of rank 2, ``(T, S)``, is shared by every example and head; any other rank must be
    the logits'.

    Call: ``mha(query, key=None, value=None, mask=None)`` with ``query`` ``(..., T, in_dim)``,
    ``key`` and ``value`` ``(..., S, ·)`` (default: self-attention, ``key = value = query``)
    and ``mask`` broadcastable to ``(..., num_heads, T, S)`` with the same rank (or a ``(T, S)``
    mask for all), True where attention is allowed. Returns ``(..., T, out_dim)``.

    Raises:
      ValueError: for bad sizes at construction; at call for inputs of the wrong feature size
        or a mask of the wrong rank.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> mha = pax.nn.MultiHeadAttention(16, num_heads=4)
      >>> x = jnp.ones((2, 5, 16))
      >>> causal = jnp.tril(jnp.ones((5, 5), bool))[None, None]
      >>> mha(x, mask=causal).shape
      (2, 5, 16)
    """

    query_proj: Linear
    key_proj: Linear
    value_proj: Linear
    out_proj: Linear

    @v.renamed_kwargs(model_size="out_dim")
    def __init__(
        self,
        in_dim: Any = _V02_SQUARE,
        num_heads: Any = None,
        key_size: int | None = None,
        value_size: int | None = None,
        out_dim: int | None = None,
        with_bias: bool = True,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        *,
        key_in_dim: int | None = None,
        value_in_dim: int | None = None,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
        w_init_scale: float | None = None,
    ) -> None:
        super().__init__(name=name)
        cls = type(self).__name__
        if w_init_scale is not None:
            if w_init is not None:
                raise TypeError(
                    f"{cls}: give w_init or the deprecated w_init_scale, not both. Fix: "
                    f"w_init=pax.initializers.variance_scaling({w_init_scale!r})."
                )
            v.warn_deprecated(
                cls, "w_init_scale", f"w_init=pax.initializers.variance_scaling({w_init_scale!r})"
            )
            w_init = initializers.variance_scaling(
                v.positive_float(cls, "w_init_scale", w_init_scale)
            )
        in_dim = _in_dim(cls, in_dim, num_heads, key_size)
        in_dim = None if in_dim is None else v.positive_int(cls, "in_dim", in_dim)
        with_bias = v.boolean(cls, "with_bias", with_bias)
        self.num_heads = v.positive_int(cls, "num_heads", num_heads)
        if key_size is None:
            if in_dim is None:
                raise ValueError(
                    f"{cls}: in_dim=None (taken from a first input) needs an explicit key_size, "
                    f"since the head size is fixed at construction; pass e.g. key_size=64."
                )
            if in_dim % num_heads:
                raise ValueError(
                    f"{cls}: in_dim={in_dim} is not divisible by num_heads={num_heads}; pass "
                    f"key_size explicitly, e.g. key_size={max(1, in_dim // num_heads)}."
                )
            key_size = in_dim // num_heads
        self.key_size = v.positive_int(cls, "key_size", key_size)
        self.value_size = v.positive_int(cls, "value_size", value_size or self.key_size)
        self.out_dim = v.positive_int(cls, "out_dim", out_dim or self.key_size * self.num_heads)
        key_in_dim = _optional_size(cls, "key_in_dim", key_in_dim or in_dim)
        value_in_dim = _optional_size(cls, "value_in_dim", value_in_dim or key_in_dim)
        inits = initializers.layer_init_args(cls, param_dtype, w_init=w_init, b_init=b_init)
        w_init = inits["w_init"] or initializers.variance_scaling(1.0)
        b_init = inits["b_init"]
        keys = jax.random.split(resolve_rng_key(rng_key), 4)
        h = self.num_heads
        args = (with_bias, w_init, b_init)
        dt = {"param_dtype": inits["dtype"]}
        self.query_proj = Linear(in_dim, h * self.key_size, *args, rng_key=keys[0], **dt)
        self.key_proj = Linear(key_in_dim, h * self.key_size, *args, rng_key=keys[1], **dt)
        self.value_proj = Linear(value_in_dim, h * self.value_size, *args, rng_key=keys[2], **dt)
        self.out_proj = Linear(h * self.value_size, self.out_dim, *args, rng_key=keys[3], **dt)

    def _heads(self, proj: Linear, x: jax.Array, size: int, what: str) -> jax.Array:
        cls = type(self).__name__
        wrong_size = proj.in_dim is not None and jnp.shape(x)[-1:] != (proj.in_dim,)
        if jnp.ndim(x) < 2 or wrong_size:
            raise ValueError(
                f"{cls}: expected {what} of shape (..., length, {proj.in_dim}), got shape "
                f"{jnp.shape(x)}."
            )
        y = proj(x)
        return y.reshape((*x.shape[:-1], self.num_heads, size))

    def __call__(
        self,
        query: jax.Array,
        key: jax.Array | None = None,
        value: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        key = query if key is None else key
        value = key if value is None else value
        q = self._heads(self.query_proj, query, self.key_size, "query")
        k = self._heads(self.key_proj, key, self.key_size, "key")
        val = self._heads(self.value_proj, value, self.value_size, "value")
        logits = jnp.einsum("...thd,...Thd->...htT", q, k)
        logits = logits / np.sqrt(self.key_size).astype(k.dtype)
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.ndim == 2 < logits.ndim:  # one (T, S) mask for every example and head
                mask = mask.reshape((1,) * (logits.ndim - 2) + mask.shape)
            if mask.ndim != logits.ndim:
                missing = logits.ndim - mask.ndim
                fix = (
                    f"add the missing leading axes: mask[{', '.join(['None'] * missing)}] "
                    f"(one mask shared by the heads and the batch)"
                    if missing > 0
                    else f"a mask of rank {logits.ndim}"
                )
                raise ValueError(
                    f"{type(self).__name__}: the mask must have the rank of the logits "
                    f"(..., num_heads, T, S) = {logits.shape}, got shape {mask.shape}. Fix: "
                    f"{fix}."
                )
            logits = jnp.where(mask, logits, -1e30)
        weights = jax.nn.softmax(logits)
        attn = jnp.einsum("...htT,...Thd->...thd", weights, val)
        attn = attn.reshape((*query.shape[:-1], -1))
        return self.out_proj(attn)


def _optional_size(cls: str, name: str, value: int | None) -> int | None:
    return None if value is None else v.positive_int(cls, name, value)
