"""Initializers with the signature ``init(key, shape, dtype) -> array`` (as `jax.nn.initializers`).

Distributions match Haiku's initializers of the same name; from the same key they draw the same
values as Haiku's.

Eager initialization compiles each random draw for its shape, which costs far more than the
draw itself (about half a second for a truncated normal). Outside transformations the draws are
therefore taken for a flat size rounded up to a few buckets per power of two and cut to shape:
with JAX's (default) partitionable threefry keys the values are exactly those of a draw of the
requested shape, and a model with many layer sizes compiles a handful of draws only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.nn.initializer_forms import Initializer as Initializer
from pax._src.nn.initializer_forms import layer_init_args as layer_init_args
from pax._src.nn.initializer_forms import resolve as resolve

# std of a standard normal truncated to [-2, 2] (scipy.stats.truncnorm.std(-2, 2))
_TRUNCATED_STD = 0.87962566103423978
_MIN_BUCKET = 64


def _bucket(n: int) -> int:
    """`n` rounded up to a multiple of 2**e, with at most 8 multiples per octave."""
    if n <= _MIN_BUCKET:
        return _MIN_BUCKET
    step = 1 << max(0, (n - 1).bit_length() - 3)
    return -(-n // step) * step


def _prefix_stable(key: jax.Array) -> bool:
    """Whether a draw of shape (m,) starts with the draw of shape (n,), n <= m, for `key`."""
    partitionable = jax.config.jax_threefry_partitionable  # type: ignore[attr-defined]
    if isinstance(key, jax.core.Tracer) or not partitionable:
        return False
    try:
        return str(jax.random.key_impl(key)) == "threefry2x32"
    except (TypeError, ValueError):
        return False


def _sample(
    draw: Callable[[jax.Array, tuple[int, ...]], jax.Array], key: jax.Array, shape: Sequence[int]
) -> jax.Array:
    """``draw(key, shape)``, computed eagerly on a bucketed flat shape (same values)."""
    shape = tuple(int(d) for d in shape)
    n = int(np.prod(shape))
    if n < 2 or not _prefix_stable(key):
        return draw(key, shape)
    return draw(key, (_bucket(n),))[:n].reshape(shape)


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


def truncated_normal(
    stddev: float = 1.0, mean: float = 0.0, lower: float = -2.0, upper: float = 2.0
) -> Initializer:
    """A normal with std `stddev` truncated to ``[lower, upper]`` standard deviations.

    As Haiku's ``TruncatedNormal``, `stddev` is the std of the untruncated normal, so the samples
    have a slightly smaller std (about ``0.88 * stddev`` for the default bounds);
    `variance_scaling` corrects for this, this function does not.

    Example:
      >>> import jax, pax
      >>> w = pax.initializers.truncated_normal(0.1)(jax.random.PRNGKey(0), (3, 4))
      >>> w.shape, bool((abs(w) <= 0.2).all())
      ((3, 4), True)
    """
    if stddev < 0:
        raise ValueError(f"truncated_normal: stddev must be >= 0, got {stddev}.")
    if not lower < upper:
        raise ValueError(f"truncated_normal: needs lower < upper, got {lower} and {upper}.")

    def draw(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        real = jnp.finfo(dtype).dtype
        is_complex = jnp.issubdtype(dtype, jnp.complexfloating)
        draw_shape = (2, *shape) if is_complex else shape
        unscaled = jax.random.truncated_normal(key, lower, upper, draw_shape, real)
        if is_complex:
            unscaled = unscaled[0] + 1j * unscaled[1]
        s = jax.lax.convert_element_type(stddev, real)
        m = jax.lax.convert_element_type(mean, dtype)
        return (s * unscaled + m).astype(dtype)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        if jnp.issubdtype(dtype, jnp.complexfloating):
            return draw(key, tuple(shape), dtype)
        return _sample(lambda k, s: draw(k, s, dtype), key, shape)

    return init


def random_normal(stddev: float = 1.0, mean: float = 0.0) -> Initializer:
    """Normal with std `stddev` and mean `mean`.

    Example:
      >>> import jax, pax
      >>> pax.initializers.random_normal(0.1)(jax.random.PRNGKey(0), (3,)).shape
      (3,)
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        m = jax.lax.convert_element_type(mean, dtype)
        s = jax.lax.convert_element_type(stddev, dtype)
        return _sample(lambda k, sh: m + s * jax.random.normal(k, sh, dtype), key, shape)

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
        return _sample(lambda k, sh: jax.random.uniform(k, sh, dtype, minval, maxval), key, shape)

    return init


