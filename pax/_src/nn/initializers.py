"""Initializers with the signature ``init(key, shape, dtype) -> array`` (as `jax.nn.initializers`).

Distributions match Haiku's initializers of the same name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[[jax.Array, Sequence[int], Any], jax.Array]

# std of a standard normal truncated to [-2, 2]
_TRUNCATED_STD = 0.87962566103423978


def zeros(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """All zeros (the key is ignored).

    Example:
      >>> import jax, pax
      >>> pax.initializers.zeros(jax.random.PRNGKey(0), (2,)).tolist()
      [0.0, 0.0]
    """
    del key
    return jnp.zeros(shape, dtype)


def ones(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    """All ones (the key is ignored).

    Example:
      >>> import jax, pax
      >>> pax.initializers.ones(jax.random.PRNGKey(0), (2,)).tolist()
      [1.0, 1.0]
    """
    del key
    return jnp.ones(shape, dtype)


def constant(value: float) -> Initializer:
    """An initializer filling with `value`.

    Example:
      >>> import jax, pax
      >>> pax.initializers.constant(3.0)(jax.random.PRNGKey(0), (2,)).tolist()
      [3.0, 3.0]
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del key
        return jnp.full(shape, value, dtype)

    return init


def truncated_normal(stddev: float = 1.0, mean: float = 0.0) -> Initializer:
    """Normal truncated to two standard deviations, rescaled to have std `stddev` (as Haiku).

    Example:
      >>> import jax, pax
      >>> pax.initializers.truncated_normal(0.1)(jax.random.PRNGKey(0), (3, 4)).shape
      (3, 4)
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        real = jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype
        unscaled = jax.random.truncated_normal(key, -2.0, 2.0, shape, real)
        return (unscaled * (stddev / _TRUNCATED_STD) + mean).astype(dtype)

    return init


def random_normal(stddev: float = 1.0, mean: float = 0.0) -> Initializer:
    """Normal with std `stddev` and mean `mean`.

    Example:
      >>> import jax, pax
      >>> pax.initializers.random_normal(0.1)(jax.random.PRNGKey(0), (3,)).shape
      (3,)
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return (jax.random.normal(key, shape, dtype) * stddev + mean).astype(dtype)

    return init


def random_uniform(minval: float = 0.0, maxval: float = 1.0) -> Initializer:
    """Uniform on ``[minval, maxval)``.

    Example:
      >>> import jax, pax
      >>> x = pax.initializers.random_uniform(-1, 1)(jax.random.PRNGKey(0), (100,))
      >>> bool((x >= -1).all() and (x < 1).all())
      True
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval, maxval)

    return init


def _fans(shape: Sequence[int]) -> tuple[float, float]:
    """Fan-in and fan-out as Haiku computes them (last axis is the output axis)."""
    if len(shape) < 1:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    if len(shape) == 2:
        return float(shape[0]), float(shape[1])
    receptive = float(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def variance_scaling(
    scale: float = 1.0, mode: str = "fan_in", distribution: str = "truncated_normal"
) -> Initializer:
    """Haiku's `VarianceScaling`: std ``sqrt(scale / n)`` with n the fan in, out or their mean.

    Args:
      scale: the variance multiplier.
      mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
      distribution: ``"truncated_normal"``, ``"normal"`` or ``"uniform"``.

    Example:
      >>> import jax, pax
      >>> he = pax.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
      >>> he(jax.random.PRNGKey(0), (64, 32)).shape
      (64, 32)
    """
    if scale <= 0:
        raise ValueError(f"variance_scaling: scale must be positive, got {scale}.")
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"variance_scaling: unknown mode {mode!r}; use fan_in, fan_out, fan_avg.")
    if distribution not in ("truncated_normal", "normal", "uniform"):
        raise ValueError(
            f"variance_scaling: unknown distribution {distribution!r}; use truncated_normal, "
            "normal or uniform."
        )

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, n)
        if distribution == "truncated_normal":
            return truncated_normal(float(np.sqrt(variance)))(key, shape, dtype)
        if distribution == "normal":
            return random_normal(float(np.sqrt(variance)))(key, shape, dtype)
        limit = float(np.sqrt(3.0 * variance))
        return random_uniform(-limit, limit)(key, shape, dtype)

    return init


def orthogonal(scale: float = 1.0, axis: int = -1) -> Initializer:
    """A (scaled) orthogonal matrix along `axis`, as Haiku's `Orthogonal`.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> w = pax.initializers.orthogonal()(jax.random.PRNGKey(0), (4, 4))
      >>> bool(jnp.allclose(w @ w.T, jnp.eye(4), atol=1e-5))
      True
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        if len(shape) < 2:
            raise ValueError(f"orthogonal: needs a shape of rank >= 2, got {tuple(shape)}.")
        n_rows = shape[axis]
        n_cols = int(np.prod(shape)) // n_rows
        matrix_shape = (n_rows, n_cols) if n_rows > n_cols else (n_cols, n_rows)
        norm_dst = jax.random.normal(key, matrix_shape, dtype)
        q_mat, r_mat = jnp.linalg.qr(norm_dst)
        q_mat = q_mat * jnp.sign(jnp.diag(r_mat))
        if n_rows < n_cols:
            q_mat = q_mat.T
        q_mat = jnp.reshape(q_mat, (n_rows,) + tuple(np.delete(shape, axis)))
        q_mat = jnp.moveaxis(q_mat, 0, axis)
        return jnp.asarray(scale, dtype) * q_mat

    return init
