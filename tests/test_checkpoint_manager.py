"""pax.CheckpointManager: rotation, best-k, restore, asynchronous saves, kills and errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax._src.checkpoint import manager as manager_module


def tree(value: float) -> dict:
    return {"w": np.full((3, 2), value, np.float32), "b": jnp.full((2,), float(value), jnp.float32)}


def like() -> dict:
    return {"w": np.zeros((3, 2), np.float32), "b": jnp.zeros((2,))}


def check_restored(manager: pax.CheckpointManager, value: float, step: int | None = None) -> None:
    restored = manager.restore(like(), step=step)
    np.testing.assert_allclose(restored["w"], np.full((3, 2), value, np.float32))
    np.testing.assert_allclose(np.asarray(restored["b"]), np.full((2,), value, np.float32))


# --- rotation, best-k, restore -----------------------------------------------------------------


@pytest.mark.parametrize("async_save", [False, True])
def test_keeps_the_last_n(tmp_path, async_save):
    manager = pax.CheckpointManager(tmp_path, max_to_keep=2, async_save=async_save)
    for step in range(1, 5):
        manager.save(step, tree(step))
    manager.wait()
    assert manager.all_steps() == [3, 4]
    assert manager.latest_step() == 4
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoints.json",
        "step_00000003.npz",
        "step_00000004.npz",
    ]
    check_restored(manager, 4.0)  # the latest by default
    check_restored(manager, 3.0, step=3)


def test_keeps_everything_without_limits(tmp_path):
    manager = pax.CheckpointManager(tmp_path)
    for step in (0, 5, 7):
        manager.save(step, tree(step))
    assert manager.all_steps() == [0, 5, 7]
    assert manager.latest_step() == 7


def test_a_checkpoint_is_a_pax_save_file(tmp_path):
    manager = pax.CheckpointManager(tmp_path)
    net = pax.nn.Linear(2, 3, rng_key=jax.random.key(1))
    manager.save(3, net)
    loaded = pax.load(manager.path(3), pax.nn.Linear(2, 3, rng_key=jax.random.key(2)))
    np.testing.assert_allclose(np.asarray(loaded.weight), np.asarray(net.weight))


@pytest.mark.parametrize(
    ("mode", "max_to_keep", "expected", "best"),
    [
        ("min", None, [2, 4, 5], 2),  # best two: 1.0 (step 2), 2.0 (step 4); and the latest
        ("max", None, [1, 3, 5], 1),  # best two: 5.0 (step 1), 4.0 (step 3); and the latest
        ("min", 2, [2, 4, 5], 2),  # the last two are 4 and 5
        ("max", 3, [1, 3, 4, 5], 1),
    ],
)
def test_keeps_the_best_k(tmp_path, mode, max_to_keep, expected, best):
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 2.0, 5: 3.0}
    manager = pax.CheckpointManager(
        tmp_path, max_to_keep=max_to_keep, best_k=2, best_metric="loss", best_mode=mode
    )
    for step, loss in losses.items():
        manager.save(step, tree(step), metrics={"loss": loss, "accuracy": 0.5})
    assert manager.all_steps() == expected
    assert manager.best_step() == best
    assert manager.metrics(best) == {"loss": losses[best], "accuracy": 0.5}
    check_restored(manager, float(best), step=best)
    # the index survives a restart: a new manager ranks the same way
    again = pax.CheckpointManager(
        tmp_path, max_to_keep=max_to_keep, best_k=2, best_metric="loss", best_mode=mode
    )
    assert again.best_step() == best
    index = json.loads((tmp_path / "checkpoints.json").read_text())
    assert [r["step"] for r in index["checkpoints"]] == expected


def test_a_nan_metric_ranks_last(tmp_path):
    manager = pax.CheckpointManager(tmp_path, best_k=1, best_metric="loss")
    manager.save(1, tree(1), metrics={"loss": 2.0})
    manager.save(2, tree(2), metrics={"loss": float("nan")})
    manager.save(3, tree(3), metrics={"loss": jnp.float32(3.0)})  # a jax scalar is a number
    assert manager.all_steps() == [1, 3]
    assert manager.best_step() == 1


def test_a_step_without_metrics_is_kept_by_recency_only(tmp_path):
    # as if killed between the step's file and the index: the file is there, no metrics
    manager = pax.CheckpointManager(tmp_path, best_k=1, best_metric="loss")
    manager.save(1, tree(1), metrics={"loss": 1.0})
    pax.save(manager.path(2), tree(2))
    again = pax.CheckpointManager(tmp_path, best_k=1, best_metric="loss")
    assert again.all_steps() == [1, 2]
    assert again.metrics(2) is None
    again.save(3, tree(3), metrics={"loss": 3.0})
    assert again.all_steps() == [1, 3]


def test_only_process_0_removes_checkpoints(tmp_path, monkeypatch):
    manager = pax.CheckpointManager(tmp_path, max_to_keep=1)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    for step in (1, 2, 3):
        manager.save(step, tree(step))
    assert manager.all_steps() == [1, 2, 3]
    assert not (tmp_path / "checkpoints.json").exists()
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    manager.save(4, tree(4))
    assert manager.all_steps() == [4]


# --- asynchronous saves --------------------------------------------------------------------------


def test_async_save_snapshots_the_tree(tmp_path):
    manager = pax.CheckpointManager(tmp_path, async_save=True)
    saved = tree(1.0)
    manager.save(1, saved)
    saved["w"][...] = 7.0  # the caller may change its arrays at once
    manager.wait()
    check_restored(manager, 1.0)


def test_async_save_keeps_key_arrays_and_weak_types(tmp_path):
    manager = pax.CheckpointManager(tmp_path, async_save=True)
    saved = {"key": jax.random.key(3), "scale": jnp.asarray(2.0) * 1}
    assert saved["scale"].weak_type
    manager.save(1, saved)
    restored = manager.restore({"key": jax.random.key(0), "scale": jnp.asarray(0.0) * 1})
    np.testing.assert_array_equal(
        np.asarray(jax.random.key_data(restored["key"])),
        np.asarray(jax.random.key_data(saved["key"])),
    )
    assert restored["scale"].weak_type
    np.testing.assert_allclose(np.asarray(restored["scale"]), 2.0)


def _fail_at(monkeypatch, failing_step: int) -> None:
    real_save = manager_module.save

    def save(path, tree):
        if path.endswith(f"step_{failing_step:08d}.npz"):
            raise OSError(28, "No space left on device", path)
        real_save(path, tree)

    monkeypatch.setattr(manager_module, "save", save)


@pytest.mark.parametrize("next_call", ["save", "wait", "restore"])
def test_a_writer_error_is_raised_by_the_next_call(tmp_path, monkeypatch, next_call):
    _fail_at(monkeypatch, 2)
    manager = pax.CheckpointManager(tmp_path, async_save=True)
    manager.save(1, tree(1))
    manager.save(2, tree(2))  # returns: the error happens in the background
    with pytest.raises(OSError, match="No space left on device") as raised:
        if next_call == "save":
            manager.save(3, tree(3))
        elif next_call == "wait":
            manager.wait()
        else:
            manager.restore(like())
    assert "asynchronous save of step 2" in "\n".join(raised.value.__notes__)
    # raised once, then the manager works again; the previous checkpoint is intact
    manager.wait()
    assert manager.all_steps() == [1]
    check_restored(manager, 1.0)
    manager.save(3, tree(3))
    manager.wait()
    assert manager.all_steps() == [1, 3]


def test_a_synchronous_writer_error_is_raised_by_save(tmp_path, monkeypatch):
    _fail_at(monkeypatch, 1)
    manager = pax.CheckpointManager(tmp_path)
    with pytest.raises(OSError, match="No space left on device"):
        manager.save(1, tree(1))
    manager.save(2, tree(2))  # false alarm: nothing left pending
    assert manager.all_steps() == [2]


_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import pax
    from pax._src.checkpoint import io
    manager = pax.CheckpointManager(sys.argv[1], max_to_keep=2, async_save=True)
    for step in (1, 2, 3):
        manager.save(step, {"w": np.full((64, 64), step, np.float32)})
    manager.wait()
    write_array = io.write_array
    def stalled(archive, name, array):  # the file of step 4 is half written when killed
        write_array(archive, name, array)
        print("writing", flush=True)
        time.sleep(120)
    io.write_array = stalled
    manager.save(4, {"w": np.full((64, 64), 4, np.float32)})
    time.sleep(120)
    """
)


