"""`Module.mixed_precision`: run a module's calls under a `jmp.Policy`.

``module.mixed_precision(policy)`` returns a copy whose class is a subclass of the module's
class named ``MixedPrecision<Name>`` (made once per class, so treedefs stay equal across
calls). Its ``__call__``:

1. copies the module tree with every parameter (trainable or frozen) cast to
   ``policy.compute_dtype``, except inside submodules that have their own policy (they cast
   their own parameters when called, from the stored dtype, as Haiku's per-class policies do);
2. casts the floating-point inputs to the compute dtype and calls the original ``__call__`` on
   the copy; states written meanwhile are cast back to the dtype they were registered with
   (BatchNorm statistics stay float32, counters int32), so the treedef never changes;
3. writes every change except the cast parameters back to the module, and casts the output
   to ``policy.output_dtype``.

The stored parameters keep their dtype (``policy.param_dtype`` after `mixed_precision` casts
them once), so gradients come back in it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import jmp

from pax._src.core import lazy, registry, tracing
from pax._src.core.registry import Kind, is_module
from pax._src.core.validate import casting_states
from pax._src.core.views import rebuild

T = TypeVar("T")

POLICY_ATTR = "mixed_precision_policy"
_PARAMETER_KINDS = frozenset(
    {
        Kind.PARAMETER,
        Kind.PARAMETER_SUBTREE,
        Kind.FROZEN_PARAMETER,
        Kind.FROZEN_PARAMETER_SUBTREE,
    }
)
_CLASSES: dict[type, type] = {}  # {class: its MixedPrecision subclass}, made once each
_MISSING = object()


def as_policy(policy: Any, who: str) -> jmp.Policy:
    """`policy` as a `jmp.Policy` (a string such as ``"params=float32,compute=bfloat16"`` is
    parsed by `jmp.get_policy`)."""
    if isinstance(policy, str):
        try:
            return jmp.get_policy(policy)
        except ValueError as err:
            raise ValueError(
                f"{who}: cannot read the policy {policy!r} ({err}). Fix: e.g. "
                f"'params=float32,compute=bfloat16,output=float32', or pass a jmp.Policy."
            ) from None
    if not isinstance(policy, jmp.Policy):
        raise TypeError(
            f"{who}: expected a jmp.Policy, got {policy!r} of type {type(policy).__name__}. "
            f"Fix: jmp.Policy(param_dtype=jnp.float32, compute_dtype=jnp.bfloat16, "
            f"output_dtype=jnp.float32), or jmp.get_policy('params=float32,compute=bfloat16')."
        )
    return policy


def is_mixed_precision(module: Any) -> bool:
    """True if `module` was made by `Module.mixed_precision` (or `apply_policy`).

    Example:
      >>> import jmp, pax
      >>> fc = pax.nn.Linear(2, 2)
      >>> pax.mixed_precision.is_mixed_precision(fc.mixed_precision(jmp.get_policy("c=bf16")))
      True
    """
    return _is_mixed_class(type(module))


def _is_mixed_class(cls: type) -> bool:
    return len(cls.__mro__) > 1 and _CLASSES.get(cls.__mro__[1]) is cls


def _cast_leaf(dtype: Any) -> Any:
    def cast(x: Any) -> Any:
        if x is None or not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dtype:
            return x
        return jnp.asarray(x, dtype)

    return cast


def _cast_parameters(dtype: Any) -> Any:
    cast = _cast_leaf(dtype)

    def visit(d: dict, layout: Any, path: str) -> None:
        for name, kind in zip(layout.children, layout.kinds):
            if kind in _PARAMETER_KINDS:
                d[name] = jax.tree_util.tree_map(cast, d[name])

    return visit


def _base_class(cls: type) -> type:
    return cls.__mro__[1] if _is_mixed_class(cls) else cls


def _mixed_call(self: Any, *args: Any, **kwargs: Any) -> Any:
    policy: jmp.Policy = self.__dict__[POLICY_ATTR]
    base = _base_class(type(self))
    compute = rebuild(self, _cast_parameters(policy.compute_dtype), stop=is_mixed_precision)
    args, kwargs = policy.cast_to_compute((args, kwargs))
    with casting_states():
        out = base.__call__(compute, *args, **kwargs)
    _write_back(self, compute)
    return policy.cast_to_output(out)


def _write_back(target: Any, source: Any) -> None:
    """Copies every change `source` (the computing copy) holds back to `target`, except the
    parameters, which keep their stored dtype."""
    if source is target:  # a submodule with its own policy was called in place
        return
    tracing.flattened_in_trace(source)  # its changes live on in `target`: not lost
    d = source.__dict__
    layout = registry.layout_in(d)
    kind_of = layout.kind_of
    old = target.__dict__
    for name, value in d.items():
        if registry.is_private(name):
            continue
        kind = kind_of.get(name)
        if kind in _PARAMETER_KINDS:
            continue
        if kind is Kind.MODULE and value is not None and is_module(old.get(name)):
            _write_back(old[name], value)
            continue
        if kind is Kind.MODULE_SUBTREE:
            olds = jax.tree_util.tree_leaves(old.get(name), is_leaf=is_module)
            news = jax.tree_util.tree_leaves(value, is_leaf=is_module)
            if len(olds) == len(news):
                for o, n in zip(olds, news):
                    _write_back(o, n)
                continue
        previous = old.get(name, _MISSING)
        if previous is value:
            continue
        if kind is Kind.STATE_SUBTREE and previous is not _MISSING:
            value = _like_dtypes(value, previous)
        setattr(target, name, value)


def _like_dtypes(new: Any, old: Any) -> Any:
    """`new` with its floating leaves cast to the dtypes of `old`'s (same structure)."""
    new_leaves, treedef = jax.tree_util.tree_flatten(new)
    old_leaves, old_treedef = jax.tree_util.tree_flatten(old)
    if treedef != old_treedef:
        return new
    return treedef.unflatten(
        _cast_leaf(o.dtype)(n) if jnp.issubdtype(o.dtype, jnp.floating) else n
        for n, o in zip(new_leaves, old_leaves)
    )


