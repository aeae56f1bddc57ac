"""`pax.save` / `pax.load`: exact round trips, atomic writes, validation before loading."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax._src.checkpoint import check as checkpoint
from pax._src.checkpoint import io as checkpoint_io
from pax._src.checkpoint import save_load

# --- helpers -----------------------------------------------------------------------------------


def _bits(x):
    """The exact bytes of a leaf (key data for typed PRNG keys), with its dtype and shape."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return (str(x.dtype), x.shape, np.asarray(jax.random.key_data(x)).tobytes())
    x = np.asarray(x)
    return (str(x.dtype), x.shape, x.tobytes())


def assert_bit_identical(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        assert _bits(x) == _bits(y)


def _random_bits(rng, shape, dtype):
    """Uniformly random bit patterns: NaNs with payloads, infinities, subnormals included."""
    dtype = jnp.dtype(dtype)
    bits = rng.integers(0, 2 ** (8 * dtype.itemsize), size=shape, dtype=f"u{dtype.itemsize}")
    return jax.device_put(bits.view(dtype))


class Stats(pax.Module):
    """A hand-made BatchNorm-like module: running statistics as states, a step counter."""

    def __init__(self, dim, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.register_parameter("scale", _random_bits(rng, (dim,), jnp.float32))
        self.register_state("mean", _random_bits(rng, (dim,), jnp.float32))
        self.register_state("var", _random_bits(rng, (dim,), jnp.bfloat16))
        self.register_state("count", jnp.asarray(rng.integers(0, 100), jnp.int32))


class Everything(pax.Module):
    """Every kind of leaf a checkpoint must keep exactly."""

    def __init__(self, seed):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.encoder = pax.nn.Linear(3, 4, rng_key=jax.random.PRNGKey(seed))
        self.frozen = pax.nn.Linear(4, 2, rng_key=jax.random.PRNGKey(seed + 1)).freeze()
        self.norms = [Stats(4, seed), Stats(2, seed + 1)]
        self.register_parameter("bf16", _random_bits(rng, (2, 3), jnp.bfloat16))
        self.register_parameter("f16", _random_bits(rng, (5,), jnp.float16))
        self.register_state("raw_key", jax.random.PRNGKey(seed))
        self.register_state("typed_key", jax.random.key(seed))
        self.register_state("i8", jnp.asarray(rng.integers(-128, 128, (3,)), jnp.int8))
        self.register_state("u4", jnp.arange(seed % 4, seed % 4 + 3, dtype=jnp.uint4))
        self.register_state("flag", jnp.asarray(seed % 2 == 0))
        self.register_state_subtree("extra", {"a/b": _random_bits(rng, (), jnp.float32)})


def _differs(a, b):
    return any(_bits(x) != _bits(y) for x, y in zip(*map(jax.tree_util.tree_leaves, (a, b))))


# --- round trips -------------------------------------------------------------------------------


def test_round_trip_is_bit_identical(tmp_path):
    path = tmp_path / "model.npz"
    model = Everything(seed=1)
    pax.save(path, model)
    like = Everything(seed=2)
    assert _differs(model, like)  # the values below can only come from the file
    restored = pax.load(path, like)
    assert_bit_identical(restored, model)
    assert restored.frozen.parameters().weight is None  # frozen stays frozen (from `like`)
    assert isinstance(restored.typed_key, jax.Array)
    assert str(restored.typed_key.dtype) == "key<fry>"
    assert _bits(like) != _bits(restored)  # `like` itself was not modified
    assert not _differs(like, Everything(seed=2))


def test_file_is_a_plain_npz_with_key_path_names_and_metadata(tmp_path):
    path = tmp_path / "model.npz"
    model = Everything(seed=1)
    pax.save(path, model)
    with np.load(path, allow_pickle=False) as npz:
        names = set(npz.files)
        np.testing.assert_array_equal(npz[".encoder.weight"], np.asarray(model.encoder.weight))
        np.testing.assert_array_equal(npz[".bf16"], np.asarray(model.bf16).view(np.uint16))
        np.testing.assert_array_equal(npz[".raw_key"], np.asarray(model.raw_key))
        metadata = json.loads(npz[checkpoint.METADATA_KEY].tobytes())
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(model)]
    assert names == {checkpoint.METADATA_KEY, *paths}
    assert metadata["format"] == "pax-checkpoint"
    assert metadata["version"] == checkpoint.VERSION
    assert metadata["treedef"] == str(jax.tree_util.tree_structure(model))
    records = {r["path"]: r for r in metadata["leaves"]}
    assert records[".bf16"]["dtype"] == "bfloat16"
    assert records[".typed_key"] == {
        "path": ".typed_key",
        "encoding": "key",
        "impl": "threefry2x32",
        "dtype": "key<fry>",
        "shape": [],
    }


class MomentumSGD(pax.Module):
    """A custom optimizer with a registered state subtree and a step counter."""

    def __init__(self, params, learning_rate=0.1, momentum=0.9):
        super().__init__()
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.register_state_subtree("velocity", jax.tree_util.tree_map(jnp.zeros_like, params))
        self.register_state("step_count", jnp.array(0, jnp.int32))

    def step(self, grads, model):
        self.velocity = jax.tree_util.tree_map(
            lambda v, g: self.momentum * v + g, self.velocity, grads
        )
        self.step_count = self.step_count + 1
        new = jax.tree_util.tree_map(
            lambda p, v: p - self.learning_rate * v, model.parameters(), self.velocity
        )
        return model.update(new)


def _loss(params, model, x):
    model = model.update(params)
    y = model(x)
    loss = jnp.mean(jnp.square(y - 1.0))
    return loss, (loss, model)


@jax.jit
def _train_step(model, optimizer, x):
    grads, (loss, model) = jax.grad(_loss, has_aux=True)(model.parameters(), model, x)
    model = optimizer.step(grads, model)
    return loss, model, optimizer


def _train(model, optimizer, steps):
    losses = []
    x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    for _ in range(steps):
        loss, model, optimizer = _train_step(model, optimizer, x)
        losses.append(float(loss))
    return losses, model, optimizer


def _build(seed, make_optimizer):
    model = pax.nn.Sequential(
        pax.nn.Linear(3, 4, rng_key=jax.random.PRNGKey(seed)),
        pax.nn.Linear(4, 2, rng_key=jax.random.PRNGKey(seed + 1)).freeze(),
        pax.nn.Linear(2, 1, rng_key=jax.random.PRNGKey(seed + 2)),
    )
    return model, make_optimizer(model.parameters())


def _check_training_resumes_exactly(tmp_path, make_optimizer):
    model, optimizer = _build(0, make_optimizer)
    _, model, optimizer = _train(model, optimizer, 3)
    path = tmp_path / "run.npz"
    pax.save(path, {"model": model, "optimizer": optimizer})
    like = dict(zip(("model", "optimizer"), _build(5, make_optimizer)))
    restored = pax.load(path, like)
    assert_bit_identical(restored, {"model": model, "optimizer": optimizer})
    expected, model_a, opt_a = _train(model, optimizer, 3)
    resumed, model_b, opt_b = _train(restored["model"], restored["optimizer"], 3)
    assert resumed == expected
    assert_bit_identical((model_b, opt_b), (model_a, opt_a))


def test_training_resumes_exactly_with_a_custom_optimizer(tmp_path):
    _check_training_resumes_exactly(tmp_path, MomentumSGD)


def test_training_resumes_exactly_with_an_optax_optimizer(tmp_path):
    optim = pytest.importorskip("pax.optim")
    optax = pytest.importorskip("optax")
    adam = optax.adam(1e-2)
    _check_training_resumes_exactly(tmp_path, optim.from_optax(adam))


def test_batchnorm_statistics_round_trip(tmp_path):
    batch_norm = getattr(pax.nn, "BatchNorm1D", None)
    if batch_norm is None:
        pytest.skip("pax.nn.BatchNorm1D is not available")

    @jax.jit
    def train_step(bn, x):
        bn(x)
        return bn

    x = jax.random.normal(jax.random.PRNGKey(0), (8, 3)) * 3.0 + 1.0
    bn = train_step(train_step(batch_norm(3), x), 2.0 * x)
    path = tmp_path / "bn.npz"
    pax.save(path, bn)
    restored = pax.load(path, batch_norm(3))
    assert_bit_identical(restored, bn)
    assert _differs(restored.states(), batch_norm(3).states())  # the statistics were updated
    infer = jax.jit(lambda bn, x: bn(x))
    np.testing.assert_array_equal(infer(restored.eval(), x), infer(bn.eval(), x))


def test_none_leaves_of_like_are_respected(tmp_path):
    model = Everything(seed=1)
    path = tmp_path / "model.npz"
    with pytest.raises(pax.CheckpointError, match=r"Everything\.norms\[0\]\.mean.*"):
        pax.save(path, model.parameters())  # a view: its states would be lost
    pax.save(path, model)
    like = Everything(seed=2)
    params, report = pax.load(path, like.parameters(), strict=False)
    assert_bit_identical(params, model.parameters())  # like's None leaves stay None
    assert ".norms[0].mean" in report.unexpected and report.missing == ()
    with pytest.raises(pax.CheckpointMismatchError, match=r"unexpected in the checkpoint"):
        pax.load(path, like.parameters())


def test_like_may_be_numpy_python_scalars_or_shape_structs(tmp_path):
    tree = {"w": np.arange(3, dtype=np.float32), "step": 7, "lr": 0.5, "b": jnp.ones(2)}
    path = tmp_path / "tree.npz"
    pax.save(path, tree)
    like = {"w": np.zeros(3, np.float32), "step": 0, "lr": 0.0, "b": jnp.zeros(2)}
    restored = pax.load(path, like)
    assert isinstance(restored["w"], np.ndarray) and isinstance(restored["b"], jax.Array)
    assert restored["step"] == 7 and type(restored["step"]) is int
    assert restored["lr"] == 0.5 and type(restored["lr"]) is float
    model = Everything(seed=3)
    pax.save(path, model)
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), model)
    assert_bit_identical(pax.load(path, abstract), model)


