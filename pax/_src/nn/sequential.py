"""Sequential and MLP containers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast, overload

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key
from pax._src.nn import _validate as v
from pax._src.nn.initializers import Initializer
from pax._src.nn.linear import Lambda, Linear, pickle_functions, unpickle_functions


class Sequential(Module):
    """Calls its layers in order; plain functions are wrapped in `pax.nn.Lambda`.

    The layers are kept in the list ``modules``, which can be indexed and replaced. ``net[i]``
    is the i-th layer; ``net[:2]`` is a new `Sequential` of the same layer objects (not copies:
    a change to a layer of the slice is a change to the net).

    A plain function (a ``lambda``) is a static value of the model, and every build of the
    model holds a different function object, so two builds of the same model are different
    pytrees (``update``, checkpoints and `jax.jit` caches then mismatch). Prefer modules such
    as `pax.nn.Flatten` and `pax.nn.Reshape`, or named functions such as ``jax.nn.relu``.

    Args:
      *layers: modules or functions.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> net = pax.nn.Sequential(pax.nn.Linear(4, 8), jax.nn.relu, pax.nn.Linear(8, 2))
      >>> net.modules[2] = pax.nn.Linear(8, 3)
      >>> net(jnp.ones((1, 4))).shape
      (1, 3)
      >>> net[:2](jnp.ones((1, 4))).shape, type(net[-1]).__name__
      ((1, 8), 'Linear')
    """

    modules: list[Any]  # pax modules; plain functions are wrapped in a Lambda

    def __init__(self, *layers: Module | Callable[..., Any], name: str | None = None) -> None:
        super().__init__(name=name)
        self.register_module_subtree(
            "modules", [m if isinstance(m, Module) else Lambda(m) for m in layers]
        )

    def __call__(self, x: Any) -> Any:
        for module in self.modules:
            x = module(x)
        return x

    @overload
    def __getitem__(self, index: int) -> Module: ...

    @overload
    def __getitem__(self, index: slice) -> Sequential: ...

    def __getitem__(self, index: int | slice) -> Module | Sequential:
        cls = type(self).__name__
        if isinstance(index, slice):
            out = Sequential(*self.modules[index])
            out.training = self.training
            return out
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(
                f"{cls}: index must be an int or a slice, got {index!r} "
                f"({type(index).__name__}); e.g. net[0] or net[:2]."
            )
        n = len(self.modules)
        if not -n <= index < n:
            raise IndexError(
                f"{cls}: index {index} is out of range for {n} layers; use -{n} to {n - 1}."
            )
        return self.modules[index]

    def __len__(self) -> int:
        return len(self.modules)


class MLP(Module):
    """A multi-layer perceptron: Linear layers with an activation between them (``hk.nets.MLP``).

    Two spellings: pax's ``MLP(dims)`` lists every size, the input's included, so
    ``MLP([784, 128, 10])`` has two layers; Haiku's ``hk.nets.MLP(output_sizes)`` lists the
    output sizes only, so ``hk.nets.MLP([128, 10])`` also has two layers. Port Haiku code with
    the keyword ``MLP(output_sizes=[128, 10], in_dim=784)`` (``in_dim=None``: taken from a
    first input, see `pax.Module.lazy_init`); giving both forms is refused.

    Args:
      dims: the layer sizes ``[in_dim, hidden..., out_dim]``.
      output_sizes: Haiku's form, instead of `dims`: ``[hidden..., out_dim]``.
      in_dim: with `output_sizes`, the input size (None: lazy).
      activation: applied after every layer but the last.
      activate_final: also apply it after the last layer.
      with_bias: use biases.
      w_init: weight initializer of every layer; default that of `Linear`.
      b_init: bias initializer of every layer; default zeros.
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> mlp = pax.nn.MLP([3, 16, 16, 2])
      >>> mlp(jnp.ones((5, 3))).shape
      (5, 2)
      >>> len(pax.nn.MLP(output_sizes=[16, 2], in_dim=3).layers)
      2
    """

    layers: list[Linear]

    features = v.RenamedAttribute("dims")

    @v.renamed_kwargs(features="dims")
    def __init__(
        self,
        dims: Sequence[int] | None = None,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        activate_final: bool = False,
        with_bias: bool = True,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        *,
        output_sizes: Sequence[int] | None = None,
        in_dim: int | None = None,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        cls = type(self).__name__
        if not callable(activation):
            raise TypeError(f"{cls}: activation must be callable, got {activation!r}.")
        self.dims = _mlp_dims(cls, dims, output_sizes, in_dim)
        keys = jax.random.split(resolve_rng_key(rng_key), len(self.dims) - 1)
        self.activation = activation
        self.activate_final = v.boolean(cls, "activate_final", activate_final)
        with_bias = v.boolean(cls, "with_bias", with_bias)
        dtype = v.float_dtype(cls, "param_dtype", param_dtype)
        self.layers = [
            Linear(i, cast(int, o), with_bias, w_init, b_init, rng_key=k, param_dtype=dtype)
            for i, o, k in zip(self.dims[:-1], self.dims[1:], keys)
        ]

    def __getstate__(self) -> dict[str, Any]:
        return pickle_functions(super().__getstate__(), "activation")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(unpickle_functions(state))

    def __call__(self, x: jax.Array) -> jax.Array:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last or self.activate_final:
                x = self.activation(x)
        return x


def _sizes(value: Any) -> tuple:
    if getattr(value, "ndim", 1) == 0:  # a 0-d array is Iterable but cannot be iterated
        return ()
    return tuple(value) if isinstance(value, Iterable) and not isinstance(value, str) else ()


def _mlp_dims(cls: str, dims: Any, output_sizes: Any, in_dim: Any) -> tuple[int | None, ...]:
    """The sizes ``(in_dim, hidden..., out_dim)`` from pax's or Haiku's spelling."""
    if output_sizes is not None:
        if dims is not None:
            raise TypeError(
                f"{cls}: give dims (every size, the input's first) or output_sizes (Haiku's "
                f"form, without the input size), not both. Fix: {cls}(output_sizes="
                f"{list(_sizes(output_sizes))!r}, in_dim=...)."
            )
        outs = _sizes(output_sizes)
        if not outs:
            raise ValueError(
                f"{cls}: output_sizes needs at least one size, got {output_sizes!r}; e.g. "
                f"{cls}(output_sizes=[128, 10], in_dim=784)."
            )
        first = None if in_dim is None else v.positive_int(cls, "in_dim", in_dim)
        rest = tuple(v.positive_int(cls, f"output_sizes[{i}]", d) for i, d in enumerate(outs))
        return (first, *rest)
    if in_dim is not None:
        raise TypeError(
            f"{cls}: in_dim= goes with output_sizes= (Haiku's form); with dims the input size "
            f"is dims[0]. Fix: {cls}(output_sizes=[...], in_dim={in_dim!r})."
        )
    sizes = _sizes(dims)
    if len(sizes) < 2:
        raise ValueError(
            f"{cls}: dims needs at least [in_dim, out_dim], got {dims!r}; e.g. "
            f"{cls}([784, 128, 10]), or Haiku's form {cls}(output_sizes=[128, 10], in_dim=784)."
        )
    return tuple(v.positive_int(cls, f"dims[{i}]", d) for i, d in enumerate(sizes))