def test_a_killed_async_save_leaves_the_previous_checkpoints(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = child.stdout.readline() if child.stdout else ""  # bounded: the child sleeps 120 s
        assert line.strip() == "writing", child.stderr.read() if child.stderr else ""
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=60)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(leftovers) == 1  # the half-written file of step 4, under a temporary name
    manager = pax.CheckpointManager(tmp_path, max_to_keep=2)
    assert manager.all_steps() == [2, 3]
    restored = manager.restore({"w": np.zeros((64, 64), np.float32)})
    np.testing.assert_allclose(restored["w"], np.full((64, 64), 3.0, np.float32))
    manager.save(4, {"w": np.full((64, 64), 4.0, np.float32)})  # removes the dead temporary
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoints.json",
        "step_00000003.npz",
        "step_00000004.npz",
    ]


# --- mistakes and their false alarms -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_to_keep": 0}, ValueError, r"max_to_keep must be None or an int >= 1, got 0"),
        ({"max_to_keep": 1.5}, TypeError, r"max_to_keep must be None or an int >= 1, got 1.5"),
        ({"best_k": True, "best_metric": "l"}, TypeError, r"best_k must be None or an int"),
        ({"best_k": 2}, ValueError, r"best_k needs best_metric.*best_metric='loss'"),
        ({"best_metric": 3}, TypeError, r"best_metric must be a str"),
        ({"best_mode": "mean"}, ValueError, r"best_mode must be 'min' or 'max', got 'mean'"),
        ({"async_save": "yes"}, TypeError, r"async_save must be True or False"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        pax.CheckpointManager(tmp_path, **kwargs)


def test_good_arguments_are_accepted(tmp_path):
    pax.CheckpointManager(tmp_path, max_to_keep=1)
    pax.CheckpointManager(tmp_path, max_to_keep=np.int64(3), best_k=1, best_metric="loss")
    pax.CheckpointManager(tmp_path, best_metric="accuracy", best_mode="max", async_save=True)


def test_directory_must_be_a_path():
    with pytest.raises(TypeError, match=r"directory must be a str or os.PathLike, got int"):
        pax.CheckpointManager(3)  # type: ignore[arg-type]


def test_async_save_across_processes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match=r"async_save=True with 2 processes.*async_save=False"):
        pax.CheckpointManager(tmp_path, async_save=True)
    pax.CheckpointManager(tmp_path, async_save=False)  # false alarm