def test_load_keeps_the_sharding_of_like(tmp_path):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    tree = {"x": jnp.arange(16.0)}
    path = tmp_path / "sharded.npz"
    pax.save(path, {"x": jax.device_put(tree["x"], sharding)})
    restored = pax.load(path, {"x": jax.device_put(jnp.zeros(16), sharding)})
    assert restored["x"].sharding == sharding
    np.testing.assert_array_equal(restored["x"], tree["x"])


# --- validation --------------------------------------------------------------------------------


def test_every_mismatch_is_listed_in_one_error(tmp_path):
    path = tmp_path / "a.npz"
    pax.save(path, {"a": jnp.ones(3), "b": jnp.ones(2), "c": jnp.ones(2), "gone": jnp.ones(1)})
    like = {
        "a": jnp.ones(4),
        "b": jnp.ones(2, jnp.bfloat16),
        "c": jnp.ones(2),
        "new": jnp.ones(1),
    }
    with pytest.raises(pax.CheckpointMismatchError, match="Nothing was loaded") as info:
        pax.load(path, like)
    message = str(info.value)
    assert "1 missing from the checkpoint:\n  ['new']" in message
    assert "1 unexpected in the checkpoint:\n  ['gone']" in message
    assert "['a']: checkpoint float32[3], like float32[4]" in message
    assert "['b']: checkpoint float32[2], like bfloat16[2]" in message
    assert "['c']" not in message
    assert "strict=False" in message and "astype" in message


