"""The examples: data loading, error messages, and short training runs (slow) on 1 and 8 devices."""

import gzip
import importlib.util
import os
import struct
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"pax_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _no_false_alarm():
    """Every example runs with the guards on: no lost change may be left pending by a correct
    program (a false alarm would raise here, or inside the example)."""
    yield
    from pax._src.core import tracing

    tracing.check_pending()
    assert not [entry for entry in tracing.PENDING if entry.thread == threading.get_ident()]


mnist = _load("mnist")
char_rnn = _load("char_rnn")
dp = _load("_data_parallel")


def _mnist_dir() -> Path | None:
    for candidate in (os.environ.get("PAX_MNIST_DIR"), ROOT.parent / "shared" / "data" / "mnist"):
        if candidate and (Path(candidate) / "t10k-labels-idx1-ubyte.gz").is_file():
            return Path(candidate)
    return None


def _write_idx(path: Path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = header + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(body)
    else:
        path.write_bytes(body)


def _fake_mnist(n_train: int, n_test: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.random((n_train, 28, 28, 1), dtype=np.float32),
        "train_labels": rng.integers(0, 10, n_train).astype(np.int32),
        "test_images": rng.random((n_test, 28, 28, 1), dtype=np.float32),
        "test_labels": rng.integers(0, 10, n_test).astype(np.int32),
    }


def _leaves_equal(a, b) -> None:
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


# --- MNIST data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_read_idx_round_trip(tmp_path, name):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / name, images, 0x08)
    np.testing.assert_array_equal(mnist.read_idx(tmp_path / name), images)
    ints = np.array([[1, -2], [300000, 4]], dtype=">i4")
    _write_idx(tmp_path / "i.idx", ints, 0x0C)
    out = mnist.read_idx(tmp_path / "i.idx")
    np.testing.assert_array_equal(out, ints)
    assert out.shape == (2, 2)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        mnist.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\0" * 3)
    with pytest.raises(ValueError, match=r"header says shape \(10,\) but the file holds 3"):
        mnist.read_idx(tmp_path / "short")


def test_load_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    raw = {}
    for key, name in mnist.FILES.items():
        n = 6 if key.startswith("train") else 4
        if key.endswith("images"):
            raw[key] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            _write_idx(tmp_path / f"{name}.gz", raw[key], 0x08)
        else:
            raw[key] = rng.integers(0, 10, n, dtype=np.uint8)
            _write_idx(tmp_path / name, raw[key], 0x08)  # uncompressed works too
    data = mnist.load_mnist(str(tmp_path))
    assert data["train_images"].shape == (6, 28, 28, 1)
    assert data["train_images"].dtype == np.float32
    np.testing.assert_allclose(data["test_images"][..., 0], raw["test_images"] / 255.0, rtol=1e-6)
    assert data["test_labels"].dtype == np.int32
    np.testing.assert_array_equal(data["train_labels"], raw["train_labels"])


def test_load_mnist_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.delenv("PAX_MNIST_DIR", raising=False)
    monkeypatch.setattr(mnist, "_from_tfds", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"MNIST not found(.|\n)*--data-dir"):
        mnist.load_mnist(None)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        mnist.load_mnist(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"missing train-images-idx3-ubyte\[\.gz\]"):
        mnist.load_mnist(str(tmp_path))
    monkeypatch.setenv("PAX_MNIST_DIR", str(tmp_path / "from_env"))
    with pytest.raises(FileNotFoundError, match="from_env: no such folder"):
        mnist.load_mnist(None)


def test_random_shift_moves_whole_images():
    rng = np.random.default_rng(0)
    images = rng.random((20, 6, 7, 1)).astype(np.float32) + 1.0  # no zeros inside
    assert mnist.random_shift(images, 0, rng) is images
    shifted = mnist.random_shift(images, 2, rng)
    assert shifted.shape == images.shape
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    seen = set()
    for original, out in zip(padded, shifted):
        offsets = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(original[dy : dy + 6, dx : dx + 7], out)
        ]
        assert len(offsets) == 1
        seen.add(offsets[0])
    assert len(seen) > 5  # the offsets vary from image to image


