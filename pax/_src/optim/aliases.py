"""Ready-made optimizers (`sgd`, `adam`, `adamw`) and key-path masks."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import optax

from pax._src.core import select
from pax._src.core.module import Module
from pax._src.optim.optax_wrapper import OptaxOptimizer

ScalarOrSchedule = float | Callable[[Any], Any]


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


_ADAM_STATIC = ("b1", "b2", "eps", "eps_root", "nesterov")
_inject_sgd = optax.inject_hyperparams(optax.sgd, static_args=("momentum", "nesterov"))
_inject_adam = optax.inject_hyperparams(optax.adam, static_args=_ADAM_STATIC)
_inject_adamw = optax.inject_hyperparams(optax.adamw, static_args=(*_ADAM_STATIC, "mask"))


def sgd(
    params: Module,
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> OptaxOptimizer:
    """Stochastic gradient descent, optionally with (Nesterov) momentum: ``optax.sgd``.

    The learning rate is injected (``optax.inject_hyperparams``): read or set it with
    ``opt.learning_rate``.

    Args:
      params: ``model.parameters()``.
      learning_rate: a float or an optax schedule (a function of the step count).
      momentum: momentum decay; 0 means none (no velocity is stored).
      nesterov: use Nesterov momentum.

    Returns:
      An `OptaxOptimizer`.

    Example:
      >>> import pax
      >>> net = pax.nn.Linear(2, 1)
      >>> opt = pax.optim.sgd(net.parameters(), 0.1, momentum=0.9)
      >>> round(float(opt.learning_rate), 6)
      0.1
    """
    tx = _transform(
        _inject_sgd,
        learning_rate=learning_rate,
        momentum=momentum or None,
        nesterov=nesterov,
    )
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
      learning_rate: a float or an optax schedule.
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to the denominator.
      nesterov: use Nesterov momentum (NAdam).

    Returns:
      An `OptaxOptimizer`.

    Example:
      >>> import pax
      >>> opt = pax.optim.adam(pax.nn.Linear(2, 1).parameters(), 1e-3)
      >>> opt.learning_rate = 1e-4
    """
    tx = _transform(
        _inject_adam, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, nesterov=nesterov
    )
    return OptaxOptimizer(params, tx)


def adamw(
    params: Module,
    learning_rate: ScalarOrSchedule,
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
      learning_rate: a float or an optax schedule.
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to the denominator.
      weight_decay: decay rate (read or set with ``opt.set_hyperparams(weight_decay=...)``).
      mask: selects where weight decay applies (default everywhere), as
        ``model.freeze(where=...)`` does: a regular expression searched in each parameter's
        key-path string (``r"\\.weight$"``), or a function of ``(key_path, leaf)`` or of the
        key path alone (``lambda path: not path.endswith(".bias")``).
      nesterov: use Nesterov momentum.

    Returns:
      An `OptaxOptimizer`.

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
    tx = _transform(
        _inject_adamw,
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=_key_path_mask(mask, "pax.optim.adamw"),
        nesterov=nesterov,
    )
    return OptaxOptimizer(params, tx)