def _mixed_class(cls: type) -> type:
    mixed = _CLASSES.get(cls)
    if mixed is None:
        name = f"MixedPrecision{cls.__name__}"
        attrs = {"__call__": _mixed_call, "__module__": cls.__module__, "__qualname__": name}
        mixed = type(name, (cls,), attrs)
        _CLASSES[cls] = mixed
    return mixed


def mixed_precision(module: T, policy: Any) -> T:
    """Returns a copy whose calls run under `policy` (a `jmp.Policy`).

    Each call casts the parameters (trainable and frozen) and the floating-point inputs to
    ``policy.compute_dtype``, and the output to ``policy.output_dtype``; the stored parameters
    are cast once, here, to ``policy.param_dtype``, and keep it. States written during a call
    keep the dtype they were registered with. A submodule with its own policy (see
    `pax.mixed_precision.apply_policy`) uses its own. The copy is still a pax module of a
    subclass named ``MixedPrecision<Name>``, with the same key paths, so optimizers,
    checkpoints, `freeze` and `summary` work unchanged; `unwrap_mixed_precision` undoes it.
    Calling it on a mixed-precision module replaces the policy.

    Args:
      policy: a `jmp.Policy`, or a string `jmp.get_policy` reads, such as
        ``"params=float32,compute=bfloat16,output=float32"``.

    Raises:
      TypeError: if `policy` is not a `jmp.Policy` or a string, or the module has no
        ``__call__``.
      ValueError: if a lazy layer or `pax.from_haiku` module inside is not initialized yet
        (call `lazy_init` / `hk_init` first).

    Example:
      >>> import jax.numpy as jnp, jmp, pax
      >>> policy = jmp.get_policy("params=float32,compute=bfloat16,output=float32")
      >>> fc = pax.nn.Linear(2, 3).mixed_precision(policy)
      >>> type(fc).__name__, fc.weight.dtype, fc(jnp.ones((1, 2))).dtype
      ('MixedPrecisionLinear', dtype('float32'), dtype('float32'))
      >>> type(fc.unwrap_mixed_precision()).__name__
      'Linear'
    """
    cls = _base_class(type(module))
    policy = as_policy(policy, f"{cls.__name__}.mixed_precision")
    if not callable(module):
        raise TypeError(
            f"{cls.__name__}.mixed_precision: the module has no __call__ to run under the "
            f"policy. Fix: give the policy to the submodules that compute, e.g. "
            f"pax.mixed_precision.apply_policy(model, {{pax.nn.Linear: policy}})."
        )
    pending = lazy.pending_paths(module)
    if pending:
        raise ValueError(
            f"{cls.__name__}.mixed_precision: {', '.join(pending)} is not initialized yet (its "
            f"input size comes from a first input), and a policy call computes on a copy that "
            f"could not keep the new parameters. Fix: initialize first, "
            f"model.lazy_init(example_input).mixed_precision(policy) (or hk_init for "
            f"pax.from_haiku modules)."
        )
    new = rebuild(module, _cast_parameters(policy.param_dtype), stop=is_mixed_precision)
    object.__setattr__(new, "__class__", _mixed_class(cls))
    setattr(new, POLICY_ATTR, policy)
    return new


