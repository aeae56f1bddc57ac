"""Sequential and MLP containers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, overload

import jax
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

    def __init__(self, *layers: Module | Callable[..., Any]) -> None:
        super().__init__()
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

    Args:
      dims: the layer sizes ``[in_dim, hidden..., out_dim]``.
      activation: applied after every layer but the last.
      activate_final: also apply it after the last layer.
      with_bias: use biases.
      w_init: weight initializer of every layer; default that of `Linear`.
      b_init: bias initializer of every layer; default zeros.
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> mlp = pax.nn.MLP([3, 16, 16, 2])
      >>> mlp(jnp.ones((5, 3))).shape
      (5, 2)
    """

    layers: list[Linear]

    features = v.RenamedAttribute("dims")

    @v.renamed_kwargs(features="dims")
    def __init__(
        self,
        dims: Sequence[int],
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        activate_final: bool = False,
        with_bias: bool = True,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        sizes = tuple(dims) if isinstance(dims, Iterable) and not isinstance(dims, str) else ()
        if len(sizes) < 2:
            raise ValueError(
                f"{cls}: dims needs at least [in_dim, out_dim], got {dims!r}; e.g. "
                f"{cls}([784, 128, 10])."
            )
        if not callable(activation):
            raise TypeError(f"{cls}: activation must be callable, got {activation!r}.")
        self.dims = tuple(v.positive_int(cls, f"dims[{i}]", d) for i, d in enumerate(sizes))
        keys = jax.random.split(resolve_rng_key(rng_key), len(sizes) - 1)
        self.activation = activation
        self.activate_final = v.boolean(cls, "activate_final", activate_final)
        with_bias = v.boolean(cls, "with_bias", with_bias)
        self.layers = [
            Linear(i, o, with_bias, w_init, b_init, rng_key=k)
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
