"""Encoding of one checkpoint leaf as a numpy array plus a JSON metadata record, and back.

Numeric dtypes numpy can store are written as they are (native byte order); ml_dtypes
(bfloat16, float8_*, int4, ...) as their raw bits; typed PRNG keys as their key data plus the
name of their implementation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_dtypes
import numpy as np

from pax._src.describe import describe, short_dtype
from pax._src.errors import CheckpointError

# The dtypes `.npy` stores as themselves. Others, even of kind "f" like ml_dtypes'
# float8_e5m2 (whose `.npy` descriptor "<f1" numpy cannot read back), are stored as raw bits.
_NATIVE = frozenset(
    np.dtype(name)
    for name in (
        "bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 "
        "float16 float32 float64 complex64 complex128"
    ).split()
)


def _is_native(dtype: np.dtype) -> bool:
    return dtype.newbyteorder("=") in _NATIVE


def is_key_array(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def check_leaf(where: str, leaf: Any) -> None:
    """Refuses a leaf a checkpoint cannot store: a tracer, a non-array, a deleted array."""
    if isinstance(leaf, jax.core.Tracer):
        raise CheckpointError(
            f"pax.save: the leaf at {where} is a JAX tracer: save was called inside a "
            f"transformed function (jax.jit, jax.grad, ...). Fix: return the model from the "
            f"function and save it outside: model = step(model, ...); pax.save(path, model)."
        )
    if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, bool, int, float, complex)):
        raise CheckpointError(
            f"pax.save: the leaf at {where} is a {type(leaf).__name__}, not an array; a "
            f"checkpoint stores only arrays. Fix: keep non-array values out of the saved tree, "
            f"e.g. pax.save(path, (model, optimizer)) and store other settings separately."
        )
    if isinstance(leaf, jax.Array) and leaf.is_deleted():
        raise CheckpointError(
            f"pax.save: the array at {where} was deleted, most likely donated to a jitted step "
            f"(donate_argnums / build_update_fn(..., donate=True)). Fix: save the model the "
            f"step returned: loss, model, optimizer = update_fn(model, optimizer, batch)."
        )


def _encoding(where: str, dtype: np.dtype) -> str:
    """How an array of `dtype` is stored: "array" (as itself) or "bits" (an unsigned view)."""
    if _is_native(dtype):
        return "array"
    if _extension_dtype(dtype.name) is None:
        raise CheckpointError(
            f"pax.save: the leaf at {where} has dtype {dtype}, which a checkpoint cannot store. "
            f"Fix: convert it to a numeric dtype, e.g. x.astype(jnp.float32)."
        )
    if dtype.itemsize not in (1, 2, 4, 8):
        raise CheckpointError(
            f"pax.save: the leaf at {where} has dtype {dtype} ({dtype.itemsize} bytes per "
            f"element), which a checkpoint cannot store bit for bit. Fix: convert it, e.g. "
            f"x.astype(jnp.float32)."
        )
    return "bits"


def encode_leaf(where: str, leaf: Any) -> tuple[np.ndarray, dict]:
    """Returns the array to store for `leaf` and its metadata record."""
    check_leaf(where, leaf)
    if is_key_array(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        meta: dict[str, Any] = {"encoding": "key", "impl": str(jax.random.key_impl(leaf))}
        return data, {**meta, "dtype": str(leaf.dtype), "shape": list(leaf.shape)}
    array = np.asarray(leaf)
    dtype = array.dtype
    meta = {"dtype": dtype.name, "shape": list(array.shape)}
    if isinstance(leaf, jax.Array) and leaf.weak_type:
        meta["weak_type"] = True  # restored by `place`: a weak type changes jit's cache key
    if _encoding(where, dtype) == "array":
        return _native_order(array), {**meta, "encoding": "array"}
    bits = array.view(np.dtype(f"u{dtype.itemsize}"))
    return bits, {**meta, "encoding": "bits"}


def record_of(where: str, leaf: jax.Array) -> dict:
    """The metadata record `encode_leaf` would give `leaf`, read from its type alone.

    For arrays that span processes, whose values one process cannot read. ``stored_shape`` is
    the shape of the stored array (a key array's shape plus the key data's trailing axes).
    """
    check_leaf(where, leaf)
    shape = list(leaf.shape)
    if is_key_array(leaf):
        stored = list(jax.eval_shape(jax.random.key_data, leaf).shape)
        impl = str(jax.random.key_impl(leaf))
        return {"encoding": "key", "impl": impl, "dtype": str(leaf.dtype), "shape": shape,
                "stored_shape": stored}  # fmt: skip
    dtype = np.dtype(leaf.dtype)
    meta: dict[str, Any] = {"dtype": dtype.name, "shape": shape}
    if leaf.weak_type:
        meta["weak_type"] = True
    return {**meta, "encoding": _encoding(where, dtype), "stored_shape": shape}


def _native_order(array: np.ndarray) -> np.ndarray:
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _extension_dtype(name: str) -> np.dtype | None:
    """The ml_dtypes dtype (bfloat16, float8_*, int4, ...) called `name`, else None."""
    scalar = getattr(ml_dtypes, name, None)
    if isinstance(scalar, type) and issubclass(scalar, np.generic):
        return np.dtype(scalar)
    return None


def decode_leaf(path: str, where: str, stored: np.ndarray, meta: Any) -> Any:
    """Inverse of `encode_leaf`; raises CheckpointError if the metadata does not fit the array."""
    try:
        encoding, name, shape = meta["encoding"], meta["dtype"], tuple(meta["shape"])
        if encoding == "array":
            if not _is_native(np.dtype(name)):
                raise ValueError(f"dtype {name!r} is not a numeric dtype")
            value = _native_order(stored)
        elif encoding == "bits":
            dtype = _extension_dtype(name)
            if dtype is None:
                raise ValueError(f"unknown dtype {name!r}")
            value = _native_order(stored).view(dtype)
        elif encoding == "key":
            value = jax.random.wrap_key_data(jax.numpy.asarray(stored), impl=meta["impl"])
        else:
            raise ValueError(f"unknown encoding {encoding!r}")
        if tuple(value.shape) != shape or str(value.dtype) != name:
            declared = f"{short_dtype(name)}[{','.join(map(str, shape))}]"
            raise ValueError(f"the metadata says {declared}, the array is {describe(value)}")
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"pax.load: {path} is corrupted: the entry {where} cannot be decoded ({err}). "
            f"Nothing was loaded."
        ) from None
    return value


def stored_spec(meta: dict) -> Callable[[tuple[int, ...], np.dtype], bool] | None:
    """Whether a stored array's (shape, dtype) is what `encode_leaf` writes for `meta`.

    Used to refuse a member before reading it; None for an unknown encoding or dtype.
    """
    shape = tuple(meta["shape"])
    encoding, name = meta.get("encoding"), meta["dtype"]
    try:
        if encoding == "array":
            dtype = np.dtype(name)
            return lambda s, d: s == shape and d.newbyteorder("=") == dtype
        if encoding == "bits":
            ext = _extension_dtype(name)
            if ext is None:
                return None
            bits = np.dtype(f"u{ext.itemsize}")
            return lambda s, d: s == shape and d.newbyteorder("=") == bits
    except TypeError:
        return None
    if encoding == "key":  # key data: the key shape plus at most a few uint32 words
        return lambda s, d: (
            s[: len(shape)] == shape
            and len(s) <= len(shape) + 1
            and int(np.prod(s[len(shape) :])) <= 16
            and d.newbyteorder("=") == np.uint32
        )
    return None


def stored_dtype(meta: dict) -> np.dtype | None:
    """The dtype of the array `encode_leaf` stores for `meta`; None for an unknown one."""
    encoding, name = meta.get("encoding"), meta["dtype"]
    try:
        if encoding == "array" and _is_native(np.dtype(name)):
            return np.dtype(name)
    except TypeError:
        return None
    ext = _extension_dtype(name) if encoding == "bits" else None
    if ext is not None and ext.itemsize in (1, 2, 4, 8):
        return np.dtype(f"u{ext.itemsize}")
    return np.dtype(np.uint32) if encoding == "key" else None


def from_stored(stored: np.ndarray, meta: dict) -> np.ndarray:
    """A stored piece as an array of the leaf's dtype (key data stays uint32)."""
    value = _native_order(stored)
    dtype = _extension_dtype(meta["dtype"]) if meta["encoding"] == "bits" else None
    return value if dtype is None else value.view(dtype)


