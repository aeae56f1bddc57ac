"""`pax.haiku.from_transformed`: a whole Haiku program (a function for `hk.transform`) as a module.

Real Haiku code is often a function given to ``hk.transform_with_state``, creating modules and
loose ``hk.get_parameter`` calls as it goes. `from_transformed` wraps such a function: the
module's Haiku ``params``/``state`` are exactly the program's own dicts (same names, no scope
added), so the program's trained dicts load with ``load_haiku_params(model, params, state)``,
strictly and without renaming.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import haiku as hk

from pax._src.haiku.config import HaikuConfig, freeze
from pax._src.haiku.module import HaikuModule


class ProgramConfig:
    """The static configuration of a wrapped program: the function (compared by identity) and
    the keyword arguments bound to it (compared by content). Plays the role of `HaikuConfig`."""

    __slots__ = ("_hash", "_key", "fn", "hk_cls", "kwargs")

    def __init__(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.fn = fn
        self.kwargs = dict(kwargs)
        self.hk_cls = None
        self._key = (fn, tuple(sorted((k, freeze(v)) for k, v in self.kwargs.items())))
        self._hash = hash(self._key)

    def build(self) -> Callable[..., Any]:
        """The program with its bound keyword arguments (called inside `hk.transform`)."""
        fn, kwargs = self.fn, self.kwargs
        return (lambda *args, **more: fn(*args, **kwargs, **more)) if kwargs else fn

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is ProgramConfig and self._hash == other._hash and self._key == other._key
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        bound = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"program {name}{bound}"


def takes_is_training(fn: Callable[..., Any]) -> bool:
    """Whether `fn` has a parameter named ``is_training``."""
    try:
        return "is_training" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class HaikuProgram(HaikuModule):
    """A Haiku program function as a pax module (what `from_transformed` builds).

    Calling it runs ``hk.transform_with_state(fn).apply`` with the module's ``params`` and
    ``state``; in training mode the new state is kept. See `from_transformed`.

    Example:
      >>> import haiku as hk, jax.numpy as jnp, pax
      >>> program = pax.haiku.from_transformed(lambda x: hk.Linear(2)(x)).hk_init(jnp.ones((1, 3)))
      >>> isinstance(program, pax.haiku.HaikuProgram), program(jnp.ones((1, 3))).shape
      (True, (1, 2))
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        kwargs: dict[str, Any] | None = None,
        *,
        use_rng: bool = False,
        pass_is_training: bool = False,
    ) -> None:
        # HaikuModule's constructor takes a module class; the program's config replaces it.
        placeholder = HaikuConfig(hk.Flatten)
        super().__init__(placeholder, use_rng=use_rng, pass_is_training=pass_is_training)
        self.hk_config = ProgramConfig(fn, kwargs or {})  # type: ignore[assignment]

    def call_method(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Programs have no other method; refused."""
        raise AttributeError(
            f"{self._describe()}: a Haiku program is one function; it has no method "
            f"{method!r}. Fix: call the module itself, or wrap the Haiku module class with "
            f"pax.from_haiku to reach its methods."
        )

    def initial_state(self, batch_size: int | None) -> Any:
        """Programs have no ``initial_state``; refused."""
        raise AttributeError(
            f"{self._describe()}: a Haiku program has no initial_state. Fix: compute it in "
            f"the program, or wrap the RNN core class with pax.from_haiku."
        )

    @contextmanager
    def _explain_errors(self) -> Iterator[None]:
        try:
            yield
        except Exception as err:
            if type(err).__name__ != "MissingRNGError" or self.use_rng:
                raise
            raise RuntimeError(
                f"{self._describe()} uses random numbers (hk.next_rng_key(), hk.dropout) but "
                f"was built without a key. Fix: pax.haiku.from_transformed(fn, use_rng=True)."
            ) from err


def from_transformed(
    fn: Callable[..., Any],
    *,
    use_rng: bool = False,
    pass_is_training: bool | None = None,
    **kwargs: Any,
) -> HaikuProgram:
    """Wraps a Haiku program: the function you would give to ``hk.transform_with_state``.

    The module starts uninitialized: ``model = model.hk_init(*dummy_inputs)`` runs the
    program's ``init``. Its ``params`` and ``state`` are the program's own dicts, keyed exactly
    as ``hk.transform_with_state(fn).init`` keys them (modules and loose ``hk.get_parameter``
    calls alike): `load_haiku_params` loads the program's trained dicts with ``strict=True``
    and no renaming, and `to_haiku_params` gives dicts the program's ``apply`` takes.

    Training mode: if `fn` has a parameter ``is_training``, the module passes
    ``is_training=self.training`` (so ``model.eval()`` switches off ``hk.dropout`` and makes
    ``hk.BatchNorm`` use its averages); do not pass it yourself. **A program without such a
    parameter cannot know the mode**: ``.eval()`` then changes nothing inside it (dropout stays
    on). Give the program an ``is_training`` argument and use it.

    Args:
      fn: the Haiku program function.
      use_rng: the program draws random numbers (``hk.next_rng_key()``, ``hk.dropout``): the
        module keeps a key as state and passes a fresh subkey to every call.
      pass_is_training: pass ``is_training=self.training``; default: when `fn` takes
        ``is_training``.
      **kwargs: keyword arguments bound to `fn` (static configuration, compared by content).

    Returns:
      An uninitialized `HaikuProgram`.

    Raises:
      TypeError: if `fn` is not callable, is a Haiku module class (use `pax.from_haiku`) or an
        already transformed function.

    Example:
      >>> import haiku as hk, jax, jax.numpy as jnp, pax
      >>> def forward(x, is_training):
      ...     x = hk.nets.MLP([4, 2])(x)
      ...     return x * hk.get_parameter("gain", [], init=jnp.ones)
      >>> f = hk.transform_with_state(forward)
      >>> params, state = f.init(jax.random.PRNGKey(0), jnp.ones((1, 3)), True)
      >>> model = pax.haiku.from_transformed(forward).hk_init(jnp.ones((1, 3)))
      >>> sorted(model.params) == sorted(params)
      True
      >>> model = pax.haiku.load_haiku_params(model, params, state)
      >>> x = jnp.ones((2, 3))
      >>> bool(jnp.allclose(model.eval()(x), f.apply(params, state, None, x, False)[0]))
      True
    """
    if isinstance(fn, type):
        raise TypeError(
            f"pax.haiku.from_transformed expects a Haiku program function, got the class "
            f"{fn.__name__}. Fix: pax.from_haiku({fn.__name__})(...) wraps a module class."
        )
    if not callable(fn) or (hasattr(fn, "init") and hasattr(fn, "apply")):
        raise TypeError(
            f"pax.haiku.from_transformed expects the function given to hk.transform, got "
            f"{type(fn).__name__}. Fix: pass the function itself: "
            f"pax.haiku.from_transformed(forward), not hk.transform(forward)."
        )
    if pass_is_training is None:
        pass_is_training = takes_is_training(fn)
    return HaikuProgram(fn, kwargs, use_rng=use_rng, pass_is_training=pass_is_training)
