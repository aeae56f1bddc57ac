"""Batch normalization with moving statistics, numerically as Haiku's ``hk.BatchNorm``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from pax._src.nn import _validate as v
from pax._src.nn._lazy import ChannelLayer
from pax._src.nn.ema import EMA
from pax._src.nn.initializers import Initializer
from pax._src.nn.norm import _scale_offset, draws_random, output_dtype, statistics_dtype


class BatchNorm(ChannelLayer):
    """Batch normalization (Ioffe & Szegedy, 2015), numerically as Haiku's ``hk.BatchNorm``.

    In training mode (``module.training``, the default) the input is normalized with the
    statistics of the batch (all axes but the channel axis) and the moving averages
    ``mean_ema`` and ``var_ema`` (`pax.nn.EMA` submodules with zero debiasing, as Haiku's) are
    updated in place. In ``eval()`` mode the moving averages normalize and nothing changes.
    Before the first training step the moving mean is 0 and the moving variance 1.

    With `cross_replica_axis` the batch statistics are averaged over that named axis
    (``jax.pmap``/``shard_map``), so that data-parallel replicas normalize with the statistics
    of the global batch and keep identical moving averages.

    Args:
      in_dim: number of channels; None to take it from a first input (see
        `pax.Module.lazy_init`).
      create_scale: learn a per-channel scale (initialized to ones).
      create_offset: learn a per-channel offset (initialized to zeros).
      decay: decay of the moving averages, in ``[0, 1)`` (Haiku's ``decay_rate``).
      eps: added to the variance.
      scale_init: initializer of the scale.
      offset_init: initializer of the offset.
      data_format: ``"channels_last"`` (``N...C``, default) or ``"channels_first"`` (``NC...``).
      cross_replica_axis: name of a mapped axis to average the batch statistics over.
      cross_replica_axis_index_groups: optional replica groups for the averaging.
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.
      running_stats: hold PyTorch's plain ``running_mean`` / ``running_var`` states instead
        of the zero-debiased ``mean_ema`` / ``var_ema``: each training step does
        ``running = (1 - m) * running + m * batch`` with PyTorch's ``momentum m = 1 - decay``
        (``decay=0.9`` is PyTorch's default ``momentum=0.1``), the variance estimate being the
        unbiased batch variance, as ``torch.nn.BatchNorm2d``. Use it to load a PyTorch
        ``state_dict`` (``bn.running_mean`` / ``bn.running_var``).
      test_local_stats: the default of the call argument of the same name.

    Call arguments:
      x: the input.
      test_local_stats: in ``eval()`` mode, normalize with the batch statistics (as Haiku's
        ``is_training=False, test_local_stats=True``); the moving statistics stay unchanged.

    Raises:
      ValueError: for bad arguments at construction; at call for an input of the wrong rank or
        channel count.
      TypeError: if `running_stats` or `test_local_stats` is not a bool.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> bn = pax.nn.BatchNorm(3)
      >>> y = bn(jnp.arange(12.0).reshape(4, 3))  # training: batch statistics
      >>> [round(float(m), 3) for m in bn.moving_mean]
      [4.5, 5.5, 6.5]
      >>> bn = bn.eval()  # eval: moving averages, states unchanged
      >>> bn(jnp.ones((1, 3))).shape
      (1, 3)
      >>> torch_like = pax.nn.BatchNorm(3, running_stats=True)  # PyTorch's running statistics
      >>> _ = torch_like(jnp.arange(12.0).reshape(4, 3))
      >>> [round(float(m), 3) for m in torch_like.running_mean]  # 0.9 * 0 + 0.1 * mean
      [0.45, 0.55, 0.65]
    """

    scale: jax.Array | None
    offset: jax.Array | None
    mean_ema: EMA
    var_ema: EMA
    running_mean: jax.Array
    running_var: jax.Array
    running_stats: bool = False
    test_local_stats: bool = False
    _ranks: tuple[int, ...] | None = None

    in_features = v.RenamedAttribute("in_dim")
    decay_rate = v.RenamedAttribute("decay")

    _draws_random = draws_random

    @v.renamed_kwargs(in_features="in_dim", decay_rate="decay")
    def __init__(
        self,
        in_dim: int | None,
        create_scale: bool = True,
        create_offset: bool = True,
        decay: float = 0.9,
        eps: float = 1e-5,
        scale_init: Initializer | None = None,
        offset_init: Initializer | None = None,
        data_format: str = "channels_last",
        cross_replica_axis: str | Sequence[str] | None = None,
        cross_replica_axis_index_groups: Sequence[Sequence[int]] | None = None,
        *,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
        running_stats: bool = False,
        test_local_stats: bool = False,
    ) -> None:
        super().__init__(name=name)
        if isinstance(in_dim, (tuple, list)):  # Pax v0.2: BatchNorm(input_shape, ...)
            raise TypeError(
                f"{self._cls}: got the shape {tuple(in_dim)} where the channel count goes "
                f"(Pax v0.2's BatchNorm(input_shape, ...)). Fix: "
                f"pax.nn.{self._cls}({in_dim[-1] if in_dim else 'channels'}) for channels last."
            )
        running_stats = v.boolean(self._cls, "running_stats", running_stats)
        test_local_stats = v.boolean(self._cls, "test_local_stats", test_local_stats)
        if running_stats:  # only when set: the repr of the default layer stays as it was
            self.running_stats = True
        if test_local_stats:
            self.test_local_stats = True
        self.decay = v.rate_in_unit_interval(self._cls, "decay", decay)
        self.eps = v.positive_float(self._cls, "eps", eps, allow_zero=True)
        self.data_format = v.data_format(self._cls, data_format)
        if cross_replica_axis is None and cross_replica_axis_index_groups is not None:
            raise ValueError(
                f"{self._cls}: cross_replica_axis_index_groups needs a cross_replica_axis, e.g. "
                "cross_replica_axis='batch'."
            )
        if isinstance(cross_replica_axis, list):
            cross_replica_axis = tuple(cross_replica_axis)
        self.cross_replica_axis = cross_replica_axis
        self.cross_replica_axis_index_groups = (
            None
            if cross_replica_axis_index_groups is None
            else tuple(tuple(int(i) for i in g) for g in cross_replica_axis_index_groups)
        )
        options = {"create_scale": create_scale, "create_offset": create_offset}
        inits = {"scale_init": scale_init, "offset_init": offset_init}
        self._create_params(in_dim, rng_key, param_dtype, options=options, **inits)

    def _build(self, key: jax.Array, **init_args: Any) -> None:
        shape = (self.in_dim,)
        _scale_offset(self, key, shape, **init_args)
        if self.running_stats:
            self.register_state("running_mean", jnp.zeros(shape, jnp.float32))
            self.register_state("running_var", jnp.ones(shape, jnp.float32))
            return
        self.mean_ema = EMA(jnp.zeros(shape, jnp.float32), self.decay)
        self.var_ema = EMA(jnp.ones(shape, jnp.float32), self.decay)

    @property
    def moving_mean(self) -> jax.Array:
        """The moving average of the batch means, shape ``(in_dim,)``."""
        return self.running_mean if self.running_stats else self.mean_ema.average

    @property
    def moving_var(self) -> jax.Array:
        """The moving average of the batch variances, shape ``(in_dim,)``."""
        return self.running_var if self.running_stats else self.var_ema.average

    def _check_input(self, x: jax.Array) -> int:
        self._lazy_check(x)
        cls = type(self).__name__
        ranks = self._ranks
        if (ranks is None and x.ndim < 2) or (ranks is not None and x.ndim not in ranks):
            expected = "rank >= 2" if ranks is None else "rank " + " or ".join(map(str, ranks))
            raise ValueError(
                f"{cls}: expected an input of {expected} with {self.in_dim} channels "
                f"({'last' if self.channels_last else 'on axis 1'}), got shape {x.shape}."
            )
        channel_axis = x.ndim - 1 if self.channels_last else 1
        if x.shape[channel_axis] != self.in_dim:
            raise ValueError(
                f"{cls}: expected {self.in_dim} channels on axis {channel_axis}, got shape "
                f"{x.shape}."
            )
        return channel_axis

    def __call__(self, x: jax.Array, *, test_local_stats: bool | None = None) -> jax.Array:
        local = self.test_local_stats if test_local_stats is None else test_local_stats
        if not isinstance(local, bool):
            raise TypeError(
                f"{self._cls}: test_local_stats must be True or False, got {local!r}. Fix: "
                f"bn(x, test_local_stats=True)."
            )
        x = jnp.asarray(x)
        channel_axis = self._check_input(x)
        out_dtype = output_dtype(x, self.scale, self.offset)
        x = x.astype(statistics_dtype(x))  # statistics in float32 at least, whatever the input
        axes = tuple(i for i in range(x.ndim) if i != channel_axis)
        stat_shape = tuple(self.in_dim if i == channel_axis else 1 for i in range(x.ndim))
        if self.training or local:
            mean = jnp.mean(x, axes, keepdims=True)
            mean_of_squares = jnp.mean(jnp.square(x), axes, keepdims=True)
            if self.cross_replica_axis:
                index_groups = self.cross_replica_axis_index_groups
                groups = None if index_groups is None else [list(g) for g in index_groups]
                mean = jax.lax.pmean(mean, self.cross_replica_axis, axis_index_groups=groups)
                mean_of_squares = jax.lax.pmean(
                    mean_of_squares, self.cross_replica_axis, axis_index_groups=groups
                )
            var = mean_of_squares - jnp.square(mean)
            if self.training:
                self._update(mean.reshape(-1), var.reshape(-1), x.size // self.in_dim)
        else:
            mean = self.moving_mean.astype(x.dtype).reshape(stat_shape)
            var = self.moving_var.astype(x.dtype).reshape(stat_shape)
        scale = (
            jnp.ones((), x.dtype)
            if self.scale is None
            else self.scale.astype(x.dtype).reshape(stat_shape)
        )
        offset = (
            jnp.zeros((), x.dtype)
            if self.offset is None
            else self.offset.astype(x.dtype).reshape(stat_shape)
        )
        eps = jax.lax.convert_element_type(self.eps, var.dtype)
        inv = scale * jax.lax.rsqrt(var + eps)
        return ((x - mean) * inv + offset).astype(out_dtype)

    def _update(self, mean: jax.Array, var: jax.Array, n: int) -> None:
        """Updates the moving statistics with one batch's (`n` values per channel)."""
        if not self.running_stats:
            self.mean_ema(mean)
            self.var_ema(var)
            return
        if self.cross_replica_axis:
            groups = self.cross_replica_axis_index_groups
            groups_list = None if groups is None else [list(g) for g in groups]
            n = n * int(jax.lax.psum(1, self.cross_replica_axis, axis_index_groups=groups_list))
        unbiased = var * (n / max(n - 1, 1))
        m = 1.0 - self.decay
        self.running_mean = (1 - m) * self.running_mean + m * mean.astype(jnp.float32)
        self.running_var = (1 - m) * self.running_var + m * unbiased.astype(jnp.float32)


class BatchNorm1D(BatchNorm):
    """`BatchNorm` for inputs ``(N, C)`` or sequences ``(N, L, C)`` (``(N, C, L)`` channels first).

    Same arguments as `BatchNorm`; the input rank is checked.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.nn.BatchNorm1D(3)(jnp.ones((4, 10, 3))).shape
      (4, 10, 3)
    """

    _ranks = (2, 3)


class BatchNorm2D(BatchNorm):
    """`BatchNorm` for images ``(N, H, W, C)`` (``(N, C, H, W)`` channels first).

    Same arguments as `BatchNorm`; the input rank is checked.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.nn.BatchNorm2D(3)(jnp.ones((2, 4, 4, 3))).shape
      (2, 4, 4, 3)
    """

    _ranks = (4,)
