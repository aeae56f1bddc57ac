"""What a `pax.save` checkpoint holds and how `pax.load` matches it: every dtype and key
implementation bit for bit, byte order, weak types, shared modules refused, and mismatch errors
that carry every key path."""

import io
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pax
from pax._src.checkpoint import check as checkpoint

META = checkpoint.METADATA_KEY


def _bits(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return (str(x.dtype), x.shape, np.asarray(jax.random.key_data(x)).tobytes())
    x = np.asarray(x)
    return (str(x.dtype), x.shape, x.tobytes())


def _members(path):
    """{member name: bytes} of a checkpoint, in order."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _metadata(members):
    return json.loads(np.load(io.BytesIO(members[f"{META}.npy"])).tobytes())


def _write(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _with_metadata(members, metadata):
    blob = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    return {**members, f"{META}.npy": _npy(blob)}


# --- every key path on the error ----------------------------------------------------------


def test_mismatch_error_holds_every_key_path(tmp_path):
    path = tmp_path / "many.npz"
    pax.save(path, [jnp.ones(1)] * 30)
    with pytest.raises(pax.CheckpointMismatchError, match=r"(?s)3 missing.*1 with another") as info:
        pax.load(path, [jnp.ones(1)] * 2 + [jnp.ones(2)] + [jnp.ones(1)] * 30)
    err = info.value
    assert err.unexpected == ()
    assert err.missing == tuple(f"[{i}]" for i in range(30, 33))
    assert err.mismatched == ("[2]",)
    with pytest.raises(pax.CheckpointMismatchError, match=r"30 unexpected in the checkpoint") as e:
        pax.load(path, [])
    assert e.value.unexpected == tuple(f"[{i}]" for i in range(30))
    assert e.value.missing == () and e.value.mismatched == ()
    assert "error.unexpected" in str(e.value)  # the message says where the full list is


# --- non-strict loading that matches nothing ----------------------------------------------


def test_non_strict_load_that_matches_nothing_raises(tmp_path):
    path = tmp_path / "run.npz"
    net = pax.nn.Linear(2, 2)
    pax.save(path, (net, pax.nn.Linear(3, 3)))
    with pytest.raises(
        pax.CheckpointMismatchError,
        match=r"no key path of the checkpoint is in `like` \(saved: tuple, like: Linear\)",
    ) as info:
        pax.load(path, net, strict=False)
    assert info.value.missing == (".weight", ".bias")
    assert info.value.unexpected == ("[0].weight", "[0].bias", "[1].weight", "[1].bias")


def test_old_checkpoints_without_root_type_still_load(tmp_path):
    path = tmp_path / "old.npz"
    pax.save(path, {"w": jnp.arange(2.0)})
    members = _members(path)
    metadata = _metadata(members)
    del metadata["root"]
    _write(path, _with_metadata(members, metadata))
    np.testing.assert_array_equal(pax.load(path, {"w": jnp.zeros(2)})["w"], jnp.arange(2.0))
    with pytest.raises(pax.CheckpointMismatchError, match=r"saved: unknown, like: dict"):
        pax.load(path, {"v": jnp.zeros(2)}, strict=False)


# --- every dtype round-trips bit for bit --------------------------------------------------


def _dtype_cases():
    jax_names = ["bool", "int8", "int16", "int32", "uint8", "uint16", "uint32"]
    jax_names += ["float16", "float32", "bfloat16", "complex64", "int2", "uint2", "int4", "uint4"]
    jax_names += sorted(n for n in dir(jnp) if n.startswith(("float8_", "float4_")))
    cases = [pytest.param("jax", n, id=n) for n in jax_names]
    numpy_names = ["int64", "uint64", "float64", "complex128", "float6_e2m3fn", "float6_e3m2fn"]
    numpy_names += ["bfloat16", "float8_e5m2", "int4"]
    cases += [pytest.param("numpy", n, id=f"numpy-{n}") for n in numpy_names]
    return cases


def _dtype(name):
    return np.dtype(getattr(ml_dtypes, name, None) or name)


def _random_leaf(kind, name, seed=0):
    dtype = _dtype(name)
    bits = 1 if name == "bool" else 8 * dtype.itemsize
    for info in (ml_dtypes.iinfo, ml_dtypes.finfo):
        try:
            bits = info(dtype).bits
        except (ValueError, TypeError):
            pass
    rng = np.random.default_rng(seed)
    if bits < 8:  # sub-byte types and bool: only the low bits of each byte are used
        raw = rng.integers(0, 2**bits, size=12, dtype=np.uint8)
    else:  # any bit pattern: NaNs with payloads, infinities, subnormals
        raw = rng.integers(0, 256, size=12 * dtype.itemsize, dtype=np.uint8)
    value = raw.view(dtype).reshape(4, 3)
    return jax.device_put(value) if kind == "jax" else value


@pytest.mark.parametrize("kind, name", _dtype_cases())
def test_every_dtype_round_trips_bit_for_bit(tmp_path, kind, name):
    leaf = _random_leaf(kind, name)
    assert str(leaf.dtype) == name
    path = tmp_path / "x.npz"
    pax.save(path, {"x": leaf, "s": leaf[0, 0]})
    like = {"x": _random_leaf(kind, name, seed=1), "s": _random_leaf(kind, name, seed=1)[0, 0]}
    restored = pax.load(path, like)
    assert _bits(restored["x"]) == _bits(leaf)
    assert _bits(restored["s"]) == _bits(leaf[0, 0])
    assert type(restored["x"]) is type(like["x"])


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_typed_keys_of_every_implementation_round_trip(tmp_path, impl):
    keys = jax.random.split(jax.random.key(3, impl=impl), 4)
    pax.save(tmp_path / "k.npz", {"k": keys})
    like = {"k": jax.random.split(jax.random.key(0, impl=impl), 4)}
    assert _bits(pax.load(tmp_path / "k.npz", like)["k"]) == _bits(keys)


# --- byte order -----------------------------------------------------------------------------


def test_big_endian_leaf_loads_back_into_its_own_tree(tmp_path):
    tree = {"w": np.arange(3, dtype=">f4"), "i": np.arange(2, dtype=">i8")}
    pax.save(tmp_path / "x.npz", tree)
    restored = pax.load(tmp_path / "x.npz", tree)
    for key in tree:
        np.testing.assert_array_equal(restored[key], tree[key])
        assert restored[key].dtype == tree[key].dtype


# --- shared modules ----------------------------------------------------------------------


def test_save_refuses_a_module_reachable_twice(tmp_path):
    fc = pax.nn.Linear(2, 2)
    with pytest.raises(
        pax.CheckpointError,
        match=r"Sequential\.modules\[2\] is the same Linear module as Sequential\.modules\[0\]",
    ):
        pax.save(tmp_path / "x.npz", pax.nn.Sequential(fc, pax.nn.Linear(2, 2), fc))
    assert os.listdir(tmp_path) == []


def test_save_accepts_a_shared_plain_array(tmp_path):
    w = jnp.arange(3.0)
    pax.save(tmp_path / "x.npz", {"a": w, "b": w})
    restored = pax.load(tmp_path / "x.npz", {"a": jnp.zeros(3), "b": jnp.zeros(3)})
    np.testing.assert_array_equal(restored["b"], w)


# --- weak types and device commitment -------------------------------------------------------


def test_weak_types_are_restored(tmp_path):
    tree = {"lr": jnp.asarray(0.5), "step": jnp.asarray(3), "w": jnp.ones(2), "v": jnp.ones(2)}
    tree["v"] = jnp.broadcast_to(jnp.asarray(2.0), (2,))  # a weak-typed vector
    assert tree["lr"].weak_type and tree["v"].weak_type and not tree["w"].weak_type
    pax.save(tmp_path / "x.npz", tree)
    like = {"lr": jnp.float32(0), "step": jnp.int32(0), "w": jnp.zeros(2), "v": jnp.zeros(2)}
    restored = pax.load(tmp_path / "x.npz", like)
    for key, value in tree.items():
        assert restored[key].weak_type == value.weak_type, key
        assert _bits(restored[key]) == _bits(value)
        assert restored[key].committed == value.committed, key


def test_a_loaded_tree_reuses_the_compiled_step(tmp_path):
    from compile_count import count_compilations

    def loaded_step(tree, x):
        return tree["w"] * tree["lr"] + x * tree["step"]

    step = jax.jit(loaded_step)
    tree = {"w": jnp.ones(3), "lr": jnp.asarray(0.5), "step": jnp.asarray(2)}
    x = jnp.arange(3.0)
    pax.save(tmp_path / "x.npz", tree)
    restored = pax.load(tmp_path / "x.npz", jax.tree_util.tree_map(jnp.zeros_like, tree))
    with count_compilations(loaded_step) as compilations:
        expected = step(tree, x)
        np.testing.assert_array_equal(step(restored, x), expected)
    assert compilations() == 1
