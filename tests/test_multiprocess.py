"""Multi-process runs: `pax.distributed.initialize` (its settings and errors), a cross-process
`jax.jit` sum, and char_rnn as 2 processes x 4 devices against 1 process x 8 devices and 1
device, for each ``--sharding`` (slow: each run starts processes)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import pax
import pax.launch
from pax._src import distributed as distributed_impl

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 300  # seconds for one launched run: the machine may be busy


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"pax_mp_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


char_rnn = _load("char_rnn")


# --- pax.distributed.initialize ------------------------------------------------------------------


@pytest.fixture
def no_join(monkeypatch):
    """Records calls of jax.distributed.initialize instead of joining a run."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    return calls


def test_nothing_set_and_no_cluster_is_one_process(no_join):
    assert pax.distributed.initialize(env={}) == 1
    assert pax.distributed.initialize(num_processes=1, process_id=0, env={}) == 1
    assert pax.distributed.initialize(env={"PAX_NUM_PROCESSES": "1"}) == 1
    assert no_join == []


def test_settings_come_from_arguments_or_the_environment(no_join, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    env = {"PAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "PAX_NUM_PROCESSES": "3"}
    assert pax.distributed.initialize(process_id=2, env=env) == 3
    assert pax.distributed.initialize("h:5", 2, 1, env=env) == 2
    env["PAX_PROCESS_ID"] = "1"
    assert pax.distributed.initialize(env=env) == 3
    assert no_join == [
        (("10.0.0.1:1234",), {"num_processes": 3, "process_id": 2}),
        (("h:5",), {"num_processes": 2, "process_id": 1}),
        (("10.0.0.1:1234",), {"num_processes": 3, "process_id": 1}),
    ]


def test_a_detected_cluster_is_left_to_jax(no_join, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    slurm = dict.fromkeys(distributed_impl.CLUSTER_MARKERS[0], "1")
    assert pax.distributed.cluster_detected(slurm)
    assert not pax.distributed.cluster_detected({"SLURM_JOB_ID": "1"})
    assert pax.distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "a,b"})
    assert pax.distributed.initialize(env=slurm) == 4
    assert no_join == [((), {})]  # no arguments: JAX reads the cluster's settings


def test_initialize_errors_name_the_setting_and_the_fix(no_join):
    with pytest.raises(ValueError, match=r"process_id \(or PAX_PROCESS_ID\) is not set\. Fix"):
        pax.distributed.initialize("h:1", 2, env={})
    with pytest.raises(
        ValueError,
        match=r"coordinator_address \(or PAX_COORDINATOR_ADDRESS\) and process_id",
    ):
        pax.distributed.initialize(num_processes=2, env={})
    with pytest.raises(ValueError, match=r"PAX_NUM_PROCESSES='two' is not a non-negative integer"):
        pax.distributed.initialize(env={"PAX_NUM_PROCESSES": "two"})
    with pytest.raises(ValueError, match=r"process_id=-1 is not a non-negative integer"):
        pax.distributed.initialize("h:1", 2, -1, env={})
    with pytest.raises(ValueError, match=r"process_id=2 is out of range for num_processes=2"):
        pax.distributed.initialize("h:1", 2, 2, env={})
    with pytest.raises(ValueError, match=r"process_id=1 is out of range for num_processes=1"):
        pax.distributed.initialize(num_processes=1, process_id=1, env={})
    with pytest.raises(ValueError, match=r"num_processes=0; it must be >= 1"):
        pax.distributed.initialize("h:1", 0, 0, env={})
    with pytest.raises(ValueError, match=r"'10.0.0.1' is not 'host:port'. Fix: e.g. "):
        pax.distributed.initialize("10.0.0.1", 2, 0, env={})
    assert no_join == []


# --- real multi-process runs (slow) --------------------------------------------------------------

CROSS_PROCESS_SUM = """\
import jax, numpy as np, pax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
assert pax.distributed.initialize() == 2
mesh = Mesh(np.array(jax.devices()), ("data",))
x = np.arange(12.0).reshape(6, 2)
g = jax.make_array_from_callback(x.shape, NamedSharding(mesh, P("data")), lambda i: x[i])
total = jax.jit(lambda a: a.sum(0), out_shardings=NamedSharding(mesh, P()))(g)
print(jax.process_count(), jax.device_count(), jax.local_device_count(), np.asarray(total))
"""


@pytest.mark.slow
def test_two_processes_join_and_sum_across_processes(tmp_path, capsys):
    program = tmp_path / "sum.py"
    program.write_text(CROSS_PROCESS_SUM)
    assert pax.launch.launch([str(program)], 2, timeout=TIMEOUT, devices_per_process=3) == 0
    out = capsys.readouterr().out
    assert "2 6 3 [30. 36.]" in out  # 2 processes, 6 devices (3 each), the columns' sums


def _char_argv(tmp_path: Path, sharding: str, *extra: str) -> list[str]:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 40)
    return [
        *("--data", str(corpus), "--batch-size", "16", "--seq-len", "16", "--embed-dim", "16"),
        *("--hidden-dim", "32", "--learning-rate", "1e-2", "--no-progress", "--checkpoint", ""),
        *("--steps", "3", "--sample-every", "0", "--sample-length", "4", "--sharding", sharding),
        *extra,
    ]