def _fans(shape: Sequence[int], fan_in_axes: Sequence[int] | None = None) -> tuple[float, float]:
    """Fan-in and fan-out as Haiku computes them (last axis is the output axis)."""
    if len(shape) < 1:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    if len(shape) == 2:
        return float(shape[0]), float(shape[1])
    if fan_in_axes is not None:
        axes = {a % len(shape) for a in fan_in_axes}
        fan_in = np.prod([shape[i] for i in axes])
        fan_out = np.prod([s for i, s in enumerate(shape) if i not in axes])
        return float(fan_in), float(fan_out)
    receptive = float(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def variance_scaling(
    scale: float = 1.0,
    mode: str = "fan_in",
    distribution: str = "truncated_normal",
    fan_in_axes: Sequence[int] | None = None,
) -> Initializer:
    """Haiku's `VarianceScaling`: std ``sqrt(scale / n)`` with n the fan in, out or their mean.

    For a shape of rank > 2 (a convolution kernel ``[*kernel, in, out]``) the fans include the
    receptive field, unless `fan_in_axes` names the fan-in axes.

    Args:
      scale: the variance multiplier.
      mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
      distribution: ``"truncated_normal"`` (std corrected for the truncation), ``"normal"`` or
        ``"uniform"`` (on ``[-sqrt(3 s), sqrt(3 s)]``).
      fan_in_axes: optional axes forming the fan-in.

    Raises:
      ValueError: for a negative scale or an unknown mode or distribution.

    Example:
      >>> import jax, pax
      >>> he = pax.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
      >>> he(jax.random.PRNGKey(0), (64, 32)).shape
      (64, 32)
    """
    if scale < 0:
        raise ValueError(f"variance_scaling: scale must be >= 0, got {scale}.")
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(
            f"variance_scaling: unknown mode {mode!r}; use 'fan_in', 'fan_out' or 'fan_avg'."
        )
    distribution = distribution.lower()
    if distribution not in ("truncated_normal", "normal", "uniform"):
        raise ValueError(
            f"variance_scaling: unknown distribution {distribution!r}; use "
            "'truncated_normal', 'normal' or 'uniform'."
        )

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        fan_in, fan_out = _fans(shape, fan_in_axes)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, n)
        if distribution == "truncated_normal":
            stddev = np.sqrt(variance) / np.asarray(_TRUNCATED_STD, dtype=dtype)
            return truncated_normal(stddev)(key, shape, dtype)
        if distribution == "normal":
            return random_normal(np.sqrt(variance))(key, shape, dtype)
        limit = np.sqrt(3.0 * variance)
        return random_uniform(-limit, limit)(key, shape, dtype)

    return init


def glorot_uniform() -> Initializer:
    """Glorot (Xavier) uniform: ``variance_scaling(1.0, "fan_avg", "uniform")``.

    Example:
      >>> import jax, pax
      >>> pax.initializers.glorot_uniform()(jax.random.PRNGKey(0), (4, 4)).shape
      (4, 4)
    """
    return variance_scaling(1.0, "fan_avg", "uniform")


def glorot_normal() -> Initializer:
    """Glorot (Xavier) normal: ``variance_scaling(1.0, "fan_avg", "truncated_normal")``.

    Example:
      >>> import jax, pax
      >>> pax.initializers.glorot_normal()(jax.random.PRNGKey(0), (4, 4)).shape
      (4, 4)
    """
    return variance_scaling(1.0, "fan_avg", "truncated_normal")


def lecun_normal() -> Initializer:
    """LeCun normal: ``variance_scaling(1.0, "fan_in", "truncated_normal")``.

    Example:
      >>> import jax, pax
      >>> pax.initializers.lecun_normal()(jax.random.PRNGKey(0), (4, 4)).shape
      (4, 4)
    """
    return variance_scaling(1.0, "fan_in", "truncated_normal")


def he_normal() -> Initializer:
    """He (Kaiming) normal: ``variance_scaling(2.0, "fan_in", "truncated_normal")``.

    Example:
      >>> import jax, pax
      >>> pax.initializers.he_normal()(jax.random.PRNGKey(0), (4, 4)).shape
      (4, 4)
    """
    return variance_scaling(2.0, "fan_in", "truncated_normal")


def he_uniform() -> Initializer:
    """He (Kaiming) uniform: ``variance_scaling(2.0, "fan_in", "uniform")``.

    Example:
      >>> import jax, pax
      >>> pax.initializers.he_uniform()(jax.random.PRNGKey(0), (4, 4)).shape
      (4, 4)
    """
    return variance_scaling(2.0, "fan_in", "uniform")


def uniform_scaling(scale: float = 1.0) -> Initializer:
    """Haiku's `UniformScaling`: uniform on ``+-scale * sqrt(3 / prod(shape[:-1]))``.

    Example:
      >>> import jax, pax
      >>> w = pax.initializers.uniform_scaling()(jax.random.PRNGKey(0), (3, 2))
      >>> bool((abs(w) <= 1.0).all())
      True
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        input_size = np.prod(shape[:-1])
        max_val = np.sqrt(3 / input_size) * scale
        return random_uniform(-max_val, max_val)(key, shape, dtype)

    return init


def identity(gain: float = 1.0) -> Initializer:
    """An identity matrix (or a batch of them) times `gain`, as Haiku's `Identity`.

    Example:
      >>> import jax, pax
      >>> pax.initializers.identity(2.0)(jax.random.PRNGKey(0), (2, 2)).tolist()
      [[2.0, 0.0], [0.0, 2.0]]
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del key
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"identity: needs a shape of rank >= 2, got {shape}.")
        eye = jnp.broadcast_to(jnp.eye(shape[-2], shape[-1], dtype=dtype), shape)
        return jax.lax.convert_element_type(gain, dtype) * eye

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
        shape = tuple(shape)
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
        return jax.lax.convert_element_type(scale, dtype) * q_mat

    return init
