"""Ready-made optimizers (`sgd`, `adam`, `adamw`) and key-path masks."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import optax

from pax._src.arguments.compat import v02_positionals
from pax._src.core import select
from pax._src.core.module import Module
from pax._src.optim import hyperparams as check
from pax._src.optim.optax_wrapper import OptaxOptimizer

ScalarOrSchedule = float | Callable[[Any], Any]

_CALLED_AS_SCHEDULE = (
    "{self!r} was called with the step count instead of the parameters: "
    "optax.inject_hyperparams takes every function argument (mask=..., param_labels=...) for "
    "a schedule of the step count. Fix: name it static, e.g. "
    "optax.inject_hyperparams(optax.adamw, static_args=('mask',))(learning_rate=1e-3, "
    "weight_decay=1e-4, mask=pax.optim.by_key_path(...)); or use "
    "pax.optim.adamw(params, 1e-3, mask=...), whose learning rate is readable too."
)


class by_key_path:
    r"""Turns a leaf selection by key path into an optax mask or label function.

    optax transforms such as ``optax.masked``, ``optax.add_decayed_weights(mask=...)`` and
    ``optax.multi_transform(param_labels=...)`` take a function of the parameters. Inside a pax
    optimizer the parameters are a flat mapping keyed by key-path strings (``".layers[0].bias"``),
    so ``by_key_path(fn)`` returns the function ``params -> {key: fn(key, leaf)}``. It takes the
    same selections as ``model.freeze(where=...)``: a regular expression searched in the key
    path (a mask: True where it matches), or a function of ``(key_path, leaf)`` or of the key
    path alone (a mask or labels). Two instances wrapping the same `fn` compare equal.

    Args:
      fn: a regular expression (str), or a function called with each trainable parameter's
        key path (and leaf) that returns a bool (mask) or a label.

    Raises:
      TypeError: if `fn` is neither a string nor a function.
      ValueError: if `fn` is an invalid regular expression, or (when the mask is applied) a
        regular expression that matches no parameter's key path.

    Example:
      >>> import optax, pax
      >>> no_bias = pax.optim.by_key_path(lambda path: not path.endswith(".bias"))
      >>> net = pax.nn.Linear(2, 1)
      >>> tx = optax.chain(optax.add_decayed_weights(1e-4, mask=no_bias), optax.sgd(0.1))
      >>> opt = pax.optim.from_optax(tx)(net.parameters())
      >>> dict(no_bias({".weight": 0, ".bias": 0}))
      {'.weight': True, '.bias': False}
      >>> dict(pax.optim.by_key_path(r"\.weight$")({".weight": 0, ".bias": 0}))
      {'.weight': True, '.bias': False}
    """

    __slots__ = ("_match", "fn")

    def __init__(self, fn: select.Where) -> None:
        if not (callable(fn) or isinstance(fn, (str, re.Pattern))):
            raise TypeError(
                f"by_key_path: expected a function of a key-path string (or of (key_path, "
                f"leaf)), or a regular expression searched in each key path, got "
                f"{type(fn).__name__}. Fix: pax.optim.by_key_path(r'\\.bias$') or "
                f"pax.optim.by_key_path(lambda path: not path.endswith('.bias'))."
            )
        self._match = select.as_predicate(fn, "pax.optim.by_key_path")
        self.fn = fn

    def __call__(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        if not isinstance(params, Mapping):
            if getattr(params, "shape", None) == () and jnp.issubdtype(
                getattr(params, "dtype", float), jnp.integer
            ):  # optax.inject_hyperparams calls every function argument as a schedule
                raise TypeError(_CALLED_AS_SCHEDULE.format(self=self))
            raise TypeError(
                f"by_key_path: expected the flat {{key path: parameter}} mapping of a pax "
                f"optimizer, got {type(params).__name__}. Use it inside pax.optim.from_optax "
                f"transforms only."
            )
        rebuild: Any = type(params)
        match = self._match
        result = rebuild((key, match(key, leaf)) for key, leaf in params.items())
        if params and not callable(self.fn) and not any(result.values()):
            raise ValueError(
                f"pax.optim.by_key_path: the regular expression {self.fn!r} matches no "
                f"parameter (most likely a typo). The key paths are: "
                f"{', '.join(list(params)[:6])}{', ...' if len(params) > 6 else ''}. Fix: "
                f"match one of them, e.g. r'\\.bias$'."
            )
        return result

    def __eq__(self, other: object) -> bool:
        return type(other) is by_key_path and other.fn == self.fn

    def __hash__(self) -> int:
        return hash((by_key_path, self.fn))

    def __repr__(self) -> str:
        return f"by_key_path({getattr(self.fn, '__name__', self.fn)!r})"


@functools.lru_cache(maxsize=128)
def _cached(factory: Callable[..., Any], kwargs: tuple) -> optax.GradientTransformation:
    return factory(**dict(kwargs))


def _transform(factory: Callable[..., Any], **kwargs: Any) -> optax.GradientTransformation:
    """Returns ``factory(**kwargs)``, the same object for equal hashable arguments.

    Reusing one transform object keeps the treedefs of two optimizers built with the same
    settings equal, so a jitted step does not recompile when the optimizer is rebuilt.
    """
    key = tuple(sorted(kwargs.items()))
    try:
        hash(key)
    except TypeError:
        return factory(**kwargs)
    return _cached(factory, key)


def _key_path_mask(mask: select.Where | None, where: str) -> Any:
    if mask is None or isinstance(mask, by_key_path):
        return mask
    if not (callable(mask) or isinstance(mask, str)):
        raise TypeError(
            f"{where}: mask must be a function of a key-path string (or of (key_path, leaf)), "
            f"or a regular expression searched in each key path, selecting where weight decay "
            f"applies; got "
            f"{type(mask).__name__}. Fix: mask=r'\\.weight$', or mask=lambda path: "
            f"not path.endswith('.bias')."
        )
    return by_key_path(mask)


def _adam_constants(owner: str, b1: Any, b2: Any, eps: Any, nesterov: Any) -> dict[str, Any]:
    """The checked static arguments of `adam` and `adamw` (Python floats: hashable)."""
    return dict(
        b1=check.number(owner, "b1", b1, low=0, high=1, example="0.9", static=True),
        b2=check.number(owner, "b2", b2, low=0, high=1, example="0.999", static=True),
        eps=check.number(owner, "eps", eps, low=0, example="1e-8", static=True),
        nesterov=check.boolean(owner, "nesterov", nesterov),
    )


_ADAM_STATIC = ("b1", "b2", "eps", "eps_root", "nesterov")
_inject_sgd = optax.inject_hyperparams(optax.sgd, static_args=("momentum", "nesterov"))
_inject_adam = optax.inject_hyperparams(optax.adam, static_args=_ADAM_STATIC)
_inject_adamw = optax.inject_hyperparams(optax.adamw, static_args=(*_ADAM_STATIC, "mask"))


def sgd(
    params: Module,
    learning_rate: ScalarOrSchedule,
    momentum: float | None = 0.0,
    nesterov: bool = False,
) -> OptaxOptimizer:
    """Stochastic gradient descent, optionally with (Nesterov) momentum: ``optax.sgd``.

    The learning rate is injected (``optax.inject_hyperparams``): read or set it with
    ``opt.learning_rate``.

    Args:
      params: ``model.parameters()``.
      learning_rate: a number > 0 or an optax schedule (a function of the step count).
      momentum: momentum decay in [0, 1]; 0 or None means none (no velocity is stored).
      nesterov: use Nesterov momentum (needs a momentum).

    Returns:
      An `OptaxOptimizer`.

    Raises:
      TypeError: if an argument has the wrong type (``None`` or the string ``"1e-3"`` as
        learning rate, an integer array, a non-bool `nesterov`); each error names the fix.
      ValueError: if a value is out of range (a learning rate <= 0, a momentum above 1), not a
        scalar, or `nesterov` is set without momentum.

    Example:
      >>> import pax
      >>> net = pax.nn.Linear(2, 1)
      >>> opt = pax.optim.sgd(net.parameters(), 0.1, momentum=0.9)
      >>> round(float(opt.learning_rate), 6)
      0.1
    """
    owner = "pax.optim.sgd"
    check.parameters(owner, params, learning_rate)
    learning_rate = check.learning_rate(owner, learning_rate)
    momentum = check.momentum(owner, momentum)
    nesterov = check.boolean(owner, "nesterov", nesterov)
    if nesterov and momentum is None:
        raise ValueError(
            f"{owner}: nesterov=True has no effect without momentum (momentum=0). Fix: "
            f"pax.optim.sgd(params, learning_rate, momentum=0.9, nesterov=True)."
        )
    tx = _transform(_inject_sgd, learning_rate=learning_rate, momentum=momentum, nesterov=nesterov)
    return OptaxOptimizer(params, tx)


def adam(
    params: Module,
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    nesterov: bool = False,
) -> OptaxOptimizer:
    """Adam: ``optax.adam`` with an injected learning rate (``opt.learning_rate``).

    Args:
      params: ``model.parameters()``.
      learning_rate: a number > 0 or an optax schedule.
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: added to the denominator, >= 0.
      nesterov: use Nesterov momentum (NAdam).

    Returns:
      An `OptaxOptimizer`.

    Raises:
      TypeError: if an argument has the wrong type (``None`` or the string ``"1e-3"`` as
        learning rate, an integer array, a non-bool `nesterov`); each error names the fix.
      ValueError: if a value is out of range (a learning rate <= 0, ``b1`` outside [0, 1))
        or not a scalar.

    Example:
      >>> import pax
      >>> opt = pax.optim.adam(pax.nn.Linear(2, 1).parameters(), 1e-3)
      >>> opt.learning_rate = 1e-4
    """
    owner = "pax.optim.adam"
    check.parameters(owner, params, learning_rate)
    tx = _transform(
        _inject_adam,
        learning_rate=check.learning_rate(owner, learning_rate),
        **_adam_constants(owner, b1, b2, eps, nesterov),
    )
    return OptaxOptimizer(params, tx)


_NOT_GIVEN: Any = object()  # adamw's learning rate was not given (Pax v0.2 defaulted it)


def adamw(
    params: Module,
    learning_rate: ScalarOrSchedule = _NOT_GIVEN,
    *v02: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    mask: select.Where | None = None,
    nesterov: bool = False,
) -> OptaxOptimizer:
    """Adam with decoupled weight decay: ``optax.adamw``, with injected learning rate and decay.

    Args:
      params: ``model.parameters()``.
      learning_rate: a number > 0 or an optax schedule.
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      eps: added to the denominator, >= 0.
      weight_decay: decay rate, >= 0 (read or set with
        ``opt.set_hyperparams(weight_decay=...)``).
      mask: selects where weight decay applies (default everywhere), as
        ``model.freeze(where=...)`` does: a regular expression searched in each parameter's
        key-path string (``r"\\.weight$"``), or a function of ``(key_path, leaf)`` or of the
        key path alone (``lambda path: not path.endswith(".bias")``).
      nesterov: use Nesterov momentum.
      *v02: refused: everything after `learning_rate` is keyword-only, so that Pax v0.2's
        ``adamw(params, 1e-3, 1e-2)`` (a weight decay third) cannot set ``b1``.

    Returns:
      An `OptaxOptimizer`.

    Raises:
      TypeError: for a third positional argument or no learning rate (Pax v0.2 forms: its
        default was 1e-4), naming the spelling; if an argument has the wrong type (``None``
        or the string ``"1e-3"`` as learning rate, an integer array, a non-bool
        `nesterov`); each error names the fix.
      ValueError: if a value is out of range (a learning rate <= 0, ``b1`` outside [0, 1))
        or not a scalar; `mask` as for `by_key_path`.

    Example:
      >>> import pax
      >>> net = pax.nn.MLP([2, 8, 1])
      >>> opt = pax.optim.adamw(
      ...     net.parameters(), 1e-3, weight_decay=1e-2,
      ...     mask=lambda path: not path.endswith(".bias"),
      ... )
      >>> round(float(opt.hyperparams["weight_decay"]), 6)
      0.01
    """
    owner = "pax.optim.adamw"
    v02_positionals(
        owner, v02, ("weight_decay",), "pax.optim.adamw(params, 1e-3, weight_decay=1e-2)"
    )
    if learning_rate is _NOT_GIVEN:
        raise TypeError(
            f"{owner}: learning_rate is required (Pax v0.2's adamw defaulted it to 1e-4). "
            "Fix: pax.optim.adamw(params, 1e-4, weight_decay=1e-4)."
        )
    check.parameters(owner, params, learning_rate)
    tx = _transform(
        _inject_adamw,
        learning_rate=check.learning_rate(owner, learning_rate),
        weight_decay=check.number(
            owner, "weight_decay", weight_decay, low=0, example="1e-4", static=False
        ),
        mask=_key_path_mask(mask, owner),
        **_adam_constants(owner, b1, b2, eps, nesterov),
    )
    return OptaxOptimizer(params, tx)
