"""`pax.haiku.lstm` and `pax.haiku.gru`: Haiku recurrent cores, initialized from their sizes.

As in Pax v0.2 they take the hidden size first, ``lstm(hidden_dim)``; the input size is the
keyword ``in_dim`` and defaults to the hidden size (Pax v0.2's only choice).
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

from pax._src.arguments import positive_int
from pax._src.core.rng import resolve_rng_key
from pax._src.haiku.compat_args import hidden_dim_first
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


@hidden_dim_first("pax.haiku.lstm")
def lstm(
    hidden_dim: int,
    *,
    in_dim: int | None = None,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.LSTM(hidden_dim)`` for inputs of size `in_dim` (default `hidden_dim`), initialized.

    Call it as ``output, state = cell(x, state)`` with ``state = cell.initial_state(batch)``;
    unroll it over time with `pax.dynamic_unroll`.

    Args:
      hidden_dim: size of the hidden and cell states (Haiku's ``hidden_size``).
      in_dim: size of the input vectors; default `hidden_dim` (as Pax v0.2's ``lstm``).
      name: the Haiku module name.
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Raises:
      TypeError: for two positional sizes (``lstm(in_dim, hidden_dim)``, the form before Pax
        v0.2's was restored), naming the new spelling.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> cell = pax.haiku.lstm(8, in_dim=3)
      >>> out, state = cell(jnp.ones((2, 3)), cell.initial_state(2))
      >>> out.shape, state.cell.shape
      ((2, 8), (2, 8))
      >>> pax.haiku.lstm(8).params["lstm/linear"]["w"].shape  # input size 8
      (16, 32)
    """
    fn = "pax.haiku.lstm"
    hidden_dim = positive_int(fn, "hidden_dim", hidden_dim)
    kwargs = dict(hidden_size=hidden_dim, name=name)
    return _rnn(fn, hk.LSTM, hidden_dim if in_dim is None else in_dim, kwargs, rng_key)


@hidden_dim_first("pax.haiku.gru")
def gru(
    hidden_dim: int,
    *,
    in_dim: int | None = None,
    w_i_init: InitializerLike | None = None,
    w_h_init: InitializerLike | None = None,
    b_init: InitializerLike | None = None,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.GRU(hidden_dim)`` for inputs of size `in_dim` (default `hidden_dim`), initialized.

    Args:
      hidden_dim: size of the hidden state (Haiku's ``hidden_size``).
      in_dim: size of the input vectors; default `hidden_dim` (as Pax v0.2's ``gru``).
      w_i_init: initializer of the input weights; default as Haiku.
      w_h_init: initializer of the hidden weights; default as Haiku.
      b_init: bias initializer; default zeros.
      name: the Haiku module name.
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Raises:
      TypeError: for two positional sizes (``gru(in_dim, hidden_dim)``), naming the new
        spelling.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> cell = pax.haiku.gru(8, in_dim=3)
      >>> out, state = cell(jnp.ones((2, 3)), cell.initial_state(2))
      >>> out.shape
      (2, 8)
    """
    fn = "pax.haiku.gru"
    hidden_dim = positive_int(fn, "hidden_dim", hidden_dim)
    kwargs = dict(
        hidden_size=hidden_dim,
        w_i_init=as_haiku_initializer(fn, "w_i_init", w_i_init),
        w_h_init=as_haiku_initializer(fn, "w_h_init", w_h_init),
        b_init=as_haiku_initializer(fn, "b_init", b_init),
        name=name,
    )
    return _rnn(fn, hk.GRU, hidden_dim if in_dim is None else in_dim, kwargs, rng_key)
