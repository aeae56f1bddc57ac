"""`MultiHeadAttention`'s math (reference and XLA paths), mask rules and KV cache (decoding)."""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.core.module import Module
from pax._src.nn import _validate as v
from pax._src.nn.dropout import Dropout
from pax._src.nn.stack import Stack

T = TypeVar("T")

INIT_FIX = "model = pax.nn.init_cache(model, batch_size, max_length)"


class KVCache(Module):
    """The keys and values an attention layer has seen so far, as states.

    ``key`` ``(batch, max_length, num_kv_heads, key_size)`` and ``value`` ``(batch, max_length,
    num_kv_heads, value_size)`` hold the projected (and rotated) keys and values of positions
    ``0 .. index - 1``; ``index`` (an int32 state) is the number of positions written. Built by
    `init_cache`; a call ``cache(k, v)`` writes a chunk at ``index`` and returns the whole
    buffers (read as `k`'s dtype) and the old index. Positions at or after ``index`` hold zeros
    and must be masked by the caller.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> mha = pax.nn.MultiHeadAttention(8, 2, causal=True).init_cache(1, 16)
      >>> mha.cache.key.shape, int(mha.cache.index)
      ((1, 16, 2, 4), 0)
    """

    key: jax.Array
    value: jax.Array
    index: jax.Array

    def __init__(
        self, batch_size: int, max_length: int, num_kv_heads: int, key_size: int,
        value_size: int, dtype: Any = jnp.float32, *, owner: str = "MultiHeadAttention",
    ) -> None:  # fmt: skip
        super().__init__()
        self.batch_size = v.positive_int(owner, "batch_size", batch_size)
        self.max_length = v.positive_int(owner, "max_length", max_length)
        self.owner = owner
        shape = (self.batch_size, self.max_length, num_kv_heads)
        self.register_state("key", jnp.zeros((*shape, key_size), dtype))
        self.register_state("value", jnp.zeros((*shape, value_size), dtype))
        self.register_state("index", jnp.zeros((), jnp.int32))

    def __call__(self, k: jax.Array, val: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        owner = self.owner
        if k.shape[:1] != (self.batch_size,) or k.ndim != 4:
            raise ValueError(
                f"{owner}: decode=True with a cache of batch size {self.batch_size} got a query "
                f"of {k.shape[0] if k.ndim == 4 else 'another'} batch shape (keys of shape "
                f"{k.shape}). Fix: a query of shape ({self.batch_size}, T, in_dim), or "
                f"{INIT_FIX} with batch_size={k.shape[0] if k.ndim else 1}."
            )
        length = k.shape[1]
        index = self.index
        _check_room(owner, index, length, self.max_length)
        write = jax.lax.dynamic_update_slice_in_dim
        self.key = write(self.key, k.astype(self.key.dtype), index, axis=1)
        self.value = write(self.value, val.astype(self.value.dtype), index, axis=1)
        self.index = index + length
        return self.key.astype(k.dtype), self.value.astype(val.dtype), index


def _full_message(owner: str, index: Any, length: int, max_length: int) -> str:
    return (
        f"{owner}: the KV cache is full: it holds {index} of max_length={max_length} positions "
        f"and a chunk of {length} more does not fit. Fix: {INIT_FIX} with a larger "
        f"max_length (at least the prompt plus the tokens to generate), or start again with "
        f"a fresh cache (init_cache again)."
    )


def _raise_full(index: Any, length: int, max_length: int, owner: str) -> None:
    raise ValueError(_full_message(owner, int(index), length, max_length))


def _check_room(owner: str, index: jax.Array, length: int, max_length: int) -> None:
    """Raises when ``index + length > max_length``: at once when `index` is concrete, else from
    the compiled program (the error then reaches Python as a runtime error naming it)."""
    if length > max_length:
        raise ValueError(_full_message(owner, "some", length, max_length))
    if not isinstance(index, jax.core.Tracer):
        if int(index) + length > max_length:
            _raise_full(index, length, max_length, owner)
        return

    def report(i: jax.Array) -> None:
        jax.debug.callback(_raise_full, i, length, max_length, owner)

    jax.lax.cond(index + length > max_length, report, lambda i: None, index)


def init_cache(model: T, batch_size: int, max_length: int, dtype: Any = None) -> T:
    """A copy of `model` whose attention layers have an empty KV cache for decoding.

    Every `MultiHeadAttention` in `model` (inside `pax.nn.Stack` too: the caches are stacked
    with the layers) gets a cache of `batch_size` sequences of up to `max_length` positions;
    ``model(tokens, decode=True)`` (passing `decode` on to the layers) then appends the new
    positions to it and attends to everything cached. Calling it again starts over.

    Args:
      model: a pax module holding attention layers.
      batch_size: the number of sequences decoded together.
      max_length: the most positions (prompt and generated tokens) a cache holds.
      dtype: the cache's dtype; default the dtype of the layer's key projection weight.

    Raises:
      ValueError: if `model` holds no attention layer, or for a non-positive size.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> make = lambda key: pax.nn.MultiHeadAttention(8, 2, causal=True, rng_key=key)
      >>> stack = pax.nn.init_cache(pax.nn.Stack(make, 3), batch_size=2, max_length=10)
      >>> stack.stacked.cache.key.shape
      (3, 2, 10, 2, 4)
      >>> y = stack(jnp.ones((2, 4, 8)), decode=True)  # a prompt of 4 positions
      >>> stack.stacked.cache.index.tolist()
      [4, 4, 4]
    """
    found = False

    def is_target(x: Any) -> bool:
        return isinstance(x, Stack) or (
            isinstance(x, Module) and callable(getattr(type(x), "_new_kv_cache", None))
        )

    def visit(x: Any) -> Any:
        nonlocal found
        if isinstance(x, Stack):
            new = x.copy()
            new.stacked = jax.vmap(apply, axis_size=x.n)(x.stacked)
            return new
        if is_target(x):
            found = True
            new = x.copy()
            new.cache = x._new_kv_cache(batch_size, max_length, dtype)
            return new
        return x

    def walk(x: Any) -> Any:
        return jax.tree_util.tree_map(
            lambda m: visit(m) if is_target(m) else m, x, is_leaf=is_target
        )

    def apply(x: Any) -> Any:
        return visit(x) if is_target(x) else walk(x)

    result = apply(model)
    if not found:
        raise ValueError(
            f"init_cache: {type(model).__name__} holds no pax.nn.MultiHeadAttention, so there "
            f"is nothing to cache. Fix: call it on the model that holds the attention layers, "
            f"e.g. pax.nn.init_cache(gpt, batch_size, max_length)."
        )
    return result


def reference_attention(
    q: jax.Array, k: jax.Array, val: jax.Array, allowed: Any, dropout: Dropout | None
) -> jax.Array:
    """Attention by einsums: ``q`` ``(..., T, H, D)``, ``k``/``val`` ``(..., S, K, ·)``; the
    ``H // K`` query heads of a group share one key/value head (head ``h`` uses ``h // G``)."""
    *batch, t, h, d = q.shape
    kv = k.shape[-2]
    qg = q.reshape((*batch, t, kv, h // kv, d))
    logits = jnp.einsum("...tkgd,...skd->...kgts", qg, k)
    logits = logits.reshape((*batch, h, t, k.shape[-3]))
    logits = logits / np.sqrt(d).astype(k.dtype)
    if allowed is not None:
        logits = jnp.where(allowed, logits, -1e30)
    weights = jax.nn.softmax(logits)
    if dropout is not None:
        weights = dropout(weights)
    weights = weights.reshape((*batch, kv, h // kv, t, k.shape[-3]))
    attn = jnp.einsum("...kgts,...skd->...tkgd", weights, val)
    return attn.reshape((*batch, t, h, val.shape[-1]))


def xla_attention(
    q: jax.Array, k: jax.Array, val: jax.Array, allowed: Any, is_causal: bool
) -> jax.Array:
    """`jax.nn.dot_product_attention` on the batch axes flattened into one."""
    *batch, t, h, d = q.shape
    s, kv = k.shape[-3], k.shape[-2]
    q4, k4, v4 = q.reshape(-1, t, h, d), k.reshape(-1, s, kv, d), val.reshape(-1, s, kv, d)
    mask = None
    if allowed is not None and not is_causal:
        mask = jnp.broadcast_to(allowed, (*batch, h, t, s)).reshape((-1, h, t, s))
    dtype = jnp.result_type(q4, k4, v4)
    out = jax.nn.dot_product_attention(
        q4.astype(dtype), k4.astype(dtype), v4.astype(dtype), mask=mask, is_causal=is_causal
    )
    return out.reshape((*batch, t, h, d))


def dtype_of(value: Any) -> Any:
    """The dtype of an array-like, or None when it is not one (a string, None, an object)."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        return dtype
    try:
        dtype = np.asarray(value).dtype
    except Exception:  # an object numpy cannot read: reported as "not an array" by the caller
        return None
    return None if dtype.kind in "OSUV" else dtype  # strings and objects are not arrays


def mask_for(cls: str, mask: Any, logits_shape: tuple[int, ...]) -> jax.Array:
    """`mask` as a boolean array of the logits' rank ``(*batch, num_heads, T, S)``.

    Accepted forms (see the class docstring): ``(T, S)`` shared, ``(*batch, T, S)`` per
    example (a heads axis is inserted), ``(*batch, num_heads, T, S)`` full; every axis of size
    1 or the logits'. Anything else raises, naming the axes to add.
    """
    dtype = dtype_of(mask)
    if dtype is None or dtype != np.bool_:
        found = f"a {type(mask).__name__}, not an array"
        if dtype is not None:
            found = f"an array of dtype {np.dtype(dtype).name}"
        raise TypeError(
            f"{cls}: mask must be a boolean array, True where attention is allowed; got "
            f"{found}. A float or int mask is ambiguous: an additive "
            f"mask (0 = keep, -1e9 or -inf = drop, the PyTorch / Hugging Face habit) would be "
            f"read inverted. Fix: mask=additive_mask == 0 for an additive mask, "
            f"mask=mask.astype(bool) for a 0/1 mask (1 = keep)."
        )
    mask = jnp.asarray(mask)
    *batch, heads, t, s = logits_shape
    n = len(batch)
    b = ", ".join(f"B{i}" for i in range(n)) if n > 1 else "B"
    forms = f"(T, S) = {(t, s)} shared by every example and head"
    if n:
        forms += (
            f", ({b}, T, S) = {(*batch, t, s)} per example, or ({b}, num_heads, T, S) = "
            f"{(*batch, heads, t, s)} (axes of size 1 broadcast)"
        )
    else:
        forms += f", or (num_heads, T, S) = {(heads, t, s)} (axes of size 1 broadcast)"
    if mask.ndim == 2:  # (T, S): one mask for every example and head
        full = mask.reshape((1,) * (n + 1) + mask.shape)
    elif n and mask.ndim == n + 2:  # (*batch, T, S): per example, the same for every head
        full = mask[..., None, :, :]
    elif mask.ndim == n + 3:  # (*batch, num_heads, T, S)
        full = mask
    else:
        if mask.ndim < 2:
            fix = (
                "mask[None, :] for one (S,) key mask shared by every query, example and head"
                if mask.ndim == 1
                else "a (T, S) mask, e.g. jnp.ones((T, S), bool)"
            )
        elif mask.ndim > n + 3:
            fix = f"a mask of at most {n + 3} axes; drop the extra leading axes"
        else:  # several batch axes, some missing: per example or per head is ambiguous
            missing = ", ".join(["None"] * (n + 2 - mask.ndim))
            fix = (
                f"mask[{missing}] to share a (..., T, S) mask over the leading batch axes, "
                f"or give every batch axis"
            )
        raise ValueError(
            f"{cls}: mask of shape {mask.shape} does not fit the logits ({b + ', ' if n else ''}"
            f"num_heads, T, S) = {logits_shape}; accepted: {forms}. Fix: {fix}."
        )
    names = [f"batch axis {i}" for i in range(n)] if n > 1 else ["batch"] * n
    names += ["num_heads", "T (query length)", "S (key length)"]
    for axis, (got, want) in enumerate(zip(full.shape, logits_shape)):
        if got not in (1, want):
            hint = ""
            if mask.ndim == 2 and n == 1 and mask.shape[0] == batch[0]:
                hint = " For a (B, S) key-padding mask: mask[:, None, None, :]."
            read = f", read as {full.shape}," if full.shape != mask.shape else ""
            raise ValueError(
                f"{cls}: mask of shape {mask.shape}{read} has size {got} on "
                f"the {names[axis]} axis where the logits have {want}; accepted: {forms}.{hint} "
                f"Fix: a mask of size {want} or 1 on that axis."
            )
    return full