def test_non_strict_loads_the_intersection_and_reports(tmp_path):
    path = tmp_path / "backbone.npz"
    old = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 5))
    pax.save(path, old)
    new = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 5), pax.nn.Linear(5, 1))
    tree, report = pax.load(path, new, strict=False)
    assert report == pax.LoadReport(
        missing=(".modules[2].weight", ".modules[2].bias"), unexpected=()
    )
    assert_bit_identical(tree.modules[:2], old.modules)
    assert tree.modules[2].weight is new.modules[2].weight  # missing leaves keep like's value
    small = pax.nn.Sequential(pax.nn.Linear(2, 3))
    tree, report = pax.load(path, small, strict=False)
    assert report.missing == () and report.unexpected == (".modules[1].weight", ".modules[1].bias")
    assert_bit_identical(tree.modules[0], old.modules[0])


def test_non_strict_still_refuses_shape_mismatches(tmp_path):
    path = tmp_path / "head.npz"
    pax.save(path, pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 5)))
    like = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(5, 1))
    with pytest.raises(
        pax.CheckpointMismatchError,
        match=r"2 with another shape or dtype:\n"
        r"  \.modules\[1\]\.weight: checkpoint float32\[3, 5\], like float32\[5, 1\]\n"
        r"  \.modules\[1\]\.bias: checkpoint float32\[5\], like float32\[1\]\n",
    ):
        pax.load(path, like, strict=False)


