"""Rotary position embeddings (Su et al., 2021, "RoFormer"), as in GPT-NeoX and LLaMA."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pax._src.core.module import Module
from pax._src.nn import _validate as v


class RotaryEmbedding(Module):
    """Rotates pairs of features by angles proportional to their position.

    For a head of size ``dim``, feature ``i < dim / 2`` and feature ``i + dim / 2`` form a pair
    (the "rotate half" layout of GPT-NeoX and LLaMA) that is rotated by the angle
    ``position * base ** (-2 i / dim)``. Queries and keys rotated this way give attention
    logits that depend only on the distance between positions. The layer has no parameters;
    the angles are computed in float32 and the result has the input's dtype.

    Args:
      dim: the size of the last axis (a head's size); must be even.
      base: the base of the wavelengths (10000 in the paper).
      name: a name shown by repr and summary.

    Call: ``rope(x, offset=0, positions=None)`` with ``x`` of shape ``(..., T, num_heads,
    dim)`` (the layout of `MultiHeadAttention`'s heads; write ``x[..., None, :]`` for a
    ``(..., T, dim)`` input). Position ``t`` of the sequence is ``offset + t``; `offset` may be
    a traced integer (the length already decoded, as a KV cache gives it). `positions`, of
    shape ``(T,)`` or ``(..., T)`` broadcasting with the batch axes, replaces them.

    Raises:
      ValueError: for an odd or non-positive `dim`, a non-positive `base`, or (at call) an
        input whose last axis is not `dim`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> rope = pax.nn.RotaryEmbedding(4)
      >>> x = jnp.ones((1, 3, 2, 4))  # (batch, T, heads, dim)
      >>> y = rope(x)
      >>> y.shape, bool(jnp.allclose(y[:, 0], x[:, 0]))  # position 0 is not rotated
      ((1, 3, 2, 4), True)
      >>> bool(jnp.allclose(rope(x[:, 2:], offset=2), y[:, 2:]))  # decoding from position 2
      True
    """

    def __init__(self, dim: int, base: float = 10000.0, *, name: str | None = None) -> None:
        super().__init__(name=name)
        cls = type(self).__name__
        self.dim = v.positive_int(cls, "dim", dim)
        if self.dim % 2:
            raise ValueError(
                f"{cls}: dim={dim} is odd; features are rotated in pairs. Fix: an even size, "
                f"e.g. {cls}({self.dim + 1}) (with MultiHeadAttention: an even key_size)."
            )
        self.base = v.positive_float(cls, "base", base)

    def __call__(self, x: jax.Array, offset: Any = 0, positions: Any = None) -> jax.Array:
        cls = type(self).__name__
        x = jnp.asarray(x)
        if x.ndim < 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{cls}: expected an input of shape (..., T, num_heads, {self.dim}), got "
                f"{x.shape}. Fix: x[..., None, :] for a (..., T, {self.dim}) input, or "
                f"{cls}({x.shape[-1] if x.ndim else 'dim'}) for another head size."
            )
        t = x.shape[-3]
        if positions is None:
            positions = jnp.asarray(offset, jnp.float32) + jnp.arange(t, dtype=jnp.float32)
        positions = jnp.asarray(positions, jnp.float32)
        half = self.dim // 2
        inv = self.base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / self.dim)
        angles = positions[..., :, None, None] * inv[None, None, :]  # (..., T, 1, half)
        cos, sin = jnp.cos(angles), jnp.sin(angles)
        x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
        extra = x1.ndim - cos.ndim  # leading batch axes the positions do not have
        if extra > 0:
            cos = cos.reshape((1,) * extra + cos.shape)
            sin = sin.reshape((1,) * extra + sin.shape)
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
        return out.astype(x.dtype)