def unwrap_mixed_precision(module: T) -> T:
    """Returns a copy of a `mixed_precision` module as its original class, without policy.

    The parameters keep their current dtype (use `astype` to change it). Only the policy of
    the module it is called on is removed: submodules keep theirs. To remove every policy of a
    tree (e.g. after `pax.mixed_precision.apply_policy`, which gives policies to submodules),
    unwrap each module that has one::

      model = model.apply(
          lambda m: m.unwrap_mixed_precision() if pax.mixed_precision.is_mixed_precision(m) else m
      )

    Raises:
      TypeError: if the module is not a mixed-precision module (when some of its submodules
        are, the message names them and gives the line above).

    Example:
      >>> import jmp, pax
      >>> policy = jmp.get_policy("c=bf16")
      >>> fc = pax.nn.Linear(2, 3).mixed_precision(policy)
      >>> type(fc.unwrap_mixed_precision()).__name__
      'Linear'
      >>> net = pax.mixed_precision.apply_policy(
      ...     pax.nn.Sequential(pax.nn.Linear(2, 2)), {pax.nn.Linear: policy}
      ... )
      >>> net = net.apply(
      ...     lambda m: m.unwrap_mixed_precision()
      ...     if pax.mixed_precision.is_mixed_precision(m) else m
      ... )
      >>> type(net.modules[0]).__name__
      'Linear'
    """
    if not is_mixed_precision(module):
        held = _paths_with_policy(module)
        if held:
            shown = ", ".join(held[:5]) + (f" (and {len(held) - 5} more)" if len(held) > 5 else "")
            raise TypeError(
                f"{type(module).__name__}.unwrap_mixed_precision: this module has no "
                f"mixed-precision policy of its own, but its submodules {shown} have one "
                f"(given by pax.mixed_precision.apply_policy); unwrap_mixed_precision removes "
                f"the policy of the module it is called on only. Fix: unwrap every module "
                f"that has one: model = model.apply(lambda m: m.unwrap_mixed_precision() if "
                f"pax.mixed_precision.is_mixed_precision(m) else m)."
            )
        raise TypeError(
            f"{type(module).__name__}.unwrap_mixed_precision: this module has no "
            f"mixed-precision policy. Fix: call it on the module that "
            f"module.mixed_precision(policy) returned."
        )
    new = rebuild(module, None, stop=is_mixed_precision)
    delattr(new, POLICY_ATTR)
    object.__setattr__(new, "__class__", _base_class(type(module)))
    return new


