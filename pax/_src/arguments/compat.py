"""Every compatibility rule of pax in one place: deprecated spellings and Pax v0.2 forms.

- Renamed keywords and attributes keep working for one release: `renamed_kwargs` (keywords of a
  function or ``__init__``) and `RenamedAttribute` (stored attributes) warn with a
  `DeprecationWarning` naming the new spelling (`warn_deprecated`), at the user's call.
- The layout strings accepted before the one vocabulary (``"NHWC"``, ``"NCW"``, ...):
  `legacy_data_format` gives their ``data_format`` value, with the warning.
- The Pax v0.2 argument forms whose meaning differs from today's: `channel_axis_format`
  (``batch_norm_2d(num_channels, axis)``) and `hidden_dim_first` (``lstm(hidden_dim)``).

The layers only declare what they accept (``@renamed_kwargs(strides="stride")``); the logic is
here. This is a base module: it imports nothing of pax.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

CHANNELS_LAST = "channels_last"
CHANNELS_FIRST = "channels_first"

# --- renamed keywords and attributes ------------------------------------------------------------


def _caller_stacklevel() -> int:
    """The `stacklevel` of the first frame outside pax (the user's call)."""
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "pax":
        level, frame = level + 1, frame.f_back
    return level


def warn_deprecated(owner: str, old: str, new: str) -> None:
    """Emits ``<owner>: `old` is deprecated, use `new`.`` at the user's call.

    `owner` is the public name of the layer or function, e.g. ``"pax.nn.Conv2D"``.
    """
    warnings.warn(
        f"{owner}: `{old}` is deprecated, use `{new}`. The old spelling will be removed "
        "in pax 0.3 at the earliest (see the compatibility policy).",
        DeprecationWarning,
        stacklevel=_caller_stacklevel(),
    )


def renamed_kwargs(namespace: str, /, **renamed: str) -> Callable[[F], F]:
    """Decorator accepting the old keyword names ``old="new"`` of a function or ``__init__``.

    An old keyword is passed on under its new name with a `DeprecationWarning` naming
    ``<namespace>.<function or class>``; the old and the new name together raise a `TypeError`.
    The signature (``inspect.signature``, IDEs) shows the new names only.

    Raises:
      TypeError: at decoration when a new name is not a parameter or an old one still is.

    Example:
      >>> @renamed_kwargs("pax.nn", strides="stride")
      ... def pool(x, stride=1):
      ...     return x * stride
      >>> pool(2, stride=3)
      6
    """

    def decorate(fn: F) -> F:
        params = inspect.signature(fn).parameters
        positions = {}
        for old, new in renamed.items():
            if new not in params or old in params:
                raise TypeError(
                    f"renamed_kwargs: {fn.__qualname__} must have the parameter {new!r} and not "
                    f"{old!r}."
                )
            if params[new].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
                positions[new] = list(params).index(new)
        is_init = fn.__name__ == "__init__"

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not renamed.keys().isdisjoint(kwargs):
                owner = f"{namespace}.{type(args[0]).__name__ if is_init else fn.__name__}"
                for old, new in renamed.items():
                    if old not in kwargs:
                        continue
                    if new in kwargs or len(args) > positions.get(new, len(args)):
                        raise TypeError(
                            f"{owner}: got both `{old}` (deprecated) and `{new}`; pass only "
                            f"`{new}`."
                        )
                    warn_deprecated(owner, old, new)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


class RenamedAttribute:
    """A read-only class attribute ``old = RenamedAttribute(namespace, "new")`` forwarding to
    ``new``.

    Reading it on an instance warns (`DeprecationWarning`, naming
    ``<namespace>.<class>``) and returns the new attribute.
    """

    def __init__(self, namespace: str, new: str) -> None:
        self.namespace = namespace
        self.new = new
        self.old = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        warn_deprecated(f"{self.namespace}.{type(obj).__name__}", self.old, self.new)
        return getattr(obj, self.new)


# --- legacy layout strings ----------------------------------------------------------------------

# The layout strings accepted before the one vocabulary: spelling -> (new value, spatial axes).
_LEGACY_FORMATS: dict[Any, tuple[str, int | None]] = {
    None: (CHANNELS_LAST, None),
    "NC": (CHANNELS_FIRST, 0),
    "NWC": (CHANNELS_LAST, 1),
    "NCW": (CHANNELS_FIRST, 1),
    "NHWC": (CHANNELS_LAST, 2),
    "NCHW": (CHANNELS_FIRST, 2),
    "NDHWC": (CHANNELS_LAST, 3),
    "NCDHW": (CHANNELS_FIRST, 3),
}


def legacy_spatial_axes(value: Any) -> int | None:
    """The number of spatial axes an old layout string such as ``"NWC"`` names, else None."""
    legacy = _LEGACY_FORMATS.get(value) if isinstance(value, str) else None
    return None if legacy is None else legacy[1]


def legacy_data_format(owner: str, value: Any, num_spatial: int | None, also: str = "") -> Any:
    """The ``data_format`` an old layout string (or None) stands for, with a `DeprecationWarning`
    from `owner` naming the new value (and `also`, any other argument the new spelling needs);
    None when `value` is no old spelling (of `num_spatial` spatial axes, when known).

    Example:
      >>> legacy_data_format("pax.nn.Conv2D", "channels_last", 2) is None
      True
    """
    legacy = _LEGACY_FORMATS.get(value) if value is None or isinstance(value, str) else None
    if legacy is None or (legacy[1] is not None and num_spatial not in (None, legacy[1])):
        return None
    warn_deprecated(owner, f"data_format={value!r}", f"data_format={legacy[0]!r}{also}")
    return legacy[0]


def unknown_data_format(cls: str, value: Any, num_spatial: int | None) -> ValueError:
    """The error for a `data_format` that is neither of the two values nor an old spelling."""
    axes = "axis" if num_spatial == 1 else "axes"
    spatial = "" if num_spatial is None else f" for {num_spatial} spatial {axes}"
    return ValueError(
        f"{cls}: unknown data_format {value!r}{spatial}; use 'channels_last' (channels on the "
        "last axis, the default) or 'channels_first' (channels on axis 1, after the batch axis)."
    )


def parse_data_format(
    cls: str, value: Any, num_spatial: int | None, owner: str, also: str = ""
) -> str:
    """``"channels_last"`` or ``"channels_first"`` from `value` or its old spelling (warning as
    `owner`); raises `unknown_data_format` for anything else (`pax._src.arguments.data_format`).
    """
    if isinstance(value, str) and value in (CHANNELS_LAST, CHANNELS_FIRST):
        return value
    legacy = legacy_data_format(owner, value, num_spatial, also)
    if legacy is None:
        raise unknown_data_format(cls, value, num_spatial)
    return legacy


# --- Pax v0.2 argument forms --------------------------------------------------------------------

_CHANNEL_AXES = {-1: CHANNELS_LAST, 3: CHANNELS_LAST, 1: CHANNELS_FIRST, -3: CHANNELS_FIRST}


def channel_axis_format(fn: str, axis: Any, data_format: Any) -> str:
    """The `data_format` of a 4-D normalization from its channel `axis` (Pax v0.2's argument).

    Each of `axis` (-1) and `data_format` (``"channels_last"``) at its default leaves the choice
    to the other; two choices must agree.

    Example:
      >>> channel_axis_format("pax.haiku.batch_norm_2d", 1, "channels_last")
      'channels_first'
    """
    if isinstance(axis, bool) or not isinstance(axis, int) or axis not in _CHANNEL_AXES:
        raise ValueError(
            f"{fn}: axis must be the channel axis of a 4-D input, -1 for (N, H, W, C) or 1 for "
            f"(N, C, H, W), got {axis!r}. As in Pax v0.2, the arguments after the channel count "
            f"are (axis, decay, cross_replica_axis); the others are keyword-only. Fix: "
            f"{fn}(in_dim, -1, 0.99) or {fn}(in_dim, create_scale=..., create_offset=...)."
        )
    from_axis = _CHANNEL_AXES[axis]
    parsed = parse_data_format(fn, data_format, 2, fn)
    if axis == -1 or data_format == CHANNELS_LAST:  # the defaults: the other one decides
        return parsed if axis == -1 else from_axis
    if parsed != from_axis:
        raise ValueError(
            f"{fn}: axis={axis} ({from_axis}) and data_format={data_format!r} disagree. Fix: "
            f"give one of them, e.g. {fn}(in_dim, data_format={parsed!r})."
        )
    return parsed


def hidden_dim_first(fn: str) -> Callable[[F], F]:
    """Refuses ``fn(in_dim, hidden_dim)`` (the form before Pax v0.2's was restored).

    The recurrent cores take Pax v0.2's ``fn(hidden_dim)`` with the input size keyword-only,
    ``in_dim=`` (default: `hidden_dim`); two positional sizes would otherwise fail with Python's
    bare arity error.
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) > 1:
                shown = ", ".join(repr(a) for a in args)
                raise TypeError(
                    f"{fn}({shown}): {fn} takes one positional argument, hidden_dim (Pax v0.2's "
                    f"form); the input size is keyword-only and defaults to hidden_dim. Fix: "
                    f"{fn}({args[1]!r}, in_dim={args[0]!r}) for in_dim={args[0]!r}, "
                    f"hidden_dim={args[1]!r}."
                )
            return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


# --- Pax v0.2 optimizer positionals -------------------------------------------------------------


def v02_positionals(fn: str, extra: tuple[Any, ...], v02_names: tuple[str, ...], fix: str) -> None:
    """Refuses positional arguments where Pax v0.2 had others (``adamw(params, lr, wd)``).

    Today's signature takes them by keyword only, so a v0.2 call cannot silently set another
    argument (``adamw``'s third positional would be ``b1``).

    Raises:
      TypeError: naming the v0.2 meaning and the keyword spelling (`fix`).

    Example:
      >>> v02_positionals("f", (), ("weight_decay",), "f(x, weight_decay=0.1)")  # none given
    """
    if extra:
        meant = ", ".join(f"{n}={v!r}" for n, v in zip(v02_names, extra))
        given = ", ".join(map(repr, extra))
        raise TypeError(
            f"{fn}: got {len(extra)} positional argument(s) too many ({given})"
            f"; Pax v0.2 read them as {meant or 'nothing'}, and today they are keyword-only. "
            f"Fix: {fix}."
        )


# --- Pax v0.2's module methods ----------------------------------------------------------------


def train_mode(owner: str, mode: object) -> bool:
    """``module.train(mode)``: a bool (``train(False)`` is PyTorch's and Pax v0.2's `eval()`)."""
    if not isinstance(mode, bool):
        raise TypeError(
            f"{owner}.train: mode must be True or False, got {mode!r}. Fix: model.train() or "
            f"model.eval()."
        )
    return mode


def refuse_in_place(owner: str, in_place: object) -> None:
    """Pax v0.2's ``update(..., in_place=True)``: modules are updated functionally now."""
    if in_place is not False:
        raise TypeError(
            f"{owner}.update: in_place= (Pax v0.2) is gone: update returns a new module and "
            f"leaves this one alone. Fix: model = model.update(params)."
        )


class PaxV02Methods:
    """Module methods of Pax v0.2 that were renamed: each says the new spelling.

    Example:
      >>> import pax
      >>> pax.nn.Linear(2, 2).filter("trainable")
      Traceback (most recent call last):
      ...
      AttributeError: Linear.filter (Pax v0.2) is gone. Fix: model.parameters() keeps ...
    """

    __slots__ = ()

    def sub_modules(self) -> list:
        """Pax v0.2's `submodules()` (deprecated spelling; it warns)."""
        warn_deprecated(f"{type(self).__name__}.sub_modules", "sub_modules()", "submodules()")
        return self.submodules()  # type: ignore[attr-defined]

    def filter(self, *args: object, **kwargs: object) -> object:
        """Pax v0.2's ``filter(keep)``: refused, naming the views that replace it."""
        raise AttributeError(
            f"{type(self).__name__}.filter (Pax v0.2) is gone. Fix: model.parameters() keeps "
            f"the trainable leaves, model.states() the others; to pick leaves by key path, "
            f"model.parameters(where=r'\\.bias$')."
        )
