"""Multi-head attention, numerically as Haiku's ``hk.MultiHeadAttention``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key
from pax._src.nn import _validate as v
from pax._src.nn import initializers
from pax._src.nn.dropout import Dropout
from pax._src.nn.initializers import Initializer
from pax._src.nn.kv_cache import INIT_FIX, KVCache, init_cache
from pax._src.nn.kv_cache import dtype_of as _dtype_of
from pax._src.nn.kv_cache import mask_for as _mask_for
from pax._src.nn.kv_cache import reference_attention as _reference_attention
from pax._src.nn.kv_cache import xla_attention as _xla_attention
from pax._src.nn.linear import Linear
from pax._src.nn.rotary import RotaryEmbedding

IMPLEMENTATIONS = ("reference", "xla")
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
      num_kv_heads: number of key/value heads, dividing `num_heads`: each is shared by
        ``num_heads // num_kv_heads`` query heads (grouped-query attention; 1 is multi-query
        attention). Default `num_heads`: standard attention.
      causal: query ``t`` attends only to keys ``s <= t`` (counted from the first query and
        key; in decode mode from the first cached position), as ``mask=jnp.tril(...)``.
      dropout_rate: dropout on the attention weights in training mode (the identity in
        ``eval()`` mode), drawn from the state key of a `pax.nn.Dropout` (``.dropout``).
      rope: rotary position embeddings on queries and keys: True for
        ``pax.nn.RotaryEmbedding(key_size)``, or a `pax.nn.RotaryEmbedding`.
      implementation: "reference" (the einsum path, Haiku's numbers) or "xla"
        (`jax.nn.dot_product_attention`: fused kernels where the platform has them, the same
        numbers up to rounding; needs ``value_size == key_size`` and no dropout in training).
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.
      w_init_scale: deprecated (Haiku's and Pax v0.2's spelling): use
        ``w_init=pax.initializers.variance_scaling(w_init_scale)``.

    Pax v0.2 and Haiku name the output size ``model_size``: it is accepted as a deprecated
    keyword for `out_dim`. Pax v0.2's keyword form ``MultiHeadAttention(num_heads=4,
    key_size=16, w_init_scale=0.5)`` has no input size: it means Pax v0.2's square layer,
    ``in_dim = num_heads * key_size``, as there (write ``MultiHeadAttention(64, 4)`` today).

    Call: ``mha(query, key=None, value=None, mask=None, *, decode=False)`` with ``query``
    ``(B, T, in_dim)``, ``key`` and ``value`` ``(B, S, ·)`` (default: self-attention, ``key =
    value = query``); ``B`` stands for any number of batch axes, none included. Returns
    ``(B, T, out_dim)``.

    Decoding: ``mha = mha.init_cache(batch_size, max_length)`` (or `pax.nn.init_cache` for a
    whole model) adds a `KVCache` (``mha.cache``, states); ``mha(x, decode=True)`` with ``x``
    ``(batch_size, T, in_dim)``, a prompt or one new token, appends its keys and values to the
    cache and attends to every cached position (causally if `causal`), with rotary positions
    offset by the cached length: the outputs equal those of the whole sequence at once. It
    works under ``jax.jit`` and `jax.lax.scan` (return the module), inside `pax.nn.Stack` and
    under a mixed-precision policy (the cache keeps its dtype). Without ``decode=True`` the
    cache is neither read nor written.

    The mask is **boolean, True where attention is allowed** (Haiku's convention). A float or
    int mask is refused: an additive mask (0 = keep, ``-1e9`` / ``-inf`` = drop, as in PyTorch
    and Hugging Face) would be read inverted; convert it with ``mask=additive_mask == 0``, a
    0/1 mask with ``mask.astype(bool)``. Its shape is one of, by rank:

    - ``(T, S)``: one mask shared by every example and head (e.g. a causal mask);
    - ``(B, T, S)``: one mask per example, shared by the heads (the heads axis is inserted,
      also when the batch size equals `num_heads`);
    - ``(B, num_heads, T, S)``: the logits' shape (Haiku's form);

    where any axis may be 1 to broadcast. A ``(B, S)`` key-padding mask is written
    ``mask[:, None, None, :]``.

    Raises:
      ValueError: for bad sizes at construction; at call for inputs of the wrong feature size,
        a mask whose shape is none of the forms above, ``decode=True`` without a cache or
        with a full one (under jit the error comes back as a runtime error naming it).
      TypeError: at call for a mask that is not boolean, or inputs that are not arrays.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> mha = pax.nn.MultiHeadAttention(16, num_heads=4)
      >>> x = jnp.ones((2, 5, 16))
      >>> causal = jnp.tril(jnp.ones((5, 5), bool))  # (T, S): every example and head
      >>> mha(x, mask=causal).shape
      (2, 5, 16)
      >>> padding = jnp.array([[True] * 5, [True] * 3 + [False] * 2])  # (B, S)
      >>> mha(x, mask=padding[:, None, None, :] & causal).shape  # (B, 1, T, S)
      (2, 5, 16)
      >>> gqa = pax.nn.MultiHeadAttention(16, 4, num_kv_heads=2, causal=True, rope=True)
      >>> full = gqa(x)
      >>> gqa = gqa.init_cache(batch_size=2, max_length=8)
      >>> first = gqa(x[:, :3], decode=True)  # the prompt
      >>> step = gqa(x[:, 3:4], decode=True)  # one token
      >>> bool(jnp.allclose(step, full[:, 3:4], atol=1e-5)), int(gqa.cache.index)
      (True, 4)
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
        num_kv_heads: int | None = None,
        causal: bool = False,
        dropout_rate: float = 0.0,
        rope: bool | RotaryEmbedding = False,
        implementation: str = "reference",
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
        # `is None`, not `or`: a 0 (or an array) must reach the check, not fall back silently
        value_size = self.key_size if value_size is None else value_size
        self.value_size = v.positive_int(cls, "value_size", value_size)
        out_dim = self.key_size * self.num_heads if out_dim is None else out_dim
        self.out_dim = v.positive_int(cls, "out_dim", out_dim)
        key_in_dim = _optional_size(cls, "key_in_dim", in_dim if key_in_dim is None else key_in_dim)
        value_in_dim = _optional_size(
            cls, "value_in_dim", key_in_dim if value_in_dim is None else value_in_dim
        )
        inits = initializers.layer_init_args(cls, param_dtype, w_init=w_init, b_init=b_init)
        w_init = inits["w_init"] or initializers.variance_scaling(1.0)
        b_init = inits["b_init"]
        self._set_options(num_kv_heads, causal, dropout_rate, rope, implementation)
        base_key = resolve_rng_key(rng_key)
        keys = jax.random.split(base_key, 4)
        h, kv = self.num_heads, self.num_kv_heads
        args = (with_bias, w_init, b_init)
        dt = {"param_dtype": inits["dtype"]}
        self.query_proj = Linear(in_dim, h * self.key_size, *args, rng_key=keys[0], **dt)
        self.key_proj = Linear(key_in_dim, kv * self.key_size, *args, rng_key=keys[1], **dt)
        self.value_proj = Linear(value_in_dim, kv * self.value_size, *args, rng_key=keys[2], **dt)
        self.out_proj = Linear(h * self.value_size, self.out_dim, *args, rng_key=keys[3], **dt)
        self.dropout = None
        if self.dropout_rate:  # a key of its own: the projections keep Haiku's keys
            self.dropout = Dropout(self.dropout_rate, rng_key=jax.random.fold_in(base_key, 4))
        self.register_module_subtree("cache", None)

    def _set_options(
        self, num_kv_heads: Any, causal: Any, dropout_rate: Any, rope: Any, implementation: Any
    ) -> None:
        cls, h = type(self).__name__, self.num_heads
        kv = h if num_kv_heads is None else v.positive_int(cls, "num_kv_heads", num_kv_heads)
        if h % kv:
            good = max(d for d in range(1, kv + 1) if h % d == 0)
            raise ValueError(
                f"{cls}: num_kv_heads={kv} does not divide num_heads={h}; each key/value head "
                f"serves num_heads // num_kv_heads query heads. Fix: num_kv_heads={good}."
            )
        self.num_kv_heads = kv
        self.causal = v.boolean(cls, "causal", causal)
        self.dropout_rate = v.rate_in_unit_interval(cls, "dropout_rate", dropout_rate)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"{cls}: implementation={implementation!r} is not one of {IMPLEMENTATIONS}. "
                f"Fix: implementation='xla' for jax.nn.dot_product_attention, or 'reference'."
            )
        if implementation == "xla" and self.value_size != self.key_size:
            raise ValueError(
                f"{cls}: implementation='xla' (jax.nn.dot_product_attention) needs value_size "
                f"== key_size, got {self.value_size} and {self.key_size}. Fix: "
                f"value_size={self.key_size}, or implementation='reference'."
            )
        self.implementation = implementation
        rotary: RotaryEmbedding | None = None
        if isinstance(rope, RotaryEmbedding):
            if rope.dim != self.key_size:
                raise ValueError(
                    f"{cls}: rope={rope!r} rotates {rope.dim} features but the heads have "
                    f"key_size={self.key_size}. Fix: rope=pax.nn.RotaryEmbedding({self.key_size})."
                )
            rotary = rope
        elif v.boolean(cls, "rope", rope):
            rotary = RotaryEmbedding(self.key_size, name="rope")
        self.rope = rotary

    def init_cache(self, batch_size: int, max_length: int, dtype: Any = None) -> Any:
        """A copy with an empty `KVCache` of `batch_size` sequences of up to `max_length`
        positions, for ``mha(x, decode=True)``; see `pax.nn.init_cache`."""
        return init_cache(self, batch_size, max_length, dtype)

    def _new_kv_cache(self, batch_size: int, max_length: int, dtype: Any) -> KVCache:
        dtype = self.key_proj.weight.dtype if dtype is None else dtype
        args = (self.num_kv_heads, self.key_size, self.value_size)
        return KVCache(batch_size, max_length, *args, dtype, owner=type(self).__name__)

    def _heads(self, proj: Linear, x: jax.Array, size: int, what: str, n: int) -> jax.Array:
        cls = type(self).__name__
        if x is None or isinstance(x, (str, bytes)) or _dtype_of(x) is None:
            raise TypeError(
                f"{cls}: {what} must be an array of shape (..., length, {proj.in_dim}), got "
                f"{type(x).__name__}. Fix: mha(query) for self-attention, or mha(query, key, "
                f"value) with arrays."
            )
        wrong_size = proj.in_dim is not None and jnp.shape(x)[-1:] != (proj.in_dim,)
        if jnp.ndim(x) < 2 or wrong_size:
            raise ValueError(
                f"{cls}: expected {what} of shape (..., length, {proj.in_dim}), got shape "
                f"{jnp.shape(x)}."
            )
        y = proj(x)
        return y.reshape((*x.shape[:-1], n, size))

    def __call__(
        self,
        query: jax.Array,
        key: jax.Array | None = None,
        value: jax.Array | None = None,
        mask: jax.Array | None = None,
        *,
        decode: bool = False,
    ) -> jax.Array:
        cls = type(self).__name__
        if decode is not False:
            self._check_decode(decode, key, value)
        key = query if key is None else key
        value = key if value is None else value
        q = self._heads(self.query_proj, query, self.key_size, "query", self.num_heads)
        k = self._heads(self.key_proj, key, self.key_size, "key", self.num_kv_heads)
        val = self._heads(self.value_proj, value, self.value_size, "value", self.num_kv_heads)
        offset: Any = 0
        if decode:
            offset = self.cache.index
        if self.rope is not None:
            q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if decode:
            k, val, _ = self.cache(k, val)
        *batch, t, h, _ = q.shape
        s = k.shape[-3]
        logits_shape = (*batch, h, t, s)
        allowed = None if mask is None else _mask_for(cls, mask, logits_shape)
        if self.causal or decode:
            q_pos = offset + jnp.arange(t)[:, None]
            k_pos = jnp.arange(s)[None, :]
            rule = k_pos <= q_pos if self.causal else k_pos < offset + t
            allowed = rule if allowed is None else allowed & rule
        dropout = self.dropout if self.training else None
        if self.implementation == "xla":
            if dropout is not None:
                raise ValueError(
                    f"{cls}: implementation='xla' (jax.nn.dot_product_attention) has no "
                    f"attention dropout, and this layer has dropout_rate={self.dropout_rate} in "
                    f"training mode. Fix: implementation='reference' for training with dropout "
                    f"(mha.implementation = 'xla' on the eval() copy), or dropout_rate=0.0."
                )
            attn = _xla_attention(q, k, val, allowed, self.causal and not decode and mask is None)
        else:
            attn = _reference_attention(q, k, val, allowed, dropout)
        attn = attn.reshape((*query.shape[:-1], -1))
        return self.out_proj(attn)

    def _check_decode(self, decode: Any, key: Any, value: Any) -> None:
        cls = type(self).__name__
        v.boolean(cls, "decode", decode)
        if key is not None or value is not None:
            raise ValueError(
                f"{cls}: decode=True caches self-attention keys and values, so it takes only the "
                f"query. Fix: mha(x, decode=True), or decode=False for cross-attention."
            )
        if self.cache is None:
            raise ValueError(
                f"{cls}: decode=True needs a KV cache, and this layer has none (it was never "
                f"initialized). Fix: {INIT_FIX} (or mha = mha.init_cache(batch_size, "
                f"max_length)) before decoding."
            )


def _optional_size(cls: str, name: str, value: int | None) -> int | None:
    return None if value is None else v.positive_int(cls, name, value)