def weak(value: jax.Array) -> jax.Array:
    """`value`, weakly typed (same values and sharding)."""
    sharding = value.sharding if value.committed else None
    return _weak_identity(value.shape, value.dtype, sharding)(value)


def place(value: Any, like: Any, weak_type: bool) -> Any:
    """`value` (numpy or key array) converted to the kind of leaf `like` is.

    Jax leaves get ``like``'s sharding (committed only if ``like`` is), and the saved weak type.
    """
    if isinstance(like, (bool, int, float, complex)):
        return type(like)(np.asarray(value).item())
    if isinstance(like, (np.ndarray, np.generic)) and not is_key_array(value):
        value = value.astype(like.dtype, copy=False)  # like's byte order
        return value if isinstance(like, np.ndarray) else value[()]
    sharding = getattr(like, "sharding", None)
    if isinstance(sharding, jax.sharding.Sharding) and not sharding.is_fully_addressable:
        value = _spanning(value, sharding)  # device_put refuses to reach other processes
    elif isinstance(sharding, jax.sharding.Sharding) and getattr(like, "committed", True):
        value = jax.device_put(value, sharding)
    else:
        value = jax.device_put(value)
    if weak_type and not is_key_array(value):
        value = weak(value)
    return value


def _spanning(value: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array with `sharding` built from the whole `value` (every process has it)."""
    if not is_key_array(value):
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    data = np.asarray(jax.random.key_data(value))
    built = jax.make_array_from_callback(data.shape, sharding, lambda index: data[index])
    return jax.random.wrap_key_data(built, impl=jax.random.key_impl(value))


@functools.lru_cache(maxsize=256)
def _weak_identity(shape: tuple, dtype: Any, sharding: Any) -> Callable:
    """A compiled identity whose output is weakly typed: the public way to set a weak type."""
    spec = jax.ShapeDtypeStruct(shape, dtype, weak_type=True, sharding=sharding)
    return jax.jit(lambda x: x).lower(spec).compile()