@pytest.mark.slow
@pytest.mark.skipif(_mnist_dir() is None, reason="MNIST files not found (set PAX_MNIST_DIR)")
def test_load_real_mnist():
    data = mnist.load_mnist(str(_mnist_dir()))
    assert data["train_images"].shape == (60000, 28, 28, 1)
    assert data["test_images"].shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(data["train_labels"][:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(np.bincount(data["test_labels"])[:2], [980, 1135])
    assert abs(float(data["train_images"].mean()) - 0.1307) < 1e-3


# --- data parallelism and the char-RNN's data ----------------------------------------------------


def test_batch_size_must_split_over_devices():
    mesh = dp.make_mesh()
    assert mesh.size == 8
    with pytest.raises(ValueError, match=r"--batch-size 20 cannot be split evenly over 8 devices"):
        dp.check_batch_size(20, mesh)
    with pytest.raises(ValueError, match=r"Fix: --batch-size 16"):
        dp.check_batch_size(20, mesh)
    dp.check_batch_size(24, mesh)
    dp.check_batch_size(3, dp.make_mesh(jax.devices()[:1]))
    with pytest.raises(ValueError, match="empty"):
        dp.make_mesh([])


def test_char_rnn_rejects_bad_batch_before_loading():
    args = char_rnn.parse_args(["--batch-size", "12", "--data", "/nonexistent.txt"])
    with pytest.raises(ValueError, match="--batch-size 12 cannot be split evenly over 8"):
        char_rnn.run(args)


def test_char_rnn_resume_needs_a_checkpoint(tmp_path):
    argv = ["--resume", "--checkpoint", str(tmp_path / "none"), "--data", __file__]
    with pytest.raises(
        FileNotFoundError, match=r"--resume: no checkpoint in --checkpoint '.*none'"
    ):
        char_rnn.run(char_rnn.parse_args(argv))
    with pytest.raises(SystemExit, match="train once without --resume"):
        char_rnn.main(argv)


def test_shard_batch_splits_the_leading_axis():
    mesh = dp.make_mesh()
    x = np.arange(16 * 3).reshape(16, 3)
    sharded = dp.shard_batch({"x": x}, mesh)["x"]
    np.testing.assert_array_equal(sharded, x)
    assert [s.data.shape for s in sharded.addressable_shards] == [(2, 3)] * 8


def test_char_rnn_corpus_and_batches(tmp_path):
    assert b"class Module" in char_rnn.default_corpus()
    with pytest.raises(FileNotFoundError, match="no such file"):
        char_rnn.load_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "t.txt").write_text("héllo wörld, " * 20, encoding="utf-8")
    corpus = char_rnn.load_corpus(str(tmp_path / "t.txt"))
    assert corpus.dtype == np.uint8
    x, y = next(char_rnn.batches(corpus, 4, 10, seed=0))
    assert x.shape == y.shape == (4, 10)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    text = corpus.tobytes()
    for row_x, row_y in zip(x, y):
        assert bytes(row_x.astype(np.uint8).tolist()) + bytes([row_y[-1]]) in text
    with pytest.raises(ValueError, match="fewer than --seq-len 300"):
        next(char_rnn.batches(corpus, 4, 300, seed=0))


@pytest.mark.slow
def test_generate_continues_the_prompt():
    model = char_rnn.LanguageModel(256, 8, 16)
    text = char_rnn.generate(model, "abc", 12, jax.random.PRNGKey(0))
    assert text.startswith("abc")
    assert len(text.encode("utf-8", errors="surrogateescape")) >= 3
    same = char_rnn.generate(model, "abc", 12, jax.random.PRNGKey(0))
    assert same == text
    with pytest.raises(ValueError, match="--prompt must not be empty"):
        char_rnn.generate(model, "", 5, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="--temperature must be > 0, got 0"):
        char_rnn.generate(model, "a", 5, jax.random.PRNGKey(0), temperature=0)


# --- training runs (slow) -----------------------------------------------------------------------


def _char_args(tmp_path, *extra):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 40)
    return char_rnn.parse_args(
        ["--data", str(corpus), "--batch-size", "16", "--seq-len", "16", "--embed-dim", "16"]
        + ["--hidden-dim", "32", "--learning-rate", "1e-2", "--no-progress"]
        + ["--checkpoint", str(tmp_path / "ckpt"), *extra]
    )