def _two_processes(tmp_path: Path, argv: list[str]) -> list[subprocess.CompletedProcess]:
    """Runs char_rnn as 2 processes x 4 devices, capturing both processes' output; ends both
    (their process groups) if they outlive `TIMEOUT`."""
    address = f"127.0.0.1:{pax.launch.free_port()}"
    children = [
        subprocess.Popen(
            [sys.executable, str(EXAMPLES / "char_rnn.py"), *argv],
            env=pax.launch.child_env(i, 2, address, devices_per_process=4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for i in range(2)
    ]
    results = []
    try:
        for child in children:
            out, err = child.communicate(timeout=TIMEOUT)
            results.append(subprocess.CompletedProcess(child.args, child.returncode, out, err))
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    return results


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
    """The reference: char_rnn on one device, data-parallel."""
    tmp_path = tmp_path_factory.mktemp("one")
    args = char_rnn.parse_args(_char_argv(tmp_path, "data"))
    return char_rnn.run(args, devices=jax.devices()[:1])["losses"]


@pytest.mark.slow
def test_char_rnn_2_processes_only_process_0_speaks(tmp_path, one_device_losses):
    metrics = tmp_path / "metrics.json"
    extra = ("--metrics", str(metrics), "--prompt", "the ", "--sample-every", "3")
    first, second = _two_processes(tmp_path, _char_argv(tmp_path, "data", *extra))
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "8 device(s) (cpu, 2 processes), mesh {'data': 8}" in first.stderr
    assert first.stdout.count("--- sample at step 3") == 1
    assert "sample" not in second.stdout and "char_rnn:" not in second.stderr
    losses = json.loads(metrics.read_text())["losses"]
    np.testing.assert_allclose(losses, one_device_losses, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["data", "fsdp", "tensor"])
def test_char_rnn_2x4_devices_match_1x8_and_1_device(tmp_path, sharding, one_device_losses):
    metrics = tmp_path / "metrics.json"
    argv = [str(EXAMPLES / "char_rnn.py"), *_char_argv(tmp_path, sharding)]
    argv += ["--metrics", str(metrics)]
    code = pax.launch.launch(argv, 2, timeout=TIMEOUT, devices_per_process=4)
    assert code == 0
    two_by_four = json.loads(metrics.read_text())["losses"]
    one_by_eight = char_rnn.run(char_rnn.parse_args(_char_argv(tmp_path, sharding)))
    weight = one_by_eight["model"].lstm.weight_ih
    expected = {"data": (), "fsdp": (None, "data"), "tensor": (None, "model")}[sharding]
    assert tuple(weight.sharding.spec) == expected
    assert len(two_by_four) == len(one_by_eight["losses"]) == 3
    np.testing.assert_allclose(one_by_eight["losses"], one_device_losses, rtol=1e-5)
    np.testing.assert_allclose(two_by_four, one_device_losses, rtol=1e-5)
    assert one_device_losses[-1] < one_device_losses[0]  # it trains


def test_char_rnn_sharding_flags_are_checked(tmp_path):
    args = char_rnn.parse_args(_char_argv(tmp_path, "tensor", "--model-parallel", "3"))
    with pytest.raises(ValueError, match=r"--model-parallel 3 does not divide the 8 devices"):
        char_rnn.run(args)
    args = char_rnn.parse_args(_char_argv(tmp_path, "tensor", "--use-haiku"))
    with pytest.raises(ValueError, match=r"--sharding tensor splits the pax\.nn layers"):
        char_rnn.run(args)
    args = char_rnn.parse_args([*_char_argv(tmp_path, "tensor"), "--batch-size", "6"])
    with pytest.raises(ValueError, match=r"--batch-size 6 cannot be split evenly over the 4 rows"):
        char_rnn.run(args)


@pytest.mark.slow
def test_char_rnn_checkpoint_of_2_processes_matches_1_process_and_resumes(tmp_path):
    two = str(tmp_path / "two")  # checkpoint directories (pax.CheckpointManager)
    argv = [str(EXAMPLES / "char_rnn.py"), *_char_argv(tmp_path, "fsdp"), "--checkpoint", two]
    assert pax.launch.launch(argv, 2, timeout=TIMEOUT, devices_per_process=4) == 0
    one = str(tmp_path / "one")
    args = char_rnn.parse_args([*_char_argv(tmp_path, "data"), "--checkpoint", one])
    trained = char_rnn.run(args, devices=jax.devices()[:1])
    like = (trained["model"], trained["optimizer"])
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        pax.CheckpointManager(two).restore(like),
        pax.CheckpointManager(one).restore(like),
    )
    resume = ["--checkpoint", two, "--resume", "--steps", "1"]
    resumed = char_rnn.run(char_rnn.parse_args([*_char_argv(tmp_path, "tensor"), *resume]))
    assert resumed["losses"][0] < trained["losses"][0] - 0.2  # it starts from the trained model
    assert resumed["step"] == trained["step"] + 1  # and counts on from its step


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.slow
def test_mnist_2_processes_match_1_process(tmp_path):
    mnist = _load("mnist")
    rng = np.random.default_rng(0)
    for key, name in mnist.FILES.items():
        n = 64 if key.startswith("train") else 24
        shape = (n, 28, 28) if key.endswith("images") else (n,)
        _write_idx(tmp_path / name, rng.integers(0, 256 if len(shape) > 1 else 10, shape))
    argv = ["--data-dir", str(tmp_path), "--epochs", "1", "--batch-size", "16", "--width", "4"]
    argv += ["--no-progress", "--plot", ""]
    two = str(tmp_path / "two")
    program = [str(EXAMPLES / "mnist.py"), *argv, "--checkpoint", two]
    assert pax.launch.launch(program, 2, timeout=TIMEOUT, devices_per_process=2) == 0
    # the same 4 devices in one process (against 1 device, Adam and BatchNorm amplify float
    # noise on these random images to ~2e-3 in 4 steps, in one process as in two)
    four = mnist.run(mnist.parse_args([*argv, "--checkpoint", ""]), devices=jax.devices()[:4])
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        pax.CheckpointManager(two).restore((four["model"], four["optimizer"]))[0],
        four["model"],
    )
