"""`pax.haiku.lstm` and `pax.haiku.gru`: Haiku recurrent cores, initialized from their sizes."""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

from pax._src.arguments import positive_int
from pax._src.core.rng import resolve_rng_key
from pax._src.haiku.layers import InitializerLike, as_haiku_initializer
from pax._src.haiku.module import HaikuModule


def _rnn(
    fn: str, hk_cls: type, in_dim: int, kwargs: dict, rng_key: jax.Array | None
) -> HaikuModule:
    in_dim = positive_int(fn, "in_dim", in_dim)
    module = HaikuModule(hk_cls, (), kwargs)
    x = jnp.zeros((1, in_dim), jnp.float32)
    module._hk_initialize(resolve_rng_key(rng_key), (x, module.initial_state(1)), {})
    return module


def lstm(
    in_dim: int, hidden_dim: int, *, name: str | None = None, rng_key: jax.Array | None = None
) -> HaikuModule:
    """``hk.LSTM(hidden_dim)`` for inputs of size `in_dim`, initialized.

    Call it as ``output, state = cell(x, state)`` with ``state = cell.initial_state(batch)``;
    unroll it over time with `pax.dynamic_unroll`.

    Args:
      in_dim: size of the input vectors.
      hidden_dim: size of the hidden and cell states (Haiku's ``hidden_size``).
      name: the Haiku module name.
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> cell = pax.haiku.lstm(3, 8)
      >>> out, state = cell(jnp.ones((2, 3)), cell.initial_state(2))
      >>> out.shape, state.cell.shape
      ((2, 8), (2, 8))
    """
    kwargs = dict(hidden_size=positive_int("pax.haiku.lstm", "hidden_dim", hidden_dim), name=name)
    return _rnn("pax.haiku.lstm", hk.LSTM, in_dim, kwargs, rng_key)


def gru(
    in_dim: int,
    hidden_dim: int,
    w_i_init: InitializerLike | None = None,
    w_h_init: InitializerLike | None = None,
    b_init: InitializerLike | None = None,
    *,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.GRU(hidden_dim)`` for inputs of size `in_dim`, initialized.

    Args:
      in_dim: size of the input vectors.
      hidden_dim: size of the hidden state (Haiku's ``hidden_size``).
      w_i_init: initializer of the input weights; default as Haiku.
      w_h_init: initializer of the hidden weights; default as Haiku.
      b_init: bias initializer; default zeros.
      name: the Haiku module name.
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> cell = pax.haiku.gru(3, 8)
      >>> out, state = cell(jnp.ones((2, 3)), cell.initial_state(2))
      >>> out.shape
      (2, 8)
    """
    kwargs = dict(
        hidden_size=positive_int("pax.haiku.gru", "hidden_dim", hidden_dim),
        w_i_init=as_haiku_initializer("pax.haiku.gru", "w_i_init", w_i_init),
        w_h_init=as_haiku_initializer("pax.haiku.gru", "w_h_init", w_h_init),
        b_init=as_haiku_initializer("pax.haiku.gru", "b_init", b_init),
        name=name,
    )
    return _rnn("pax.haiku.gru", hk.GRU, in_dim, kwargs, rng_key)
