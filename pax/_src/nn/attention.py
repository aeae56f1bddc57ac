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

    Call: ``mha(query, key=None, value=None, mask=None)`` with ``query`` ``(B, T, in_dim)``,
    ``key`` and ``value`` ``(B, S, ·)`` (default: self-attention, ``key = value = query``);
    ``B`` stands for any number of batch axes, none included. Returns ``(B, T, out_dim)``.

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
        or a mask whose shape is none of the forms above.
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
            logits = jnp.where(_mask_for(type(self).__name__, mask, logits.shape), logits, -1e30)
        weights = jax.nn.softmax(logits)
        attn = jnp.einsum("...htT,...Thd->...thd", weights, val)
        attn = attn.reshape((*query.shape[:-1], -1))
        return self.out_proj(attn)


def _optional_size(cls: str, name: str, value: int | None) -> int | None:
    return None if value is None else v.positive_int(cls, name, value)


def _dtype_of(value: Any) -> Any:
    """The dtype of an array-like, or None when it is not one (a string, None, an object)."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        return dtype
    try:
        dtype = np.asarray(value).dtype
    except Exception:  # an object numpy cannot read: reported as "not an array" by the caller
        return None
    return None if dtype.kind in "OSUV" else dtype  # strings and objects are not arrays


def _mask_for(cls: str, mask: Any, logits_shape: tuple[int, ...]) -> jax.Array:
    """`mask` as a boolean array of the logits' rank ``(*batch, num_heads, T, S)``.

    Accepted forms (see the class docstring): ``(T, S)`` shared, ``(*batch, T, S)`` per
    example (a heads axis is inserted), ``(*batch, num_heads, T, S)`` full; every axis of size
    1 or the logits'. Anything else raises, naming the axes to add.
    """
    dtype = _dtype_of(mask)
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
