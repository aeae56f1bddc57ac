"""examples/port_haiku.py runs offline: Haiku weights into native pax layers, fine-tuned, saved."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pax

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # ~45 s on a loaded 2-core machine (compiles, Haiku eagerly)


def _load():
    path = ROOT / "examples" / "port_haiku.py"
    spec = importlib.util.spec_from_file_location("pax_example_port_haiku", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_port_haiku_example(tmp_path):
    example = _load()
    result = example.main(["--out", str(tmp_path), "--steps", "5", "--resnet-steps", "0"])
    assert result["eval_diff"] < 1e-4 and result["train_diff"] < 1e-4
    assert result["losses"][-1] < result["losses"][0]  # the head learns
    with np.load(tmp_path / "haiku_convnet.params.npz") as saved:
        assert "mlp/~/linear_1/w" in saved.files and "conv2_d_1/w" in saved.files
    model = pax.load(result["checkpoint"], example.pax_model(16))
    assert isinstance(model.modules[7], pax.nn.MLP)


def test_port_haiku_example_resnet18_goes_native_and_back(tmp_path):
    example = _load()
    args = ["--out", str(tmp_path), "--steps", "1", "--resnet-steps", "3"]
    result = example.main([*args, "--batch-size", "4", "--image-size", "8"])
    assert result["resnet_diff"] < 1e-4 and result["resnet_export_diff"] < 1e-4
    assert result["resnet_losses"][-1] < result["resnet_losses"][0]  # it fine-tunes


def test_port_haiku_example_as_a_script(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "port_haiku.py"),
            "--out",
            str(tmp_path),
            "--steps",
            "2",
            "--resnet-steps",
            "1",
            "--image-size",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert "max |pax - haiku|" in out and "saved" in out
    assert "ResNet18 exported back to Haiku" in out
