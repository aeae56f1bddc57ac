"""Ready-made optimizers (`sgd`, `adam`, `adamw`) and key-path masks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import optax

from pax._src.core.module import Module
from pax._src.optim.optax_wrapper import OptaxOptimizer

ScalarOrSchedule = float | Callable[[Any], Any]


class by_key_path:
    """Turns a function of key-path strings into an optax mask or label function.

    optax transforms such as ``optax.masked``, ``optax.add_decayed_weights(mask=...)`` and
    ``optax.multi_transform(param_labels=...)`` take a function of the parameters. Inside a pax
    optimizer the parameters are a flat mapping keyed by key-path strings (``".layers[0].bias"``),
    so ``by_key_path(fn)`` returns the function ``params -> {key: fn(key)}``. Two instances
    wrapping the same `fn` compare equal.

    Args:
      fn: called with each trainable parameter's key path; returns a bool (mask) or a label.

    Example:
      >>> import optax, pax
      >>> no_bias = pax.optim.by_key_path(lambda path: not path.endswith(".bias"))
      >>> net = pax.nn.Linear(2, 1)
      >>> tx = optax.chain(optax.add_decayed_weights(1e-4, mask=no_bias), optax.sgd(0.1))
      >>> opt = pax.optim.from_optax(tx)(net.parameters())
      >>> dict(no_bias({".weight": 0, ".bias": 0}))
      {'.weight': True, '.bias': False}
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[str], Any]) -> None:
        if not callable(fn):
            raise TypeError(
                f"by_key_path: expected a function of a key-path string, got "
                f"{type(fn).__name__}. Fix: pax.optim.by_key_path(lambda path: "
                f"not path.endswith('.bias'))."
            )
        self.fn = fn

    def __call__(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        if not isinstance(params, Mapping):
            raise TypeError(
                f"by_key_path: expected the flat {{key path: parameter}} mapping of a pax "
                f"optimizer, got {type(params).__name__}. Use it inside pax.optim.from_optax "
                f"transforms only."
            )
        rebuild: Any = type(params)
        return rebuild((key, self.fn(key)) for key in params)

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


def _key_path_mask(mask: Callable[[str], bool] | None, where: str) -> Any:
    if mask is None or isinstance(mask, by_key_path):
        return mask
    if not callable(mask):
        raise TypeError(
            f"{where}: mask must be a function of a key-path string returning True where weight "
            f"decay applies, got {type(mask).__name__}. Fix: mask=lambda path: "
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
    mask: Callable[[str], bool] | None = None,
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
      mask: a function of each parameter's key-path string (``".layers[0].bias"``) returning
        True where weight decay applies; default everywhere.
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
