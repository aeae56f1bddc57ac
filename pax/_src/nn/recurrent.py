"""Recurrent cells (LSTM, GRU, VanillaRNN, DeepRNN), numerically as Haiku's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.core.module import Module
from pax._src.nn import _validate as v
from pax._src.nn import initializers
from pax._src.nn._lazy import Init, LazyLayer
from pax._src.nn.initializers import Initializer
from pax._src.nn.linear import Lambda, pickle_functions, unpickle_functions

State = TypeVar("State")


class LSTMState(NamedTuple):
    """The state of an `LSTM`: ``(hidden, cell)``, the order of ``hk.LSTMState``.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.nn.LSTMState(jnp.zeros(2), jnp.ones(2)).cell.tolist()
      [1.0, 1.0]
    """

    hidden: jax.Array
    cell: jax.Array


def _zeros(hidden_dim: int, batch_size: int | None) -> jax.Array:
    if batch_size is None:
        return jnp.zeros((hidden_dim,))
    return jnp.zeros((v.positive_int("initial_state", "batch_size", batch_size), hidden_dim))


def _check(cls: str, x: jax.Array, in_dim: int, state: jax.Array, hidden_dim: int) -> None:
    v.check_last_dim(cls, x, in_dim, what="input features")
    if jnp.shape(state)[-1:] != (hidden_dim,) or jnp.ndim(state) != jnp.ndim(x):
        raise ValueError(
            f"{cls}: expected a state of shape {(*jnp.shape(x)[:-1], hidden_dim)} for an input "
            f"of shape {jnp.shape(x)}, got {jnp.shape(state)}. Fix: start from "
            f"cell.initial_state(batch_size)."
        )


class LSTM(LazyLayer):
    """A long short-term memory cell, numerically as Haiku's ``hk.LSTM``.

    ``gates = x @ weight_ih + h @ weight_hh + bias`` is split into the input, candidate,
    forget and output gates (in that order, the forget gate gets ``+1``), and
    ``c' = sigmoid(f + 1) * c + sigmoid(i) * tanh(g)``, ``h' = sigmoid(o) * tanh(c')``.
    Haiku's single weight over ``concat([x, h])`` is ``concat([weight_ih, weight_hh])``.

    Args:
      in_dim: size of the input vectors; None to take it from a first input (see
        `pax.Module.lazy_init`).
      hidden_dim: size of the hidden and cell states.
      w_init: initializer of both weights; default (as Haiku) a normal truncated at 2 std
        with std parameter ``1 / sqrt(in_dim + hidden_dim)``.
      b_init: bias initializer; default zeros.
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Call: ``cell(x, state) -> (h', LSTMState(h', c'))`` for ``x`` of shape ``(..., in_dim)``;
    a state given as a plain tuple or another named tuple (``hk.LSTMState``) keeps its type.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> lstm = pax.nn.LSTM(3, 8)
      >>> out, state = lstm(jnp.ones((2, 3)), lstm.initial_state(2))
      >>> out.shape, state.cell.shape
      ((2, 8), (2, 8))
    """

    weight_ih: jax.Array
    weight_hh: jax.Array
    bias: jax.Array

    def __init__(
        self,
        in_dim: int | None,
        hidden_dim: int,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.hidden_dim = v.positive_int(self._cls, "hidden_dim", hidden_dim)
        self._create_params(in_dim, rng_key, param_dtype, w_init=w_init, b_init=b_init)

    def _build(self, key: jax.Array, w_init: Init, b_init: Init, dtype: Any) -> None:
        in_dim, hidden_dim = self.in_dim, self.hidden_dim
        w_init = w_init or initializers.truncated_normal(1.0 / np.sqrt(in_dim + hidden_dim))
        b_init = b_init or initializers.zeros
        k1, k2, k3 = jax.random.split(key, 3)
        self.register_parameter("weight_ih", w_init(k1, (in_dim, 4 * hidden_dim), dtype))
        self.register_parameter("weight_hh", w_init(k2, (hidden_dim, 4 * hidden_dim), dtype))
        self.register_parameter("bias", b_init(k3, (4 * hidden_dim,), dtype))

    def __call__(
        self, x: jax.Array, state: LSTMState | tuple[jax.Array, jax.Array]
    ) -> tuple[jax.Array, LSTMState | tuple[jax.Array, jax.Array]]:
        self._lazy_check(x, state)
        h, c = state
        _check(type(self).__name__, x, self.in_dim, h, self.hidden_dim)
        gates = jnp.dot(x, self.weight_ih) + jnp.dot(h, self.weight_hh)
        gates = gates + jnp.broadcast_to(self.bias, gates.shape)
        i, g, f, o = jnp.split(gates, 4, axis=-1)
        f = jax.nn.sigmoid(f + 1)
        c = f * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        if type(state) is tuple:
            return h, (h, c)
        if hasattr(state, "_fields"):  # e.g. hk.LSTMState: keep the type (scan carries it)
            state_type: Any = type(state)
            return h, state_type(h, c)
        return h, LSTMState(h, c)

    def initial_state(self, batch_size: int | None) -> LSTMState:
        """Zeros of shape ``(batch_size, hidden_dim)``, or ``(hidden_dim,)`` for None."""
        zeros = _zeros(self.hidden_dim, batch_size)
        return LSTMState(zeros, zeros)


class GRU(LazyLayer):
    """A gated recurrent unit (Cho et al., 2014), numerically as Haiku's ``hk.GRU``.

    The weights are ``weight_ih`` ``(in_dim, 3 * hidden_dim)``, ``weight_hh``
    ``(hidden_dim, 3 * hidden_dim)`` and ``bias`` ``(3 * hidden_dim,)`` (Haiku's ``w_i``,
    ``w_h``, ``b``), the columns ordered update, reset, candidate.

    Args:
      in_dim: size of the input vectors; None to take it from a first input (see
        `pax.Module.lazy_init`).
      hidden_dim: size of the state.
      w_i_init: initializer of ``weight_ih``; default ``variance_scaling()`` (as Haiku).
      w_h_init: initializer of ``weight_hh``; default ``variance_scaling()``.
      b_init: bias initializer; default zeros.
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Call: ``cell(x, state) -> (h', h')``.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> gru = pax.nn.GRU(3, 8)
      >>> out, state = gru(jnp.ones((2, 3)), gru.initial_state(2))
      >>> out.shape
      (2, 8)
    """

    weight_ih: jax.Array
    weight_hh: jax.Array
    bias: jax.Array

    def __init__(
        self,
        in_dim: int | None,
        hidden_dim: int,
        w_i_init: Initializer | None = None,
        w_h_init: Initializer | None = None,
        b_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.hidden_dim = v.positive_int(self._cls, "hidden_dim", hidden_dim)
        inits: dict[str, Any] = {"w_i_init": w_i_init, "w_h_init": w_h_init, "b_init": b_init}
        self._create_params(in_dim, rng_key, param_dtype, **inits)

    def _build(self, key: jax.Array, dtype: Any, **inits: Init) -> None:
        in_dim, hidden_dim = self.in_dim, self.hidden_dim
        w_i_init = inits["w_i_init"] or initializers.variance_scaling()
        w_h_init = inits["w_h_init"] or initializers.variance_scaling()
        b_init = inits["b_init"] or initializers.zeros
        k1, k2, k3 = jax.random.split(key, 3)
        self.register_parameter("weight_ih", w_i_init(k1, (in_dim, 3 * hidden_dim), dtype))
        self.register_parameter("weight_hh", w_h_init(k2, (hidden_dim, 3 * hidden_dim), dtype))
        self.register_parameter("bias", b_init(k3, (3 * hidden_dim,), dtype))

    def __call__(self, x: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._lazy_check(x, state)
        _check(type(self).__name__, x, self.in_dim, state, self.hidden_dim)
        n = 2 * self.hidden_dim
        w_h_z, w_h_a = jnp.split(self.weight_hh, [n], axis=1)
        b_z, b_a = jnp.split(self.bias, [n], axis=0)
        zr_x, a_x = jnp.split(jnp.matmul(x, self.weight_ih), [n], axis=-1)
        zr_h = jnp.matmul(state, w_h_z)
        z, r = jnp.split(jax.nn.sigmoid(zr_x + zr_h + jnp.broadcast_to(b_z, zr_h.shape)), 2, -1)
        a_h = jnp.matmul(r * state, w_h_a)
        a = jnp.tanh(a_x + a_h + jnp.broadcast_to(b_a, a_h.shape))
        new_state = (1 - z) * state + z * a
        return new_state, new_state

    def initial_state(self, batch_size: int | None) -> jax.Array:
        """Zeros of shape ``(batch_size, hidden_dim)``, or ``(hidden_dim,)`` for None."""
        return _zeros(self.hidden_dim, batch_size)


class VanillaRNN(LazyLayer):
    """A simple RNN ``h' = activation(x @ weight_ih + bias + h @ weight_hh [+ bias_hh])``.

    Numerically Haiku's ``hk.VanillaRNN`` (relu, two biases by default).

    Args:
      in_dim: size of the input vectors; None to take it from a first input (see
        `pax.Module.lazy_init`).
      hidden_dim: size of the state.
      double_bias: also learn a bias ``bias_hh`` on the hidden-to-hidden path (as Haiku).
      activation: the nonlinearity; default ``jax.nn.relu`` (as Haiku).
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Call: ``cell(x, state) -> (h', h')``.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> rnn = pax.nn.VanillaRNN(3, 8, activation=jnp.tanh)
      >>> out, state = rnn(jnp.ones((2, 3)), rnn.initial_state(2))
      >>> out.shape
      (2, 8)
    """

    weight_ih: jax.Array
    bias: jax.Array
    weight_hh: jax.Array
    bias_hh: jax.Array | None

    def __init__(
        self,
        in_dim: int | None,
        hidden_dim: int,
        double_bias: bool = True,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        *,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.hidden_dim = v.positive_int(self._cls, "hidden_dim", hidden_dim)
        if not callable(activation):
            raise TypeError(f"{self._cls}: activation must be callable, got {activation!r}.")
        self.activation = activation
        self.double_bias = v.boolean(self._cls, "double_bias", double_bias)
        self._create_params(in_dim, rng_key, param_dtype)

    def _build(self, key: jax.Array, dtype: Any) -> None:
        in_dim, hidden_dim = self.in_dim, self.hidden_dim
        k1, k2 = jax.random.split(key)
        w_ih = initializers.truncated_normal(1.0 / np.sqrt(in_dim))(k1, (in_dim, hidden_dim), dtype)
        w_hh = initializers.truncated_normal(1.0 / np.sqrt(hidden_dim))(
            k2, (hidden_dim,) * 2, dtype
        )
        self.register_parameter("weight_ih", w_ih)
        self.register_parameter("bias", jnp.zeros((hidden_dim,), dtype))
        self.register_parameter("weight_hh", w_hh)
        if self.double_bias:
            self.register_parameter("bias_hh", jnp.zeros((hidden_dim,), dtype))
        else:
            self.bias_hh = None

    def __getstate__(self) -> dict[str, Any]:
        return pickle_functions(super().__getstate__(), "activation")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(unpickle_functions(state))

    def __call__(self, x: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        self._lazy_check(x, state)
        _check(type(self).__name__, x, self.in_dim, state, self.hidden_dim)
        hidden = jnp.dot(state, self.weight_hh)
        if self.bias_hh is not None:
            hidden = hidden + jnp.broadcast_to(self.bias_hh, hidden.shape)
        inputs = jnp.dot(x, self.weight_ih)
        out = self.activation(inputs + jnp.broadcast_to(self.bias, inputs.shape) + hidden)
        return out, out

    def initial_state(self, batch_size: int | None) -> jax.Array:
        """Zeros of shape ``(batch_size, hidden_dim)``, or ``(hidden_dim,)`` for None."""
        return _zeros(self.hidden_dim, batch_size)


def _length(state: Any) -> str:
    return f"of length {len(state)}" if isinstance(state, (tuple, list)) else "(not a tuple)"


def _is_core(layer: Any) -> bool:
    return callable(getattr(layer, "initial_state", None))


class DeepRNN(Module):
    """Cells and functions chained as one cell, numerically as Haiku's ``hk.DeepRNN``.

    Each cell (a layer with ``initial_state``) gets its own entry of the state tuple; plain
    functions (``jax.nn.relu``) are applied in between. With ``skip_connections=True``
    (Haiku's ``hk.deep_rnn_with_skip_connections``) every cell after the first sees
    ``concat([inputs, previous output])`` and the output is the concatenation of all cells'
    outputs. Built with ``name=``, the cells are named inside it as Haiku names the cores of
    a ``hk.DeepRNN`` (``deep_rnn/~/lstm``), so `pax.haiku.load_haiku_params` loads its weights.

    Args:
      layers: cells (`LSTM`, `GRU`, `VanillaRNN`, another `DeepRNN`) and functions.
      skip_connections: Haiku's skip connections (every layer must then be a cell).
      name: the Haiku scope (``"deep_rnn"`` for Haiku's default).

    Raises:
      ValueError: for ``skip_connections=True`` with a layer that is not a cell.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> core = pax.nn.DeepRNN([pax.nn.LSTM(3, 8), jax.nn.relu, pax.nn.GRU(8, 4)])
      >>> out, state = core(jnp.ones((2, 3)), core.initial_state(2))
      >>> out.shape, len(state)
      ((2, 4), 2)
    """

    layers: list[Any]

    def __init__(
        self,
        layers: Sequence[Module | Callable[..., Any]],
        *,
        skip_connections: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        skip_connections = v.boolean("DeepRNN", "skip_connections", skip_connections)
        wrapped = [m if isinstance(m, Module) else Lambda(m) for m in layers]
        if skip_connections:
            for i, layer in enumerate(wrapped):
                if not _is_core(layer):
                    raise ValueError(
                        f"DeepRNN: with skip_connections=True every layer must be a cell (with "
                        f"initial_state), got layers[{i}] = {layer!r}. Fix: drop the function or "
                        "use skip_connections=False."
                    )
        self.skip_connections = skip_connections
        self.register_module_subtree("layers", wrapped)

    def __call__(self, x: Any, state: Sequence[Any]) -> tuple[Any, tuple[Any, ...]]:
        cores = sum(_is_core(layer) for layer in self.layers)
        if not isinstance(state, (tuple, list)) or len(state) != cores:
            raise ValueError(
                f"DeepRNN: expected a state tuple with one entry per cell ({cores} cells), got "
                f"{type(state).__name__} {_length(state)}. Fix: start from "
                "core.initial_state(batch_size)."
            )
        current = x
        outputs: list[Any] = []
        new_states: list[Any] = []
        for i, layer in enumerate(self.layers):
            if self.skip_connections and i > 0:
                current = jnp.concatenate([x, current], axis=-1)
            if _is_core(layer):
                current, s = layer(current, state[len(new_states)])
                outputs.append(current)
                new_states.append(s)
            else:
                current = layer(current)
        out = jnp.concatenate(outputs, axis=-1) if self.skip_connections else current
        return out, tuple(new_states)

    def initial_state(self, batch_size: int | None) -> tuple[Any, ...]:
        """One initial state per cell, in order."""
        return tuple(layer.initial_state(batch_size) for layer in self.layers if _is_core(layer))