@pytest.mark.slow
def test_char_rnn_trains_on_8_devices(tmp_path, capsys):
    args = _char_args(tmp_path, "--steps", "12", "--sample-every", "6", "--prompt", "the ")
    args.checkpoint_every = 5
    result = char_rnn.run(args)
    losses = result["losses"]
    assert len(losses) == 12
    assert losses[-1] < losses[0] - 0.5, losses
    out = capsys.readouterr()
    assert "8 device(s)" in out.err
    assert out.out.count("--- sample at step") == 2
    assert "\nthe " in out.out
    weight = result["model"].head.weight
    assert len(weight.sharding.device_set) == 8
    assert weight.sharding.is_fully_replicated
    # steps 5, 10 (--checkpoint-every 5) and 12 (the end), the latest holds the final model and
    # optimizer with the last loss, and --resume starts from it and counts on
    manager = pax.CheckpointManager(args.checkpoint)
    assert manager.all_steps() == [5, 10, 12] and result["step"] == 12
    assert manager.metrics(12) == {"loss": pytest.approx(losses[-1])}
    like = (char_rnn.LanguageModel(256, 16, 32), result["optimizer"])
    model, _ = manager.restore(like)
    _leaves_equal(model, result["model"])
    resumed = char_rnn.run(_char_args(tmp_path, "--steps", "1", "--resume"))
    assert resumed["step"] == 13
    assert pax.CheckpointManager(args.checkpoint).all_steps() == [10, 12, 13]  # the last 3
    fresh = char_rnn.run(_char_args(tmp_path, "--steps", "1", "--checkpoint", ""))
    assert resumed["losses"][0] < fresh["losses"][0] - 0.5


@pytest.mark.slow
def test_char_rnn_8_devices_match_1_device(tmp_path):
    args = _char_args(tmp_path, "--steps", "4", "--sample-every", "0", "--sample-length", "4")
    args.checkpoint = ""
    one = char_rnn.run(args, devices=jax.devices()[:1])
    eight = char_rnn.run(args, devices=jax.devices())
    assert len(one["model"].head.weight.sharding.device_set) == 1
    assert len(eight["model"].head.weight.sharding.device_set) == 8
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        eight["model"],
        one["model"],
    )


@pytest.mark.slow
def test_char_rnn_with_haiku_layers(tmp_path):
    args = _char_args(tmp_path, "--steps", "6", "--sample-every", "0", "--use-haiku")
    result = char_rnn.run(args)
    assert isinstance(result["model"].lstm, pax.haiku.HaikuModule)
    assert result["losses"][-1] < result["losses"][0]


@pytest.mark.slow
@pytest.mark.parametrize("use_haiku", [False, True])
def test_mnist_runs_on_8_devices(tmp_path, capsys, use_haiku):
    data = _fake_mnist(64, 37)
    argv = ["--epochs", "2", "--batch-size", "16", "--width", "4", "--max-steps", "2"]
    argv += ["--no-progress", "--checkpoint", str(tmp_path / "m")]
    result = mnist.run(mnist.parse_args(argv + (["--use-haiku"] if use_haiku else [])), data=data)
    assert len(result["accuracies"]) == 2
    assert "epoch 2: test accuracy" in capsys.readouterr().err
    model = result["model"]
    assert len(jax.tree_util.tree_leaves(model)[0].sharding.device_set) == 8
    # the padded, sharded evaluation counts exactly what one big eval() batch counts
    logits = model.eval()(jnp.asarray(data["test_images"]))
    expected = np.mean(np.argmax(logits, -1) == data["test_labels"])
    assert result["accuracies"][-1] == pytest.approx(expected)
    # BatchNorm's moving averages moved in training, and eval() used them
    states = [x for x in jax.tree_util.tree_leaves(model.states()) if x.ndim]
    assert states and any(float(jnp.abs(s).sum()) > 0 for s in states)
    manager = pax.CheckpointManager(tmp_path / "m")
    assert manager.all_steps() == [4] and result["step"] == 4  # 2 epochs of 2 steps
    restored, _ = manager.restore((mnist.conv_net(use_haiku, width=4), result["optimizer"]))
    _leaves_equal(restored, model)