def test_another_root_type_is_explained(tmp_path):
    path = tmp_path / "run.npz"
    model = pax.nn.Linear(2, 2)
    pax.save(path, (model, MomentumSGD(model.parameters())))
    with pytest.raises(
        pax.CheckpointMismatchError,
        match=r"does not match `like` \(saved: tuple, like: Linear\)(?s:.*)"
        r"  \[0\]\.weight\n(?s:.*)Fix: pass a `like` with the structure of the saved tuple",
    ):
        pax.load(path, model)


def test_mismatch_listing_is_capped(tmp_path):
    path = tmp_path / "many.npz"
    pax.save(path, [jnp.ones(1)] * 30)
    with pytest.raises(
        pax.CheckpointMismatchError, match=r"(?s)30 unexpected.*\[19\]\n  \.\.\. and 10 more"
    ):
        pax.load(path, [], strict=True)


# --- damaged files -----------------------------------------------------------------------------


def _small_checkpoint(tmp_path):
    tree = {"w": jnp.arange(3, dtype=jnp.bfloat16), "k": jax.random.key(0)}
    path = tmp_path / "small.npz"
    pax.save(path, tree)
    return path, tree


def test_every_truncation_raises(tmp_path):
    path, tree = _small_checkpoint(tmp_path)
    data = path.read_bytes()
    for n in [*range(0, len(data) - 64, 7), *range(len(data) - 64, len(data))]:
        path.write_bytes(data[:n])
        with pytest.raises(pax.CheckpointError, match="truncated or corrupted"):
            pax.load(path, tree)


def test_every_flipped_byte_raises_or_loads_identical_values(tmp_path):
    path, tree = _small_checkpoint(tmp_path)
    data = path.read_bytes()
    raised = 0
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            restored = pax.load(path, tree)
        except pax.CheckpointError:
            raised += 1
        else:  # only bytes the zip format ignores (e.g. timestamps) may change
            assert_bit_identical(restored, tree)
    assert raised > 0.7 * len(data)


def test_files_that_are_not_pax_checkpoints(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"")
    with pytest.raises(pax.CheckpointError, match="truncated or corrupted"):
        pax.load(path, {})
    np.savez(path, w=np.ones(2))
    with pytest.raises(pax.CheckpointError, match=r"not a pax checkpoint.*written by pax\.save"):
        pax.load(path, {"w": np.ones(2)})
    with pytest.raises(FileNotFoundError):
        pax.load(tmp_path / "missing.npz", {})


def test_newer_format_version_asks_to_upgrade(tmp_path, monkeypatch):
    path = tmp_path / "future.npz"
    monkeypatch.setattr(save_load, "VERSION", checkpoint.VERSION + 1)  # what pax.save writes
    pax.save(path, {"w": jnp.ones(2)})
    monkeypatch.undo()
    with pytest.raises(pax.CheckpointError, match=r"format version 2.*Fix: upgrade pax"):
        pax.load(path, {"w": jnp.ones(2)})


