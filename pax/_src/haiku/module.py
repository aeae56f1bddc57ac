"""`HaikuModule` (one pax module class for every wrapped Haiku module) and `pax.from_haiku`."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import haiku as hk
import jax
import numpy as np

from pax._src.core._jax_compat import trace_state_clean
from pax._src.core.module import Module
from pax._src.core.rng import next_rng_key, resolve_rng_key
from pax._src.core.summary import MAX_VALUE_CHARS, truncate
from pax._src.describe import describe, is_array_like
from pax._src.haiku.config import HaikuConfig, haiku_class_name, transformed

HaikuDict = dict[str, dict[str, jax.Array]]

_KEY_PLACEHOLDER: Any = np.zeros((2,), np.uint32)
# A state of a `pax.from_haiku` module until it is initialized: the key its first call uses when
# it is called without `hk_init` (Pax v0.2 initialized on the first call, also under jax.jit).
_ONLINE_KEY = "init_key"

_NOT_INITIALIZED = (
    "{module} is not initialized: Haiku creates its parameters from the shape of a first input. "
    "Fix: initialize the model once, right after building it, with dummy inputs: "
    "model = model.hk_init(*dummy_inputs) (this initializes every pax.from_haiku module in the "
    "model), or build the layer with pax.haiku (e.g. pax.haiku.linear(in_dim, out_dim)), which "
    "needs no dummy input."
)

# --- the initialize-on-first-call mode of `hk_init` ---------------------------------------------

_LOCAL = threading.local()

FirstCallHook = Callable[["HaikuModule", tuple, dict], None]


def current_hook() -> FirstCallHook | None:
    """The function `hk_init` installed to initialize modules on their first call, if any."""
    return getattr(_LOCAL, "hook", None)


@contextlib.contextmanager
def initialize_on_first_call(hook: FirstCallHook) -> Iterator[None]:
    """Within this block, uninitialized `HaikuModule`s call `hook` instead of raising."""
    previous = current_hook()
    _LOCAL.hook = hook
    try:
        yield
    finally:
        _LOCAL.hook = previous


def _plain(tree: Any) -> HaikuDict:
    """A Haiku params/state mapping as plain nested dicts."""
    return {name: dict(values) for name, values in tree.items()}


class HaikuModule(Module):
    """A Haiku module as a pax module (what `pax.from_haiku` and `pax.haiku.*` build).

    The Haiku class and its constructor arguments are static (in `hk_config`), so two modules
    built from the same class and arguments have equal treedefs. Haiku's ``params`` dict is a
    parameter subtree, Haiku's ``state`` dict a state subtree and, with ``use_rng=True``, the
    running key ``rng_key`` a state. Before `hk_init`, ``params`` and ``state`` are None.

    Args:
      hk_cls: a Haiku module class (or a `HaikuConfig`, then `args`/`kwargs` must be empty).
      args: positional arguments of the Haiku constructor.
      kwargs: keyword arguments of the Haiku constructor.
      use_rng: pass a fresh key to Haiku on every call (for modules calling
        ``hk.next_rng_key()``); the key is split from ``rng_key``, which advances per call.
      pass_is_training: call the Haiku module with ``is_training=self.training``.

    Example:
      >>> import haiku as hk, jax.numpy as jnp, pax
      >>> fc = pax.haiku.HaikuModule(hk.Linear, (3,)).hk_init(jnp.ones((1, 2)))
      >>> fc
      HaikuModule(hk.Linear(output_size=3), params={'linear': {'b': f32[3], 'w': f32[2,3]}})
      >>> fc(jnp.ones((4, 2))).shape
      (4, 3)
    """

    params: HaikuDict | None
    state: HaikuDict | None
    rng_key: jax.Array | None

    def __init__(
        self,
        hk_cls: type[hk.Module] | HaikuConfig,
        args: tuple = (),
        kwargs: dict[str, Any] | None = None,
        *,
        use_rng: bool = False,
        pass_is_training: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(hk_cls, HaikuConfig):
            if args or kwargs:
                raise TypeError(
                    "HaikuModule: got a HaikuConfig and constructor arguments; the config "
                    "already holds the arguments. Fix: HaikuModule(config)."
                )
            config = hk_cls
        else:
            check_haiku_class(hk_cls, "HaikuModule")
            config = HaikuConfig(hk_cls, tuple(args), kwargs)
        self.hk_config = config
        self.use_rng = bool(use_rng)
        self.pass_is_training = bool(pass_is_training)
        self.register_parameter_subtree("params", {})
        self.params = None
        self.register_state_subtree("state", {})
        self.state = None
        if self.use_rng:
            self.register_state("rng_key", _KEY_PLACEHOLDER)
            self.rng_key = None

    # --- properties ------------------------------------------------------------------------

    @property
    def hk_cls(self) -> type[hk.Module]:
        """The wrapped Haiku class."""
        return self.hk_config.hk_cls

    @property
    def is_initialized(self) -> bool:
        """Whether the Haiku parameters exist (after `hk_init`, or for `pax.haiku.*` layers)."""
        return self.params is not None

    _is_haiku_initialized = is_initialized  # Pax v0.2's spelling (its tests read it)

    # --- calling -----------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the Haiku module with the current parameters and state.

        In training mode the Haiku state (e.g. BatchNorm averages) is updated in place; with
        ``use_rng=True`` the key advances on every call.

        Raises:
          RuntimeError: if the module was never initialized (see `hk_init`).
        """
        return self._run("__call__", args, kwargs)

    def call_method(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Calls another method of the Haiku module, e.g. ``cell.call_method("initial_state", 2)``.

        A method that creates no parameter (like ``initial_state``) also works before the
        module is initialized.

        Example:
          >>> import haiku as hk, pax
          >>> cell = pax.from_haiku(hk.GRU)(hidden_size=4)
          >>> cell.call_method("initial_state", 2).shape
          (2, 4)
        """
        if method != "__call__" and (
            method.startswith("_") or not callable(getattr(self.hk_cls, method, None))
        ):
            name = haiku_class_name(self.hk_cls)
            raise AttributeError(
                f"HaikuModule.call_method: {name} has no public method {method!r}. Fix: use one "
                f"of {[m for m in dir(self.hk_cls) if _is_public_method(self.hk_cls, m)]}."
            )
        return self._run(method, args, kwargs)

    def initial_state(self, batch_size: int | None) -> Any:
        """The initial recurrent state of a Haiku RNN core (``hk.LSTM``, ``hk.GRU``, ...).

        Example:
          >>> import haiku as hk, pax
          >>> pax.from_haiku(hk.LSTM)(hidden_size=4).initial_state(2).hidden.shape
          (2, 4)
        """
        if not callable(getattr(self.hk_cls, "initial_state", None)):
            raise AttributeError(
                f"HaikuModule.initial_state: {haiku_class_name(self.hk_cls)} has no "
                f"initial_state method; only Haiku RNN cores (hk.LSTM, hk.GRU, hk.VanillaRNN, "
                f"...) have one."
            )
        return self._run("initial_state", (batch_size,), {})

    def _run(self, method: str, args: tuple, kwargs: dict) -> Any:
        kwargs = self._with_is_training(method, kwargs)
        if self.params is None:
            hook = current_hook()
            if method != "__call__":
                return self._run_without_params(method, args, kwargs)
            if hook is not None:
                hook(self, args, kwargs)
            elif self.__dict__.get(_ONLINE_KEY) is not None:  # built by pax.from_haiku
                self._hk_initialize(self.__dict__[_ONLINE_KEY], args, kwargs)
            else:
                raise RuntimeError(_NOT_INITIALIZED.format(module=self._describe()))
        rng = None
        if self.use_rng:
            new_key, rng = jax.random.split(cast(jax.Array, self.rng_key))
            self.rng_key = new_key
        with self._explain_errors():
            out, state = transformed(self.hk_config, method).apply(
                self.params, self.state, rng, *args, **kwargs
            )
        if self.training:
            self.state = _plain(state)
        return out

    def _run_without_params(self, method: str, args: tuple, kwargs: dict) -> Any:
        fns = transformed(self.hk_config, method)
        try:
            out, _ = fns.apply({}, {}, None, *args, **kwargs)
        except Exception as err:
            raise RuntimeError(
                _NOT_INITIALIZED.format(module=self._describe())
                + f" (calling {method!r} needs the parameters: {err})"
            ) from err
        return out

    def _with_is_training(self, method: str, kwargs: dict) -> dict:
        if not self.pass_is_training or method != "__call__":
            return kwargs
        if "is_training" in kwargs:
            raise TypeError(
                f"{self._describe()}: do not pass is_training; with pass_is_training=True it is "
                f"taken from the module's mode. Fix: call model.train() or model.eval() instead."
            )
        return {**kwargs, "is_training": self.training}

    @contextlib.contextmanager
    def _explain_errors(self) -> Iterator[None]:
        try:
            yield
        except Exception as err:
            if type(err).__name__ != "MissingRNGError" or self.use_rng:
                raise
            name = haiku_class_name(self.hk_cls)
            raise RuntimeError(
                f"{self._describe()} uses random numbers (hk.next_rng_key()) but was built "
                f"without a key. Fix: pax.from_haiku({name}, use_rng=True)(...)."
            ) from err

    # --- initialization ------------------------------------------------------------------

    def _hk_initialize(
        self, key: jax.Array, args: tuple, kwargs: dict, config: HaikuConfig | None = None
    ) -> None:
        """Runs Haiku's ``init`` on the inputs and stores the result in place.

        With ``pass_is_training``, ``init`` always runs with ``is_training=True`` (as Haiku
        programs do: ``hk.BatchNorm`` creates its moving averages in a training call), so a
        model in ``eval()`` mode can be initialized too.
        """
        if self.pass_is_training:
            kwargs = {**kwargs, "is_training": True}
        run_key = None
        if self.use_rng:
            key, run_key = jax.random.split(key)
        with self._explain_errors():
            params, state = transformed(config or self.hk_config, "__call__").init(
                key, *args, **kwargs
            )
        self._hk_set(params, state, run_key)

    def _hk_set(self, params: Any, state: Any, rng_key: jax.Array | None) -> None:
        if _ONLINE_KEY in self.__dict__:
            delattr(self, _ONLINE_KEY)
        self.params = _plain(params)
        self.state = _plain(state)
        if self.use_rng:
            self.rng_key = rng_key

    # --- display -------------------------------------------------------------------------

    def _describe(self) -> str:
        return f"HaikuModule({self.hk_config!r})"

    def __repr__(self) -> str:
        parts = [repr(self.hk_config)]
        if self.params is None:
            parts.append("uninitialized")
        else:
            parts.append(f"params={_bounded_dict_repr(self.params)}")
            if self.state:
                parts.append(f"state={_bounded_dict_repr(self.state)}")
        if self.use_rng:
            parts.append("use_rng=True")
        if self.pass_is_training:
            parts.append("pass_is_training=True")
        if not self.training:
            parts.append("training=False")
        return f"HaikuModule({', '.join(parts)})"


def _bounded_dict_repr(tree: Any) -> str:
    """`_dict_repr`, cut (with the leaf count) beyond `MAX_VALUE_CHARS` characters."""
    text = _dict_repr(tree)
    return truncate(text, MAX_VALUE_CHARS, len(jax.tree_util.tree_leaves(tree)), "leaves")


def _dict_repr(tree: Any) -> str:
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{k!r}: {_dict_repr(tree[k])}" for k in sorted(tree)) + "}"
    return describe(tree) if tree is None or is_array_like(tree) else repr(tree)


def _is_public_method(cls: type, name: str) -> bool:
    return (name == "__call__" or not name.startswith("_")) and callable(getattr(cls, name, None))


def check_haiku_class(hk_cls: Any, where: str) -> None:
    """Raises a `TypeError` naming `where` unless `hk_cls` is a subclass of ``hk.Module``."""
    if isinstance(hk_cls, type) and issubclass(hk_cls, hk.Module):
        return
    raise TypeError(
        f"{where} expects a Haiku module class (a subclass of hk.Module) such as hk.Linear, got "
        f"{hk_cls!r}. Fix: pass the class, then its arguments: "
        f"pax.from_haiku(hk.Linear)(output_size=3). A Haiku program (a function given to "
        f"hk.transform) is wrapped by pax.haiku.from_transformed(fn); a plain function that "
        f"creates no Haiku parameters by pax.nn.Lambda(fn)."
    )


def from_haiku(
    hk_cls: type[hk.Module],
    use_rng: bool = False,
    delay: bool = True,
    pass_is_training: bool = False,
) -> Callable[..., Any]:
    """Wraps a Haiku module class: returns a builder taking the Haiku constructor arguments.

    ``pax.from_haiku(hk.LSTM)(hidden_size=8)`` builds a `HaikuModule`. Haiku creates parameters
    from the shapes of a first input, so the module starts uninitialized: call
    ``model = model.hk_init(*dummy_inputs)`` once on the whole model, which initializes every
    wrapped module in it. The Haiku ``params`` are pax parameters (seen by ``parameters()``,
    ``jax.grad``, ``freeze()``, optimizers) and the Haiku ``state`` is pax state, updated in
    place in training mode only.

    Args:
      hk_cls: the Haiku module class, e.g. ``hk.Linear``.
      use_rng: the module draws random numbers; it keeps a key as state and passes a fresh
        subkey to Haiku on every call.
      delay: with True (default) the builder returns an uninitialized module. With False it
        returns ``initialize(*dummy_inputs, rng_key=None, **dummy_kwargs)``, which returns a
        module initialized from those inputs.
      pass_is_training: call the module with ``is_training=self.training`` (for
        ``hk.BatchNorm``, ``hk.nets.ResNet``, ...).

    Returns:
      ``builder(*args, **kwargs)``, taking the arguments of `hk_cls`. They reach Haiku
      unchanged (initializers follow Haiku's ``init(shape, dtype)``; the `pax.haiku` layers
      also accept pax's ``init(key, shape, dtype)``). They are static: part of the treedef,
      compared by content, so they must not be traced values.

    Raises:
      TypeError: if `hk_cls` is not a Haiku module class, or (from the builder) if the
        arguments do not fit its constructor.

    Example:
      >>> import haiku as hk, jax.numpy as jnp, pax
      >>> lstm = pax.from_haiku(hk.LSTM)(hidden_size=8)
      >>> x = jnp.ones((1, 3))
      >>> lstm = lstm.hk_init(x, lstm.initial_state(1))
      >>> out, state = lstm(x, lstm.initial_state(1))
      >>> out.shape, state.cell.shape
      ((1, 8), (1, 8))
      >>> bn = pax.from_haiku(hk.BatchNorm, delay=False, pass_is_training=True)(
      ...     create_scale=True, create_offset=True, decay_rate=0.9
      ... )(jnp.ones((2, 3)))
      >>> bn.params["batch_norm"]["scale"].shape
      (1, 3)
    """
    check_haiku_class(hk_cls, "pax.from_haiku")
    use_rng, pass_is_training = bool(use_rng), bool(pass_is_training)

    def builder(*args: Any, **kwargs: Any) -> Any:
        module = HaikuModule(
            hk_cls, args, kwargs, use_rng=use_rng, pass_is_training=pass_is_training
        )
        if delay:
            if trace_state_clean():  # Pax v0.2: the first call initializes, with this key
                module.register_state(_ONLINE_KEY, next_rng_key())
            return module

        def initialize(
            *dummy_args: Any, rng_key: jax.Array | None = None, **dummy_kwargs: Any
        ) -> HaikuModule:
            new = module.copy()
            dummy_kwargs = new._with_is_training("__call__", dummy_kwargs)
            new._hk_initialize(resolve_rng_key(rng_key), dummy_args, dummy_kwargs)
            return new

        return initialize

    builder.__name__ = builder.__qualname__ = f"from_haiku({haiku_class_name(hk_cls)})"
    return builder
