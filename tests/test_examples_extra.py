"""The examples' curves (``--plot``), the lazy head of the MNIST model, and the MNIST loader's
tensorflow-datasets path (offline, with ``tfds.testing.mock_data``)."""

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"pax_extra_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mnist = _load("mnist")
char_rnn = _load("char_rnn")
plot = sys.modules["_plot"]  # the examples put examples/ on sys.path and import it
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _fake_mnist(n_train: int, n_test: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.random((n_train, 28, 28, 1), dtype=np.float32),
        "train_labels": rng.integers(0, 10, n_train).astype(np.int32),
        "test_images": rng.random((n_test, 28, 28, 1), dtype=np.float32),
        "test_labels": rng.integers(0, 10, n_test).astype(np.int32),
    }


def _check_plot(path: Path, err: str) -> None:
    if HAS_MATPLOTLIB:
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"curves written to {path}" in err
    else:
        assert not path.exists()
        assert "plot skipped: matplotlib is not installed" in err


def test_plot_path_defaults_next_to_the_checkpoint():
    assert plot.default_path(None, "ckpt/mnist.npz") == "ckpt/mnist.png"
    assert plot.default_path(None, "") == ""  # --checkpoint '': nothing written
    assert plot.default_path("a.png", "ckpt/mnist.npz") == "a.png"
    assert plot.default_path("", "ckpt/mnist.npz") == ""
    assert mnist.parse_args([]).plot is None and char_rnn.parse_args([]).plot is None


def test_save_curves_without_matplotlib_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plot.importlib.util, "find_spec", lambda name: None)
    assert not plot.save_curves(str(tmp_path / "c.png"), "t", [("step", "loss", [1.0, 0.5])])
    assert capsys.readouterr().err.strip() == (
        "plot skipped: matplotlib is not installed (pip install matplotlib)"
    )
    assert not (tmp_path / "c.png").exists()


def test_mnist_model_sizes_its_head_lazily():
    model = mnist.conv_net(False, width=4)
    heads = [m for m in model.submodules() if type(m).__name__ == "Linear"]
    assert heads[0].in_dim == 3 * 3 * 16 and heads[1].in_dim == 128
    assert model(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)


@pytest.mark.slow
def test_mnist_writes_its_curves(tmp_path, capsys):
    argv = ["--epochs", "2", "--batch-size", "16", "--width", "4", "--max-steps", "3"]
    argv += ["--no-progress", "--checkpoint", str(tmp_path / "m.npz")]
    result = mnist.run(mnist.parse_args(argv), devices=jax.devices()[:1], data=_fake_mnist(64, 20))
    assert len(result["losses"]) == 6 and len(result["accuracies"]) == 2
    assert result["plot"] == str(tmp_path / "m.png")
    _check_plot(tmp_path / "m.png", capsys.readouterr().err)


@pytest.mark.slow
def test_char_rnn_writes_its_curve(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 20)
    argv = ["--data", str(corpus), "--batch-size", "8", "--seq-len", "8", "--embed-dim", "8"]
    argv += ["--hidden-dim", "8", "--steps", "3", "--sample-every", "0", "--sample-length", "2"]
    argv += ["--no-progress", "--checkpoint", "", "--plot", str(tmp_path / "c.png")]
    result = char_rnn.run(char_rnn.parse_args(argv), devices=jax.devices()[:1])
    assert len(result["losses"]) == 3
    _check_plot(tmp_path / "c.png", capsys.readouterr().err)


def test_mnist_from_tensorflow_datasets_offline(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.delenv("PAX_MNIST_DIR", raising=False)
    with tfds.testing.mock_data(num_examples=12):
        data = mnist.load_mnist(None)
    for split in ("train", "test"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        assert images.shape == (12, 28, 28, 1) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0
        assert labels.shape == (12,) and labels.dtype == np.int32