class _Boom:
    def __reduce__(self):
        return (os.mkdir, (os.environ["PAX_TEST_MARKER"],))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PAX_TEST_MARKER", str(marker))
    good, evil = tmp_path / "good.npz", tmp_path / "evil.npz"
    pax.save(good, {"w": jnp.ones(2)})
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        dst.writestr(f"{checkpoint.METADATA_KEY}.npy", src.read(f"{checkpoint.METADATA_KEY}.npy"))
        with dst.open("['w'].npy", "w") as f:
            np.lib.format.write_array(f, np.array([_Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(pax.CheckpointError, match=r"corrupted.*allow_pickle=False"):
        pax.load(evil, {"w": jnp.ones(2)})
    assert not marker.exists()


# --- atomic writes -----------------------------------------------------------------------------


def test_a_failure_midway_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = Everything(seed=1)
    pax.save(path, old)
    before = path.read_bytes()
    calls = []
    real_write = checkpoint_io.write_array

    def failing_write(archive, name, array):
        calls.append(name)
        if len(calls) == 4:
            raise OSError("disk full")
        real_write(archive, name, array)

    monkeypatch.setattr(checkpoint_io, "write_array", failing_write)
    with pytest.raises(OSError, match="disk full"):
        pax.save(path, Everything(seed=2))
    assert len(calls) == 4  # it failed halfway, after writing 3 entries
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]  # the temporary file was removed
    assert_bit_identical(pax.load(path, Everything(seed=3)), old)


def test_a_crash_midway_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "model.npz"
    pax.save(path, {"w": jnp.arange(4.0), "v": jnp.ones(3)})
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import os, jax.numpy as jnp, pax
        from pax._src.checkpoint import io as checkpoint_io
        real = checkpoint_io.write_array
        def crash(archive, name, array):
            if name == "['w']":
                os._exit(3)  # the process dies: no exception handler, no cleanup
            real(archive, name, array)
        checkpoint_io.write_array = crash
        pax.save({str(path)!r}, {{"w": jnp.zeros(4), "v": jnp.zeros(3)}})
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert result.returncode == 3
    assert path.read_bytes() == before
    leftovers = [name for name in os.listdir(tmp_path) if name != "model.npz"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.npz.")
    restored = pax.load(path, {"w": jnp.zeros(4), "v": jnp.zeros(3)})
    np.testing.assert_array_equal(restored["w"], jnp.arange(4.0))


def test_write_is_flushed_and_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    pax.save(tmp_path / "m.npz", {"w": jnp.ones(2)})
    assert events == [("fsync", "file"), ("replace", "m.npz"), ("fsync", "dir")]


def test_saving_again_replaces_the_file(tmp_path):
    path = tmp_path / "m.npz"
    pax.save(path, {"w": jnp.zeros(2)})
    pax.save(path, {"w": jnp.ones(2)})
    np.testing.assert_array_equal(pax.load(path, {"w": jnp.zeros(2)})["w"], jnp.ones(2))
    assert os.listdir(tmp_path) == ["m.npz"]


# --- user errors -------------------------------------------------------------------------------


def test_save_rejects_non_array_leaves(tmp_path):
    with pytest.raises(pax.CheckpointError, match=r"leaf at \['name'\] is a str, not an array"):
        pax.save(tmp_path / "x.npz", {"name": "resnet", "w": jnp.ones(2)})
    with pytest.raises(pax.CheckpointError, match=r"\['s'\] has dtype <U3.*astype"):
        pax.save(tmp_path / "x.npz", {"s": np.array(["abc"])})
    assert os.listdir(tmp_path) == []


def test_save_explains_a_donated_array(tmp_path):
    model = pax.nn.Linear(2, 2)
    model.bias.delete()  # what donating the model to a jitted step does to its buffers
    with pytest.raises(pax.CheckpointError, match=r"array at \.bias was deleted.*donated"):
        pax.save(tmp_path / "x.npz", model)
    assert os.listdir(tmp_path) == []


def test_like_must_hold_arrays(tmp_path):
    pax.save(tmp_path / "x.npz", {"w": jnp.ones(2)})
    with pytest.raises(pax.CheckpointError, match=r"leaf of `like` at \['w'\] is a str"):
        pax.load(tmp_path / "x.npz", {"w": "weights"})


def test_non_native_byte_order_round_trips(tmp_path):
    big_endian = np.arange(4, dtype=">f4")
    pax.save(tmp_path / "x.npz", {"w": big_endian})
    restored = pax.load(tmp_path / "x.npz", {"w": np.zeros(4, np.float32)})["w"]
    np.testing.assert_array_equal(restored, big_endian)
    assert restored.dtype == np.float32


def test_save_and_load_inside_jit_explain_the_fix(tmp_path):
    path = tmp_path / "x.npz"

    def save_inside(x):
        pax.save(path, {"x": x})
        return x

    with pytest.raises(pax.CheckpointError, match=r"tracer.*Fix: return the model"):
        jax.jit(save_inside)(jnp.ones(2))
    pax.save(path, {"x": jnp.ones(2)})

    def load_inside(x):
        return pax.load(path, {"x": x})

    with pytest.raises(pax.CheckpointError, match=r"tracers.*Fix: load outside it"):
        jax.jit(load_inside)(jnp.ones(2))
