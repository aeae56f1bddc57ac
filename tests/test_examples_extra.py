"""The examples' curves (``--plot``), the lazy head of the MNIST model, and the MNIST loader's
tensorflow-datasets path (offline, with ``tfds.testing.mock_data``)."""

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import pax

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"pax_extra_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mnist = _load("mnist")
char_rnn = _load("char_rnn")
plot = sys.modules["_plot"]  # the examples put examples/ on sys.path and import it
checkpoint = sys.modules["_checkpoint"]
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


def test_plot_path_defaults_to_the_checkpoint_directory():
    assert plot.default_path(None, "ckpt/mnist/") == os.path.join("ckpt/mnist/", "curves.png")
    assert plot.default_path(None, "ckpt/mnist") == os.path.join("ckpt", "mnist", "curves.png")
    assert plot.default_path(None, "") == ""  # --checkpoint '': nothing written
    assert plot.default_path("a.png", "ckpt/mnist") == "a.png"
    assert plot.default_path("", "ckpt/mnist") == ""
    assert mnist.parse_args([]).plot is None and char_rnn.parse_args([]).plot is None


def _ckpt_args(directory, resume=False, every=0):
    return argparse.Namespace(checkpoint=str(directory), resume=resume, checkpoint_every=every)


def test_checkpoint_flags_open_a_manager_and_the_resume_step(tmp_path):
    for example in (mnist, char_rnn):  # a directory per example, '' saves nothing
        args = example.parse_args([])
        assert args.checkpoint == f"checkpoints/{example.__name__.split('_', 2)[-1]}/"
        assert not args.resume and args.checkpoint_every == 0
    assert checkpoint.open_manager(_ckpt_args("")) == (None, 0)
    manager, first = checkpoint.open_manager(_ckpt_args(tmp_path / "run"))  # a fresh run
    assert first == 0 and manager.directory == str(tmp_path / "run")
    assert manager.max_to_keep == checkpoint.KEEP == 3
    manager.save(7, {"w": np.ones(2)}, {"loss": 0.5})
    manager.wait()
    manager, first = checkpoint.open_manager(_ckpt_args(tmp_path / "run", resume=True))
    assert first == 7  # --resume: the latest step
    np.testing.assert_allclose(manager.restore({"w": np.zeros(2)})["w"], np.ones(2))


def test_checkpoint_flags_refuse_a_missing_or_an_existing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--resume: no checkpoint in --checkpoint ''"):
        checkpoint.open_manager(_ckpt_args("", resume=True))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in --checkpoint .*Fix: train once"):
        checkpoint.open_manager(_ckpt_args(tmp_path / "absent", resume=True))
    assert not (tmp_path / "absent").exists()  # the failed --resume created nothing
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"--resume: no checkpoint in --checkpoint"):
        checkpoint.open_manager(_ckpt_args(tmp_path / "empty", resume=True))
    pax.CheckpointManager(tmp_path / "run").save(3, {"w": np.ones(2)})
    with pytest.raises(FileExistsError, match=r"holds the checkpoints of a run \(latest step 3\)"):
        checkpoint.open_manager(_ckpt_args(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"--checkpoint-every must be >= 0, got -1\. Fix"):
        checkpoint.open_manager(_ckpt_args(tmp_path / "new", every=-1))
    # false alarms: the same directories with --resume, a fresh one, '' without --resume
    assert checkpoint.open_manager(_ckpt_args(tmp_path / "run", resume=True))[1] == 3
    assert checkpoint.open_manager(_ckpt_args(tmp_path / "empty"))[1] == 0
    assert checkpoint.open_manager(_ckpt_args("", every=5)) == (None, 0)


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
    argv += ["--no-progress", "--checkpoint", str(tmp_path / "m")]
    result = mnist.run(mnist.parse_args(argv), devices=jax.devices()[:1], data=_fake_mnist(64, 20))
    assert len(result["losses"]) == 6 and len(result["accuracies"]) == 2
    assert result["plot"] == str(tmp_path / "m" / "curves.png")
    _check_plot(tmp_path / "m" / "curves.png", capsys.readouterr().err)


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
