"""Initialization from example inputs: the one mechanism behind `lazy_init` and `hk_init`.

Some modules create their parameters from the shape of a first input: the native layers built
with ``in_dim=None`` (``pax.nn.Linear(None, 10)``) and the Haiku wrappers of `pax.from_haiku`.
The core knows them only through a `LazyKind`: how to recognize one, initialize it in place from
its call arguments, and finish the returned copy. Native layers (`pax/_src/nn/_lazy.py`) follow
the protocol of `NATIVE`: ``_lazy_pending()``, ``_lazy_initialize(args, kwargs)`` (reads only the
shapes of the arguments, so it runs on traced arguments in the forward pass and again on the
recorded shapes for the returned copy) and ``_lazy_describe()``; they call `first_call` when
called uninitialized. An integration with a class of its own (pax.haiku) registers its own kind
with `register_kind`.

`initialize` calls a throwaway copy of the model on the example inputs. While it runs, an
uninitialized lazy module that is called hands its arguments to a hook (`first_call`), which
initializes it in place (so the forward pass can go on) and records what it needs. The returned
model is a fresh copy where each reached module is finished from that record. The forward pass
runs in one of three modes: ``"abstract"`` (under `jax.eval_shape`: nothing is computed, only
the shapes are recorded, then each module is initialized concretely; the default of
``lazy_init``), ``"jit"`` (under `jax.jit`) and ``"eager"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from pax._src.core import tracing
from pax._src.core._jax_compat import current_trace, trace_state_clean
from pax._src.core.rng import resolve_rng_key

T = TypeVar("T")

# The recorded call arguments of a module: ``(args, kwargs)``, arrays as `jax.ShapeDtypeStruct`.
Specs = tuple[tuple, dict]
FirstCallHook = Callable[[Any, tuple, dict], None]


@dataclasses.dataclass(frozen=True)
class LazyKind:
    """One family of modules initialized from a first input.

    Attributes:
      cls: the base class of the family (an ``isinstance`` test finds its modules).
      pending: ``pending(module) -> bool``: the module is not initialized yet.
      initialize: ``initialize(module, key, args, kwargs) -> record``: initializes the module in
        place from its call arguments (maybe traced); the record is a pytree of arrays.
      finish: ``finish(module, key, record, specs)``: initializes the module of the returned
        model; `record` is None in abstract mode, `specs` are the call arguments with
        `jax.ShapeDtypeStruct` in place of arrays.
      on_first_call: ``on_first_call(hook)``: a context manager within which an uninitialized
        module of the family calls ``hook(module, args, kwargs)`` instead of raising.
      describe: ``describe(module) -> str`` for messages, e.g. ``hk.Linear(output_size=3)``.
    """

    cls: type
    pending: Callable[[Any], bool]
    initialize: Callable[[Any, jax.Array, tuple, dict], Any]
    finish: Callable[[Any, jax.Array, Any, Specs], None]
    on_first_call: Callable[[FirstCallHook], Any]
    describe: Callable[[Any], str]


# --- the native protocol ---------------------------------------------------------------------

_LOCAL = threading.local()

_NOT_INITIALIZED = (
    "{module} is not initialized: its input size was left as None, so its parameters are "
    "created from a first input. Fix: initialize the model once, right after building it, with "
    "example inputs: model = model.lazy_init(example_input) (this initializes every lazy layer "
    "and every pax.from_haiku module in the model), or give the input size to the constructor."
)


@contextlib.contextmanager
def _native_first_call(hook: FirstCallHook) -> Iterator[None]:
    previous = getattr(_LOCAL, "hook", None)
    _LOCAL.hook = hook
    try:
        yield
    finally:
        _LOCAL.hook = previous


def first_call(module: Any, args: tuple, kwargs: dict) -> None:
    """Called by an uninitialized native lazy module: initializes it within `initialize`.

    Raises:
      RuntimeError: outside `initialize` (names the module and the fix).

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.nn.Linear(None, 2)(jnp.ones((1, 3)))
      Traceback (most recent call last):
      ...
      RuntimeError: Linear(in_dim=None, out_dim=2) is not initialized: ...
    """
    hook = getattr(_LOCAL, "hook", None)
    if hook is None:
        raise RuntimeError(_NOT_INITIALIZED.format(module=_describe(module)))
    hook(module, args, kwargs)


def _describe(module: Any) -> str:
    describe = getattr(module, "_lazy_describe", None)
    return describe() if callable(describe) else type(module).__name__


def _is_native(module: Any) -> bool:
    return callable(getattr(module, "_lazy_initialize", None))


NATIVE = LazyKind(
    cls=object,
    pending=lambda m: _is_native(m) and m._lazy_pending(),
    initialize=lambda m, key, args, kwargs: m._lazy_initialize(args, kwargs),
    finish=lambda m, key, record, specs: m._lazy_initialize(*specs),
    on_first_call=_native_first_call,
    describe=_describe,
)

_kinds: list[LazyKind] = [NATIVE]


def register_kind(kind: LazyKind) -> None:
    """Adds a family of lazy modules (pax.haiku registers the `pax.from_haiku` modules).

    Example:
      >>> import pax._src.haiku  # registers the Haiku kind
      >>> len(kinds()) >= 2
      True
    """
    if kind not in _kinds:
        _kinds.append(kind)


def kinds() -> tuple[LazyKind, ...]:
    """The registered families, the native protocol first."""
    return tuple(_kinds)


def _kind_of(x: Any) -> LazyKind | None:
    for kind in _kinds[1:]:
        if isinstance(x, kind.cls):
            return kind
    return NATIVE if _is_native(x) else None


def lazy_modules_with_path(model: Any) -> list[tuple[str, Any, LazyKind]]:
    """Every lazy module of `model` (flatten order) with its key path and kind."""
    pairs = jax.tree_util.tree_flatten_with_path(model, is_leaf=lambda x: _kind_of(x) is not None)
    out = []
    for path, leaf in pairs[0]:
        kind = _kind_of(leaf)
        if kind is not None:
            out.append((jax.tree_util.keystr(path), leaf, kind))
    return out


def pending_paths(model: Any) -> list[str]:
    """Key paths of the lazy modules of `model` that are not initialized yet."""
    pairs = lazy_modules_with_path(model)
    return [path or "<the model>" for path, m, kind in pairs if kind.pending(m)]


# --- the forward pass on example inputs -------------------------------------------------------

_STRAY_MODULE = (
    "{who}: the forward pass called {module}, which is not part of the model passed to {who} "
    "(the forward pass built it, or copied it, e.g. through jax.lax.scan or "
    "pax.dynamic_unroll), so its parameters could not be kept. Fix: store the module as an "
    "attribute of the model, and initialize a cell that is unrolled by a scan before "
    "unrolling it: cell = cell.{who}(x[0], cell.initial_state(batch_size)), or build it with "
    "its input size (e.g. pax.nn.LSTM(in_dim, hidden_dim) or pax.haiku.lstm(hidden_dim, "
    "in_dim=in_dim)), which needs no example input."
)

_IN_TRANSFORMATION = (
    "{who}: called inside a JAX transformation (jax.jit, jax.grad, jax.vmap, jax.eval_shape, "
    "jax.lax.scan, ...) on a model with uninitialized lazy modules (at {paths}). "
    "Initialization draws their keys from the global key sequence (pax.next_rng_key()), which "
    "cannot be read while tracing, and parameters created inside a transformation are thrown "
    "away unless returned from it. Fix: initialize once, eagerly, right after building the "
    "model and before any transformation: model = model.{who}(example_input), then "
    "jax.jit(step)(model, x) (jax.eval_shape does not help: it traces too)."
)

# What makes an abstract forward pass impossible: the model reads input values in Python.
_NEEDS_VALUES = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


def _spec(x: Any) -> Any:
    if isinstance(x, jax.Array) or (hasattr(x, "__array__") and hasattr(x, "dtype")):
        return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
    return x


def materialize(specs: Any) -> Any:
    """`specs` with zeros in place of each `jax.ShapeDtypeStruct` (for ``finish``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> materialize((jax.ShapeDtypeStruct((2,), jnp.float32), 3))[0].tolist()
      [0.0, 0.0]
    """
    return jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s,
        specs,
    )


def _forward(
    model: Any, key: jax.Array, args: tuple, kwargs: dict, who: str, specs: dict[int, Specs]
) -> dict[int, Any]:
    """Calls a copy of `model`, initializing its lazy modules on their first call.

    Returns ``{index: record}`` and fills `specs` (``{index: (args, kwargs)}``), indexed by the
    position of each module among the lazy modules of the model.
    """
    model = model.copy()
    pairs = lazy_modules_with_path(model)
    index_of = {id(m): i for i, (_, m, kind) in enumerate(pairs) if kind.pending(m)}
    records: dict[int, Any] = {}
    outer = current_trace()  # a first call inside a transformation of the forward pass (a
    # dynamic_unroll's scan) makes values of that inner trace: they must not be returned

    def hook(module: Any, call_args: tuple, call_kwargs: dict) -> None:
        index = index_of.get(id(module))
        kind = _kind_of(module)
        if index is None or kind is None:
            what = kind.describe(module) if kind is not None else type(module).__name__
            raise RuntimeError(_STRAY_MODULE.format(who=who, module=what))
        specs[index] = jax.tree_util.tree_map(_spec, (call_args, call_kwargs))
        record = kind.initialize(module, jax.random.fold_in(key, index), call_args, call_kwargs)
        records[index] = record if current_trace() == outer else None  # None: from the specs

    with contextlib.ExitStack() as stack:
        stack.enter_context(tracing.discarding())  # the copy of the model is thrown away
        for kind in _kinds:
            stack.enter_context(kind.on_first_call(hook))
        model(*args, **kwargs)
    return records


def _eval_shape(fn: Callable) -> Callable:
    return lambda *args: jax.eval_shape(fn, *args)


def _traced(
    transform: Callable,
    model: Any,
    key: jax.Array,
    args: tuple,
    kwargs: dict,
    who: str,
    specs: dict[int, Specs],
) -> Any:
    """`_forward` under `jax.jit` or `jax.eval_shape`; array inputs are traced, others static."""
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    dynamic = [i for i, leaf in enumerate(leaves) if _spec(leaf) is not leaf]

    def run(model: Any, key: jax.Array, values: list) -> dict[int, Any]:
        full = list(leaves)
        for i, value in zip(dynamic, values):
            full[i] = value
        call_args, call_kwargs = jax.tree_util.tree_unflatten(treedef, full)
        return _forward(model, key, call_args, call_kwargs, who, specs)

    return transform(run)(model, key, [leaves[i] for i in dynamic])


def initialize(
    model: T,
    args: tuple,
    kwargs: dict,
    *,
    mode: str = "abstract",
    who: str = "lazy_init",
    rng_key: jax.Array | None = None,
) -> T:
    """Returns a copy of `model` whose lazy modules are initialized from example inputs.

    Args:
      model: the model (a `pax.Module`); it is never changed.
      args: example positional inputs of ``model(...)``.
      mode: ``"abstract"`` (forward pass under `jax.eval_shape`, falling back to ``"eager"``
        when the model reads input values in Python), ``"jit"`` or ``"eager"``.
      who: the name of the calling method, for messages.
      rng_key: base key of the modules that take their key now (pax.from_haiku modules:
        folded with their position among the lazy modules); native layers use the key they
        drew when they were built, so they get the weights of the eagerly-sized layer.
      kwargs: example keyword inputs.

    Raises:
      ValueError: if the forward pass did not reach some uninitialized lazy modules.
      RuntimeError: if it called a lazy module that is not in the model tree, or if called
        inside a JAX transformation without `rng_key` while some module is uninitialized
        (initialize eagerly, before ``jax.jit``).

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = initialize(pax.nn.Linear(None, 2), (jnp.ones((1, 3)),), {})
      >>> net.weight.shape
      (3, 2)
    """
    if mode not in ("abstract", "jit", "eager"):
        raise ValueError(f"{who}: mode must be 'abstract', 'jit' or 'eager', got {mode!r}.")
    pending = pending_paths(model)
    if not pending:
        return model.copy()  # type: ignore[attr-defined]
    if rng_key is None and not trace_state_clean():
        raise RuntimeError(_IN_TRANSFORMATION.format(who=who, paths=", ".join(pending[:5])))
    base_key = resolve_rng_key(rng_key)
    specs: dict[int, Specs] = {}
    records: dict[int, Any] = {}
    if mode == "abstract":
        try:
            _traced(_eval_shape, model, base_key, args, kwargs, who, specs)
        except _NEEDS_VALUES:
            specs.clear()
            records = _forward(model, base_key, args, kwargs, who, specs)
    elif mode == "jit":
        records = _traced(jax.jit, model, base_key, args, kwargs, who, specs)
    else:
        records = _forward(model, base_key, args, kwargs, who, specs)
    return _finish(model, base_key, records, specs, who)


def _finish(
    model: T, key: jax.Array, records: dict[int, Any], specs: dict[int, Specs], who: str
) -> T:
    result = model.copy()  # type: ignore[attr-defined]
    unreached = []
    for index, (path, target, kind) in enumerate(lazy_modules_with_path(result)):
        if index in specs:
            kind.finish(target, jax.random.fold_in(key, index), records.get(index), specs[index])
        elif kind.pending(target):
            unreached.append(f"{path or '<the model>'} ({kind.describe(target)})")
    if unreached:
        raise ValueError(
            f"{who}: the forward pass on the example inputs did not call {len(unreached)} "
            f"pax.from_haiku module(s) or lazy layer(s), so they are still uninitialized: "
            f"{', '.join(unreached)}. Fix: make sure the example call reaches every module "
            f"(e.g. pass the arguments that enable every branch), or initialize such a module "
            f"on its own: model.part = model.part.{who}(example_input)."
        )
    return result


M = TypeVar("M")


def hk_init(self: M, *args: Any, enable_jit: bool = False, **kwargs: Any) -> M:
    """Initializes every `pax.from_haiku` submodule by calling the model on dummy inputs.

    Returns a new, initialized model; see `pax.from_haiku` and `pax.haiku.hk_init`. A
    model without such modules is returned copied.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = pax.nn.Linear(2, 3)
      >>> net.hk_init(jnp.ones((1, 2))) is net
      False
    """
    rng_key = kwargs.pop("rng_key", None)
    mode = "jit" if enable_jit else "eager"
    return initialize(self, args, kwargs, mode=mode, who="hk_init", rng_key=rng_key)


def lazy_init(self: M, *args: Any, rng_key: jax.Array | None = None, **kwargs: Any) -> M:
    """Initializes every lazy layer (input size None) and `pax.from_haiku` module at once.

    Runs the forward pass on the example inputs abstractly (`jax.eval_shape`: nothing is
    computed), then creates each lazy module's parameters from the shapes it received.
    Returns a new model and leaves this one unchanged. A native layer uses the key it drew
    when built, so it gets the same weights as the layer built with its input size; the
    `pax.from_haiku` modules draw theirs from `rng_key` (default `pax.next_rng_key()`).
    Raises `ValueError` if the forward pass did not reach some uninitialized lazy module, and
    `RuntimeError` if called inside a JAX transformation (``jax.jit``, ``jax.grad``,
    ``jax.vmap``, ``jax.eval_shape``...) while some module is uninitialized: initialize once,
    eagerly, before the transformation.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = pax.nn.Linear(None, 3).lazy_init(jnp.ones((1, 2)))
      >>> net.weight.shape
      (2, 3)
    """
    return initialize(self, args, kwargs, mode="abstract", rng_key=rng_key)