def _paths_with_policy(model: Any) -> list[str]:
    """Key paths of the submodules of `model` that have a mixed-precision policy."""

    def below(x: Any) -> bool:
        return x is not model and is_module(x)

    pairs, _ = jax.tree_util.tree_flatten_with_path(model, is_leaf=below)
    found: list[str] = []
    for path, sub in pairs:
        if not below(sub):
            continue
        if is_mixed_precision(sub):
            found.append(jax.tree_util.keystr(path))
        found.extend(jax.tree_util.keystr(path) + p for p in _paths_with_policy(sub))
    return found


Policies = Mapping[Any, Any]


def _matches(key: Any, module: Any, path: str) -> bool:
    if isinstance(key, type):  # a pax class, or a Haiku class: the wrapped modules of that class
        wrapped = getattr(module, "hk_cls", None)
        return isinstance(module, key) or (isinstance(wrapped, type) and issubclass(wrapped, key))
    return re.search(key, path) is not None


def _check_keys(policies: Policies) -> dict[Any, jmp.Policy]:
    checked = {}
    for key, policy in policies.items():
        if isinstance(key, str):
            try:
                re.compile(key)
            except re.error as err:
                raise ValueError(f"apply_policy: {key!r} is not a valid regex ({err}).") from None
        elif not isinstance(key, type):
            raise TypeError(
                f"apply_policy: a key must be a module class or a regular expression searched "
                f"in the key path, got {key!r}. Fix: {{pax.nn.BatchNorm: f32_policy, "
                f"r'^\\.head': policy}}."
            )
        checked[key] = as_policy(policy, f"apply_policy[{key!r}]")
    return checked


def apply_policy(model: T, policies: Policies) -> T:
    r"""Returns a copy where every submodule matched by a key of `policies` gets its policy.

    Keys are module classes (matching instances of subclasses too) or regular expressions
    searched in the submodule's key path from `model` (``".layers[0]"``; the root's is
    ``""``). Each submodule takes the policy of the first key that matches it, in the mapping's
    order; a module with its own policy casts its own parameters when called, from their
    stored dtype, whatever policy its parents have (as Haiku's per-class policies).

    Args:
      model: the model.
      policies: ``{class or key-path regex: jmp.Policy or policy string}``; a Haiku class
        (``hk.BatchNorm``) matches the `pax.from_haiku` modules wrapping it.

    Raises:
      ValueError: if no submodule matches some key (a typo is likely), or a key is an
        invalid regex.
      TypeError: for a key that is neither a class nor a string, or a policy that is not one.

    Example:
      >>> import jax.numpy as jnp, jmp, pax
      >>> half = jmp.get_policy("params=float32,compute=bfloat16,output=bfloat16")
      >>> full = jmp.get_policy("params=float32,compute=float32,output=bfloat16")
      >>> net = pax.nn.Sequential(pax.nn.Linear(2, 4), pax.nn.BatchNorm(4))
      >>> net = pax.mixed_precision.apply_policy(
      ...     net, {pax.nn.BatchNorm: full, r"^\.modules\[0\]$": half}
      ... )
      >>> [type(m).__name__ for m in net.modules]
      ['MixedPrecisionLinear', 'MixedPrecisionBatchNorm']
      >>> net(jnp.ones((3, 2))).dtype
      dtype(bfloat16)
    """
    checked = _check_keys(policies)
    used: set[Any] = set()
    where = [""]

    def visit(d: dict, layout: Any, path: str) -> None:
        where[0] = path  # `finish` runs on this module next

    def finish(new: Any) -> Any:
        for key, policy in checked.items():
            if _matches(key, new, where[0]):
                used.add(key)
                return mixed_precision(new, policy)
        return new

    out = rebuild(model, visit, finish=finish, with_paths=True)
    unused = [k for k in checked if k not in used]
    if unused:
        raise ValueError(
            f"apply_policy: no submodule of the {type(model).__name__} matches "
            f"{', '.join(repr(k) for k in unused)} (key paths look like '.layers[0].fc'). "
            f"Fix: check the class or the pattern; list the key paths with "
            f"print(model.summary())."
        )
    return out
