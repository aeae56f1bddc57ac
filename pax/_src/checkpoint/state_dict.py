"""Flat ``{name: array}`` import and export of a model's arrays, for weights from anywhere.

`state_dict` gives every array of a model (parameters and states) under its key path
(``.modules[0].weight``); `load_state_dict` loads such a mapping, possibly written by another
library (a PyTorch ``state_dict`` saved with ``np.savez``, safetensors, another JAX library),
renaming its keys and adjusting its arrays on the way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, overload

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.checkpoint.matching import LoadReport, Rename, match_names, settle, spec

T = TypeVar("T")
Transform = Callable[[str, Any], Any]


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def state_dict(model: Any) -> dict[str, np.ndarray]:
    """Returns every array of `model` as numpy, keyed by its key path.

    The keys are those of ``jax.tree_util.keystr`` (``.modules[0].weight``), as in `pax.load`'s
    reports; parameters and states alike (a BatchNorm's moving averages, RNG keys as their
    ``uint32`` data). Save it with ``np.savez(path, **pax.state_dict(model))``.

    Args:
      model: a module (or any pytree of arrays).

    Raises:
      TypeError: if `model` is None, or a leaf is not an array (e.g. a JAX tracer inside
        ``jax.jit``).

    Example:
      >>> import pax
      >>> sd = pax.state_dict(pax.nn.Sequential(pax.nn.Linear(2, 3)))
      >>> {k: v.shape for k, v in sd.items()}
      {'.modules[0].weight': (2, 3), '.modules[0].bias': (3,)}
    """
    if model is None:
        raise TypeError(
            "pax.state_dict: model is None, so it has no arrays. Fix: pass the module, e.g. "
            "pax.state_dict(model)."
        )
    out: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(model)[0]:
        where = jax.tree_util.keystr(path)
        if isinstance(leaf, jax.core.Tracer) or not hasattr(leaf, "shape"):
            raise TypeError(
                f"pax.state_dict: {where or '<root>'} is {type(leaf).__name__}, not an array. "
                f"Fix: call state_dict outside jax.jit / jax.grad, on a model of arrays."
            )
        out[where] = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
    return out


def _as_array(value: Any, what: str, fix: str) -> np.ndarray:
    """`value` (an array or array-like: list, scalar, jax array) as numpy; refuses the rest.

    `what` ends with a verb (``"the entry 'w' is"``), followed by the value in errors.
    """
    try:
        array = np.asarray(value)
    except Exception as err:  # e.g. a ragged list
        raise TypeError(
            f"pax.load_state_dict: {what} a {type(value).__name__} that numpy cannot convert "
            f"to an array ({type(err).__name__}: {err}). Fix: {fix}."
        ) from None
    if array.dtype.kind in "OUSVMm":
        raise TypeError(
            f"pax.load_state_dict: {what} {_short(value)} (a {type(value).__name__}), not a "
            f"numeric array. Fix: {fix}."
        )
    return array


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@overload
def load_state_dict(
    model: T,
    mapping: Mapping[str, Any],
    *,
    rename: Rename | str | None = ...,
    transform: Transform | None = ...,
    strict: Literal[True] = ...,
) -> T: ...


@overload
def load_state_dict(
    model: T,
    mapping: Mapping[str, Any],
    *,
    rename: Rename | str | None = ...,
    transform: Transform | None = ...,
    strict: Literal[False],
) -> tuple[T, LoadReport]: ...


def load_state_dict(
    model: T,
    mapping: Mapping[str, Any],
    *,
    rename: Rename | str | None = None,
    transform: Transform | None = None,
    strict: bool = True,
) -> T | tuple[T, LoadReport]:
    """Returns a copy of `model` holding the arrays of a flat ``{name: array}`` mapping.

    Each name of `mapping` is renamed to a key path of the model (see `state_dict`), its array
    passed through `transform`, and checked against the model's leaf there: same shape and
    dtype. Everything is checked before anything is built, and one error lists every problem;
    `model` itself is never changed.

    Args:
      model: the model to load into.
      mapping: ``{name: array}``: a dict, or what ``np.load(path)`` returns for an ``.npz``.
      rename: how source names become key paths: a function ``name -> key path`` (None drops
        the entry), a dict ``{name: key path}`` (other names are kept), or a list of
        ``(regex, replacement)`` rules: the first rule whose regex
        matches (``re.search``) rewrites the name with ``re.sub``; names no rule matches are
        kept; or the name of a preset of `PRESETS` (``"torchvision_resnet"``), which also
        sets `transform` unless one is given. Default: names are key paths already.
      transform: ``transform(key_path, array) -> array``, applied to every entry after
        renaming, e.g. ``lambda k, a: a.T if k.endswith(".weight") else a`` for a PyTorch
        Linear's ``(out, in)`` weight. It may return any array-like (a numpy or jax array, a
        nested list): it is converted with ``np.asarray`` and must then have the model leaf's
        shape and dtype (a list of Python floats becomes float64: cast it with
        ``.astype``).
      strict: if True (default), every key path of the model must be given and every entry
        must find a key path. If False, entries that find none are ignored and key paths not
        given keep the model's value; shapes and dtypes must still match, and at least one
        name must match.

    Returns:
      The loaded model; with ``strict=False``, ``(model, pax.LoadReport(missing,
      unexpected))``: the model's key paths not given, and the source names (as given) that
      found no key path.

    Raises:
      CheckpointMismatchError: (a ValueError) listing every unexpected name, missing key path
        and shape or dtype mismatch (worded as `pax.load` words them; the error's ``missing``,
        ``unexpected`` and ``mismatched`` attributes hold them all).
      ValueError: if two names are renamed to one key path.
      TypeError: for a `model` that is None, a `mapping` that is not a mapping, a bad
        `rename`, a `transform` that is not callable, a `strict` that is not a bool, or an
        entry (as given or as `transform` returned it) that is not a numeric array-like; the
        key is named.

    Example:
      >>> import numpy as np, pax
      >>> torch_like = {"0.weight": np.ones((3, 2), np.float32), "0.bias": np.zeros(3, np.float32)}
      >>> net = pax.load_state_dict(
      ...     pax.nn.Sequential(pax.nn.Linear(2, 3)),
      ...     torch_like,
      ...     rename=[(r"^(\\d+)\\.(weight|bias)$", r".modules[\\1].\\2")],
      ...     transform=lambda key, a: a.T if key.endswith(".weight") else a,
      ... )
      >>> net.modules[0].weight.shape
      (2, 3)
    """
    fn = "pax.load_state_dict"
    if model is None:
        raise TypeError(
            f"{fn}: model is None; it must be the model to load into. Fix: "
            f"pax.load_state_dict(model, mapping)."
        )
    if not hasattr(mapping, "keys") or not hasattr(mapping, "__getitem__"):
        raise TypeError(
            f"{fn}: mapping must be a mapping {{name: array}} (a dict, or np.load of an .npz), "
            f"got {type(mapping).__name__}. Fix: pax.load_state_dict(model, dict(pairs)), or "
            f"pax.load_state_dict(model, np.load(path))."
        )
    if transform is not None and not callable(transform):
        raise TypeError(
            f"{fn}: transform must be a function (key_path, array) -> array, got "
            f"{type(transform).__name__} {_short(transform)}. Fix: e.g. "
            f"transform=lambda key, a: a.T if key.endswith('.weight') else a."
        )
    if not isinstance(strict, (bool, np.bool_)):
        raise TypeError(
            f"{fn}: strict must be True or False, got {strict!r}. Fix: "
            f"pax.load_state_dict(model, mapping) or pax.load_state_dict(model, mapping, "
            f"strict=False)."
        )
    if isinstance(rename, str):
        if rename not in PRESETS:
            raise ValueError(
                f"{fn}: rename={rename!r} is not a preset; the presets are {sorted(PRESETS)}. "
                f"Fix: pax.load_state_dict(model, mapping, rename='torchvision_resnet'), or "
                f"pass a function, dict or [(regex, replacement), ...]."
            )
        rename, preset_transform = PRESETS[rename]
        transform = preset_transform if transform is None else transform
        # the entries the preset drops (PyTorch's num_batches_tracked) are not unexpected
        mapping = {k: mapping[k] for k in mapping.keys() if rename(str(k)) is not None}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(model)
    expected = {jax.tree_util.keystr(path): leaf for path, leaf in leaves}
    names = {str(name): name for name in mapping.keys()}
    matched = match_names(expected, names, rename=rename, fn=fn)
    values: dict[str, Any] = {}
    mismatched: dict[str, str] = {}
    for key, given in matched.pairs.items():
        name = names[given]
        value = _as_array(
            mapping[name],
            f"the entry {name!r} is",
            "give numeric arrays (np.ndarray, jax.Array, or nested lists of numbers)",
        )
        converted = ""
        if transform is not None:
            result = transform(key, value)
            value = _as_array(
                result,
                f"transform({key!r}, array) (for the entry {name!r}) returned",
                "make transform return an array for every key, e.g. "
                "transform=lambda key, a: a.T if key.endswith('.weight') else a",
            )
            if not hasattr(result, "dtype"):  # a list or scalar: numpy chose the dtype
                converted = f" (transform returned a {type(result).__name__}, made {value.dtype})"
        mine = expected[key]
        theirs = jax.random.key_data(mine) if _is_key(mine) else mine
        if spec(value) != spec(theirs):
            mismatched[key] = (
                f"{key} (from {name!r}): given {spec(value)}{converted}, model {spec(theirs)}"
            )
            continue
        values[key] = value
    report = settle(
        matched,
        mismatched,
        strict=strict,
        fn=fn,
        source="the mapping",
        target=f"the {type(model).__name__}",
        fixes=[
            "map the names to the key paths listed by pax.state_dict(model) with rename= "
            "(a function, a dict, or [(regex, replacement), ...]); adjust layouts and dtypes "
            "with transform=lambda key, a: ... (e.g. a.T, a.astype(np.float32))"
        ],
        non_strict="pax.load_state_dict(model, mapping, strict=False)",
    )
    new_leaves = []
    for key, leaf in expected.items():
        if key not in values:
            new_leaves.append(leaf)
        elif _is_key(leaf):
            new_leaves.append(jax.random.wrap_key_data(jnp.asarray(values[key])))
        else:
            new_leaves.append(jnp.asarray(values[key]))
    result = jax.tree_util.tree_unflatten(treedef, new_leaves)
    if strict:
        return result
    return result, report


def _torchvision_resnet_name(name: str) -> str | None:
    if name.endswith("num_batches_tracked"):
        return None
    bn = {"weight": "scale", "bias": "offset", "running_mean": "running_mean",
          "running_var": "running_var"}  # fmt: skip
    rules = [
        (r"^conv1\.weight$", lambda m: ".initial_conv.weight"),
        (r"^bn1\.(\w+)$", lambda m: f".initial_batchnorm.{bn.get(m[1], m[1])}"),
        (r"^fc\.(weight|bias)$", lambda m: f".logits.{m[1]}"),
        (
            r"^layer(\d)\.(\d+)\.conv(\d)\.weight$",
            lambda m: (
                f".block_groups[{int(m[1]) - 1}].blocks[{m[2]}].convs[{int(m[3]) - 1}].weight"
            ),
        ),
        (
            r"^layer(\d)\.(\d+)\.bn(\d)\.(\w+)$",
            lambda m: (
                f".block_groups[{int(m[1]) - 1}].blocks[{m[2]}]"
                f".batchnorms[{int(m[3]) - 1}].{bn.get(m[4], m[4])}"
            ),
        ),
        (
            r"^layer(\d)\.(\d+)\.downsample\.0\.weight$",
            lambda m: f".block_groups[{int(m[1]) - 1}].blocks[{m[2]}].proj_conv.weight",
        ),
        (
            r"^layer(\d)\.(\d+)\.downsample\.1\.(\w+)$",
            lambda m: (
                f".block_groups[{int(m[1]) - 1}].blocks[{m[2]}].proj_batchnorm.{bn.get(m[3], m[3])}"
            ),
        ),
    ]
    for pattern, make in rules:
        found = re.match(pattern, name)
        if found:
            return make(found)
    return name


def _torchvision_transform(key: str, a: Any) -> Any:
    a = np.asarray(a)
    if a.ndim == 4:  # OIHW -> HWIO
        return np.transpose(a, (2, 3, 1, 0))
    if a.ndim == 2:  # Linear (out, in) -> (in, out)
        return a.T
    return a


PRESETS: dict[str, tuple[Callable[[str], str | None], Transform]] = {
    "torchvision_resnet": (_torchvision_resnet_name, _torchvision_transform),
}
"""Named ``rename=`` presets of `load_state_dict`, with the `transform` they imply.

``"torchvision_resnet"``: a torchvision ``resnet18/34/50().state_dict()`` (saved with
``np.savez``) into `pax.nets.ResNet18` / ``34`` / ``50`` built with
``bn_config={"running_stats": True}, padding="symmetric"`` (and ``num_classes=1000``):
``layer2.0.downsample.1.running_mean`` becomes
``.block_groups[1].blocks[0].proj_batchnorm.running_mean``, convolution weights go from
PyTorch's ``OIHW`` to ``HWIO``, linear weights are transposed, ``num_batches_tracked`` is
dropped. The network may be channels first (``NCHW``, as torchvision) or channels last.

Flatten order: a PyTorch ``nn.Linear`` that follows a ``flatten`` of a convolution's
``(N, C, H, W)`` output reads its inputs in ``C, H, W`` order; a channels-last pax model
flattens ``(N, H, W, C)`` in ``H, W, C`` order. Its weight ``(out, C*H*W)`` then needs
``w.reshape(out, C, H, W).transpose(0, 2, 3, 1).reshape(out, -1).T`` (or build the model
channels first). The ResNets average-pool before their linear layer, so nothing is needed
there.
"""
