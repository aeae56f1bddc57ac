"""Linear, Identity and Lambda layers."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.core.module import Module
from pax._src.nn import _validate as v
from pax._src.nn import initializers
from pax._src.nn._lazy import Init, LazyLayer, weight_and_bias
from pax._src.nn.initializers import Initializer


class Linear(LazyLayer):
    """A fully connected layer ``y = x @ weight + bias`` (Haiku's ``hk.Linear``).

    Args:
      in_dim: size of the last input axis; None to take it from a first input (the layer stays
        uninitialized until ``model = model.lazy_init(example_input)``).
      out_dim: size of the last output axis.
      with_bias: whether to add a bias.
      w_init: weight initializer; default (as Haiku) a normal truncated at 2 std with std
        parameter ``1 / sqrt(in_dim)``.
      b_init: bias initializer; default zeros.
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32). The layer computes in the
        promoted dtype of its input and parameters (see README, "Mixed precision").
      name: a name shown by repr and summary.

    Raises:
      ValueError: for a non-positive size, or (at call) an input whose last axis is not
        `in_dim`.
      RuntimeError: at call, if `in_dim` was None and the layer was never initialized.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> fc = pax.nn.Linear(3, 4)
      >>> fc(jnp.ones((2, 3))).shape
      (2, 4)
      >>> pax.nn.Linear(None, 4).lazy_init(jnp.ones((2, 3))).weight.shape
      (3, 4)
    """

    weight: jax.Array
    bias: jax.Array | None

    def __init__(
        self,
        in_dim: int | None,
        out_dim: int,
        with_bias: bool = True,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.out_dim = v.positive_int(self._cls, "out_dim", out_dim)
        self.with_bias = v.boolean(self._cls, "with_bias", with_bias)
        self._create_params(in_dim, rng_key, param_dtype, w_init=w_init, b_init=b_init)

    def _build(self, key: jax.Array, w_init: Init, b_init: Init, dtype: Any) -> None:
        w_init = w_init or initializers.truncated_normal(stddev=1.0 / np.sqrt(self.in_dim))
        weight_and_bias(self, key, (self.in_dim, self.out_dim), w_init, b_init, dtype)

    def __call__(self, x: jax.Array, *, precision: jax.lax.Precision | None = None) -> jax.Array:
        self._lazy_check(x)
        v.check_last_dim(type(self).__name__, x, self.in_dim)
        y = jnp.dot(x, self.weight, precision=precision)
        if self.bias is not None:
            y = y + jnp.broadcast_to(self.bias, y.shape)
        return y


class Identity(Module):
    """Returns its input unchanged.

    Example:
      >>> import pax
      >>> pax.nn.Identity()(3)
      3
    """

    def __call__(self, x: Any) -> Any:
        return x


def _import_by_name(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _by_name(fn: Any) -> tuple[str, str] | None:
    """``(module, qualname)`` under which `fn` itself can be imported, else None."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    try:
        found = _import_by_name(module, qualname)
    except (ImportError, AttributeError):
        return None
    return (module, qualname) if found is fn else None


class _PicklableFn:
    """`Lambda.fn` while pickling: by qualified name when importable, so that `jax.nn.relu`
    (a jitted custom_jvp function that pickle cannot save by value) round-trips. Copies
    (`copy.copy`, `copy.deepcopy`) get the function itself."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        name = _by_name(self.fn)
        if name is not None:
            return _import_by_name, name
        qualname = getattr(self.fn, "__qualname__", "")
        if isinstance(qualname, str) and "<" in qualname:  # <lambda>, <locals>
            raise TypeError(
                f"Lambda: cannot pickle fn={self.fn!r}: a lambda or a function defined inside "
                f"another function cannot be imported back. Fix: define it at module level "
                f"(def act(x): ...; pax.nn.Lambda(act)), or save only the arrays with "
                f"pax.save(path, model)."
            )
        return _identity, (self.fn,)  # anything else: pickle it by value

    def __copy__(self) -> Any:
        return self.fn

    def __deepcopy__(self, memo: dict) -> Any:
        return self.fn


def _identity(x: Any) -> Any:
    return x


class Lambda(Module):
    """Wraps a stateless function (such as `jax.nn.relu`) as a module.

    A Lambda pickles its function by qualified name (module and name, as pickle does for plain
    functions), which also works for `jax.nn.relu` and the other jitted functions of JAX; a
    lambda or a local function cannot be pickled (`TypeError`): define it at module level.

    Args:
      fn: the function; it is static (part of the treedef).

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> pax.nn.Lambda(jax.nn.relu)(jnp.array([-1.0, 2.0])).tolist()
      [0.0, 2.0]
    """

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None) -> None:
        super().__init__(name=name)
        if not callable(fn):
            raise TypeError(
                f"Lambda: fn must be callable, got {fn!r}; e.g. pax.nn.Lambda(jax.nn.relu)."
            )
        if isinstance(fn, Module):
            raise TypeError("Lambda: fn is already a pax.Module; use it directly.")
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return pickle_functions(super().__getstate__(), "fn")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(unpickle_functions(state))


def pickle_functions(state: dict[str, Any], *names: str) -> dict[str, Any]:
    """A module's pickled state with the functions under `names` saved by qualified name."""
    state = dict(state)
    for name in names:
        state[name] = _PicklableFn(state[name])
    return state


def unpickle_functions(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `pickle_functions` (``copy.copy`` passes the state on as is)."""
    return {k: v.fn if isinstance(v, _PicklableFn) else v for k, v in state.items()}