@pytest.mark.slow
def test_mnist_haiku_and_native_models_match_in_size():
    def count(tree):
        return sum(x.size for x in jax.tree_util.tree_leaves(tree))

    native, haiku = mnist.conv_net(False, width=4), mnist.conv_net(True, width=4)
    assert count(native.parameters()) == count(haiku.parameters())
    x = jnp.zeros((2, 28, 28, 1))
    assert native(x).shape == haiku(x).shape == (2, 10)


@pytest.mark.slow
def test_mnist_8_devices_match_1_device():
    data = _fake_mnist(48, 16)
    argv = ["--epochs", "1", "--batch-size", "16", "--width", "4", "--no-progress"]
    args = mnist.parse_args([*argv, "--checkpoint", ""])
    one = mnist.run(args, devices=jax.devices()[:1], data=data)
    eight = mnist.run(args, devices=jax.devices(), data=data)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        eight["model"],
        one["model"],
    )


@pytest.mark.slow
@pytest.mark.skipif(_mnist_dir() is None, reason="MNIST files not found (set PAX_MNIST_DIR)")
def test_mnist_learns_real_digits():
    data = mnist.load_mnist(str(_mnist_dir()))
    data = {k: v[:6400] if k.startswith("train") else v[:2000] for k, v in data.items()}
    argv = ["--epochs", "1", "--batch-size", "64", "--width", "8", "--no-progress"]
    result = mnist.run(mnist.parse_args([*argv, "--checkpoint", ""]), jax.devices()[:1], data)
    assert result["accuracies"][0] > 0.8  # chance is 0.1


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_char_rnn_precision_flag(tmp_path, precision):
    args = _char_args(
        tmp_path,
        "--steps",
        "3",
        "--sample-every",
        "0",
        "--sample-length",
        "4",
        "--precision",
        precision,
    )
    args.checkpoint = ""
    result = char_rnn.run(args, devices=jax.devices()[:2])
    model = result["model"]
    assert [type(m).__name__ for m in (model.embed, model.lstm, model.head)] == [
        "MixedPrecisionEmbed",
        "MixedPrecisionLSTM",
        "MixedPrecisionLinear",
    ]
    assert model.head.weight.dtype == jnp.float32  # parameters stay float32
    assert np.all(np.isfinite(result["losses"]))
    optimizer = result["optimizer"]
    if precision == "float16":  # loss scaling, in the optimizer state
        assert isinstance(optimizer, pax.optim.LossScaledOptimizer)
        assert bool(optimizer.last_step_finite)
    else:
        assert not isinstance(optimizer, pax.optim.LossScaledOptimizer)


def test_mnist_precision_flag():
    data = _fake_mnist(32, 16)
    argv = ["--epochs", "1", "--batch-size", "16", "--width", "4", "--max-steps", "2"]
    argv += ["--no-progress", "--checkpoint", "", "--precision", "float16"]
    result = mnist.run(mnist.parse_args(argv), devices=jax.devices()[:1], data=data)
    assert type(result["model"]).__name__ == "MixedPrecisionSequential"
    assert 0.0 <= result["accuracies"][-1] <= 1.0
    with pytest.raises(SystemExit):
        mnist.parse_args(["--precision", "float64"])
