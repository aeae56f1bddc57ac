"""Checks of optimizer hyper-parameters: the ready-made optimizers' arguments, and values set
later with `OptaxOptimizer.set_hyperparams`.

optax takes its hyper-parameters as they come: ``None`` or a negative rate trains (at the wrong
rate), and a string (how a YAML config reads ``1e-3``) fails only at the first step with
``Only integer scalar arrays can be converted to a scalar index``. `pax.optim.sgd`, `adam` and
`adamw` check each argument here instead, and every error names the optimizer, the argument,
the value and a valid call.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from pax._src import arguments
from pax._src.core._jax_compat import Tracer
from pax._src.core.module import Module
from pax._src.describe import describe, is_array_like


def _got(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (bool, np.bool_)):
        return f"{value!r} (a bool)"
    if isinstance(value, (int, float)):
        return repr(value)
    if is_array_like(value):
        return f"{describe(value)}"
    return f"{value!r} ({type(value).__name__})"


def _string_fix(name: str, value: str) -> str:
    try:
        float(value)
    except ValueError:
        return ""
    return (
        f" (a YAML config reads {value} without a decimal point as a string). "
        f"Fix: {name}=float({value!r})"
    )


def _bounds(low: float, high: float | None, high_inclusive: bool, low_inclusive: bool) -> str:
    if high is None:
        return f"a number {'>=' if low_inclusive else '>'} {low:g}"
    return (
        f"a number in {'[' if low_inclusive else '('}{low:g}, {high:g}"
        f"{']' if high_inclusive else ')'}"
    )


def number(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
    example: str,
    static: bool,
) -> Any:
    """Returns a scalar hyper-parameter after checking its type, shape, dtype and range.

    A Python number becomes a float (an int would become an integer hyper-parameter, which a
    later ``set_hyperparams(name=0.5)`` would truncate). A floating array of shape ``()`` is
    kept as is unless `static` (optax takes it as a hashable constant: then a float); a traced
    one is checked for its shape and dtype only.

    Raises:
      TypeError: for None, a string, a bool, an integer or bool array or another type.
      ValueError: for an array of another shape, or a value out of range or not finite.

    Example:
      >>> number("pax.optim.adam", "b1", 0.9, low=0, high=1, example="0.9", static=True)
      0.9
    """
    must = f"{owner}: {name} must be {_bounds(low, high, high_inclusive, low_inclusive)}"
    fix = f"Fix: {name}={example}"
    if isinstance(value, str):
        raise TypeError(f"{must}, got {_got(value)}{_string_fix(name, value) or '. ' + fix}.")
    if isinstance(value, (bool, np.bool_)) or value is None:
        raise TypeError(f"{must}, got {_got(value)}. {fix}.")
    if isinstance(value, (int, float)):
        scalar: Any = float(value)
    elif is_array_like(value):
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(
                f"{must} (a float or a floating-point scalar), got {_got(value)}. Fix: "
                f"{name}=float(value), e.g. {name}={example}."
            )
        if np.shape(value) != ():
            raise ValueError(
                f"{must}: one scalar for every parameter, got {_got(value)}. {fix} (a "
                f"different value per parameter: optax.multi_transform with "
                f"pax.optim.by_key_path labels)."
            )
        if isinstance(value, Tracer):
            if static:
                raise TypeError(
                    f"{owner}: {name} is a constant of the optimizer (optax takes it as static "
                    f"data) and cannot be a traced value, got {_got(value)}. Fix: build the "
                    f"optimizer outside jax.jit, or pass a Python float: {name}={example}."
                )
            return value
        scalar = float(value)
    else:
        raise TypeError(f"{must}, got {_got(value)}. {fix}.")
    in_range = math.isfinite(scalar) and (scalar >= low if low_inclusive else scalar > low)
    if high is not None:
        in_range = in_range and (scalar <= high if high_inclusive else scalar < high)
    if not in_range:
        raise ValueError(f"{must}, got {value!r}. {fix}.")
    return scalar if static or isinstance(value, (int, float)) else value


def learning_rate(owner: str, value: Any) -> Any:
    """The learning rate: a number > 0 (see `number`), or an optax schedule of the step count.

    A schedule is called once with step 0 and must return a scalar number (it may be 0, as a
    warm-up starts).

    Example:
      >>> learning_rate("pax.optim.sgd", 1)
      1.0
    """
    if callable(value) and not isinstance(value, type):
        try:
            first = value(jnp.zeros((), jnp.int32))
        except Exception as error:
            raise TypeError(
                f"{owner}: learning_rate is a function, so it is taken for an optax schedule "
                f"of the step count, but calling it with step 0 failed ({type(error).__name__}: "
                f"{error}). Fix: learning_rate=optax.linear_schedule(0.0, 1e-3, 1000), or a "
                f"number: learning_rate=1e-3."
            ) from error
        ok = isinstance(first, (int, float)) and not isinstance(first, bool)
        ok = ok or (
            is_array_like(first)
            and np.shape(first) == ()
            and jnp.issubdtype(first.dtype, jnp.number)
        )
        if not ok:
            raise TypeError(
                f"{owner}: the learning_rate schedule must return a scalar number for a step "
                f"count, but returned {_got(first)} for step 0. Fix: "
                f"learning_rate=optax.linear_schedule(0.0, 1e-3, 1000)."
            )
        return value
    return number(
        owner, "learning_rate", value, low=0, low_inclusive=False, example="1e-3", static=False
    )


def momentum(owner: str, value: Any) -> float | None:
    """SGD's momentum: None or 0 (none), or a number in [0, 1].

    Example:
      >>> momentum("pax.optim.sgd", 0) is None
      True
    """
    if value is None:
        return None
    value = number(
        owner, "momentum", value, low=0, high=1, high_inclusive=True, example="0.9", static=True
    )
    return value or None


def boolean(owner: str, name: str, value: Any) -> bool:
    """A flag such as ``nesterov``: `True` or `False` only (``"no"`` would be true).

    Example:
      >>> boolean("pax.optim.adam", "nesterov", False)
      False
    """
    return arguments.boolean(owner, name, value)


def parameters(owner: str, params: Any, learning_rate: Any) -> None:
    """Raises unless `params` is a module (``model.parameters()``), naming swapped arguments.

    Example:
      >>> parameters("pax.optim.adam", 1e-3, None)
      Traceback (most recent call last):
      TypeError: pax.optim.adam: params must be model.parameters() (a pax.Module), got 0.001. ...
    """
    if isinstance(params, Module):
        return
    swapped = isinstance(learning_rate, Module)
    hint = " (the arguments are swapped: the parameters come first)" if swapped else ""
    raise TypeError(
        f"{owner}: params must be model.parameters() (a pax.Module), got {_got(params)}"
        f"{hint}. Fix: opt = {owner}(model.parameters(), 1e-3)."
    )


# --- from_optax: values set later, functions taken for schedules ---------------------------------

_SCHEDULE_HINT = (
    "OptaxOptimizer: transform.init failed in a function given to optax.inject_hyperparams, "
    "which was called with the step count ({error}): inject_hyperparams takes every function "
    "argument for a schedule of the step count. If it is a mask or a label function, name it "
    "static. Fix: optax.inject_hyperparams(optax.adamw, static_args=('mask',))("
    "learning_rate=1e-3, mask=pax.optim.by_key_path(lambda path: not path.endswith('.bias')))."
)


def called_as_schedule(error: BaseException) -> str | None:
    """The message naming ``static_args`` when `error` was raised in a function that
    ``optax.inject_hyperparams`` called as a schedule (a mask or label function), else None.

    `pax.optim.by_key_path` names the fix itself; its error is kept as is.

    Example:
      >>> called_as_schedule(ValueError("unrelated")) is None
      True
    """
    if "was called with the step count" in str(error):
        return None
    tb = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        # optax's schedule wrapper (optax/schedules/_inject.py) calls the function
        in_inject = code.co_filename.endswith("_inject.py") and "optax" in code.co_filename
        if in_inject and code.co_name == "__call__" and tb.tb_next is not None:
            summary = f"{type(error).__name__}: {str(error)[:200]}"
            return _SCHEDULE_HINT.format(error=summary)
        tb = tb.tb_next
    return None


def check_assigned(owner: str, name: str, value: Any, old: Any) -> None:
    """Raises for a value ``set_hyperparams`` would misread without a word: None, a string
    (parsed), a bool (1.0), a fraction cast into an integer hyper-parameter (truncated).

    Example:
      >>> check_assigned("OptaxOptimizer", "learning_rate", 1e-4, jnp.float32(1e-3))
    """
    if value is None or isinstance(value, (str, bool, np.bool_)):
        spelled = f"float({value!r})" if isinstance(value, str) else "1e-3"
        raise TypeError(
            f"{owner}.set_hyperparams: {name} must be a number, got {value!r} "
            f"({type(value).__name__}). Fix: opt.set_hyperparams({name}={spelled})."
        )
    dtype = getattr(value, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.number):
        raise TypeError(
            f"{owner}.set_hyperparams: {name} must be a number, got {describe(value)}. Fix: "
            f"opt.set_hyperparams({name}=1e-3)."
        )
    if jnp.issubdtype(old.dtype, jnp.integer) and not isinstance(value, Tracer):
        if not np.all(np.asarray(value) == np.round(np.asarray(value))):
            raise TypeError(
                f"{owner}.set_hyperparams: {name} is an integer hyper-parameter "
                f"({describe(old)}, because the optimizer was built with an int), so {value!r} "
                f"would be truncated. Fix: build the optimizer with a float, e.g. "
                f"optax.inject_hyperparams(optax.sgd)({name}=1.0)."
            )