@pytest.mark.parametrize(
    ("step", "error", "match"),
    [
        (-1, ValueError, r"step must be >= 0, got -1"),
        (1.0, TypeError, r"step must be an int, got 1.0 \(float\).*int\(step\)"),
        (True, TypeError, r"step must be an int, got True"),
        (5, ValueError, r"step 5 is not larger than the latest checkpoint's, 5"),
        (4, ValueError, r"step 4 is not larger than the latest checkpoint's, 5.*latest_step"),
    ],
)
def test_bad_steps(tmp_path, step, error, match):
    manager = pax.CheckpointManager(tmp_path)
    manager.save(5, tree(5))
    with pytest.raises(error, match=match):
        manager.save(step, tree(0))
    assert manager.all_steps() == [5]
    check_restored(manager, 5.0)  # never overwritten


def test_good_steps_are_accepted(tmp_path):
    manager = pax.CheckpointManager(tmp_path)
    manager.save(0, tree(0))
    manager.save(np.int64(6), tree(6))
    assert manager.all_steps() == [0, 6]


@pytest.mark.parametrize(
    ("metrics", "error", "match"),
    [
        (None, ValueError, r"metrics is None, but .* best_metric='loss'.*metrics=\{'loss': value"),
        ({"acc": 1.0}, ValueError, r"metrics has no 'loss' \(the best_metric\), only \['acc'\]"),
        (
            [("loss", 1.0)],
            TypeError,
            r"metrics must be a dict from str names to numbers, got \[\('loss'",
        ),
        ({"loss": "low"}, TypeError, r"metrics\['loss'\] must be a real number"),
        (
            {"loss": 1.0, 2: 1.0},
            TypeError,
            r"metrics must be a dict from str names to numbers, got \{'loss': 1.0, 2",
        ),
    ],
)
def test_bad_metrics(tmp_path, metrics, error, match):
    manager = pax.CheckpointManager(tmp_path, best_k=1, best_metric="loss")
    with pytest.raises(error, match=match):
        manager.save(1, tree(1), metrics=metrics)
    assert manager.all_steps() == []


def test_metrics_are_optional_without_best_metric(tmp_path):
    manager = pax.CheckpointManager(tmp_path, max_to_keep=1)
    manager.save(1, tree(1))
    manager.save(2, tree(2), metrics={"loss": np.float32(0.5)})
    assert manager.metrics(2) == {"loss": 0.5}
    assert manager.best_step() is None


def test_restore_without_checkpoints(tmp_path):
    manager = pax.CheckpointManager(tmp_path / "new")
    assert manager.latest_step() is None
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*manager.latest_step\(\)"):
        manager.restore(like())


def test_restore_a_missing_step(tmp_path):
    manager = pax.CheckpointManager(tmp_path, max_to_keep=1)
    manager.save(1, tree(1))
    manager.save(2, tree(2))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 1 .* steps are \[2\]"):
        manager.restore(like(), step=1)
    check_restored(manager, 2.0, step=2)  # false alarm


def test_a_foreign_index_is_refused(tmp_path):
    (tmp_path / "checkpoints.json").write_text('{"format": "other"}')
    with pytest.raises(pax.CheckpointError, match=r"not one written by pax.*os.remove"):
        pax.CheckpointManager(tmp_path)


def test_save_refuses_what_pax_save_refuses_before_the_snapshot(tmp_path):
    manager = pax.CheckpointManager(tmp_path, async_save=True)
    net = pax.nn.Linear(2, 2, rng_key=jax.random.key(0))
    with pytest.raises(pax.CheckpointError, match=r"reachable twice"):
        manager.save(1, (net, net))
    manager.save(1, (net, pax.nn.Linear(2, 2, rng_key=jax.random.key(1))))  # false alarm
    manager.wait()
    assert manager.all_steps() == [1]
