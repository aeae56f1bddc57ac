"""Checkpoints under concurrent saves, odd paths, views and wrong arguments: exact or refused."""

import errno
import fcntl
import os
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax._src.checkpoint import io as checkpoint_io

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _version(i):
    return {"w": jnp.full((64,), float(i)), "step": jnp.asarray(i, jnp.int32)}


def _check_version(tree, saved):
    step = int(tree["step"])
    assert step in saved
    np.testing.assert_array_equal(tree["w"], np.full((64,), float(step), np.float32))


def _pax_temporaries(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


# --- 1: a load concurrent with saves to the same path -------------------------------------------


def test_loads_while_another_thread_saves_read_one_complete_version(tmp_path):
    path = tmp_path / "latest.npz"
    pax.save(path, _version(0))
    saved = {0}
    stop = threading.Event()
    failures = []

    def writer():
        try:
            for i in range(1, 400):
                if stop.is_set():
                    return
                pax.save(path, _version(i))
                saved.add(i)
        except BaseException as err:  # reported by the main thread
            failures.append(err)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the threads finely: the race shows up quickly
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        loads, deadline = 0, time.monotonic() + 3.0
        while time.monotonic() < deadline and thread.is_alive():
            tree = pax.load(path, _version(0))
            _check_version(tree, saved | {max(saved) + 1})
            loads += 1
    finally:
        stop.set()
        thread.join(timeout=60)
        sys.setswitchinterval(switch)
    assert not failures and loads > 10
    _check_version(pax.load(path, _version(0)), saved)
    assert _pax_temporaries(tmp_path) == []


def test_a_replace_right_after_the_file_is_looked_up_reads_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.npz"
    newer = tmp_path / "newer.npz"
    pax.save(path, _version(1))
    pax.save(newer, _version(2))
    real_stat, real_open = os.stat, os.open
    replaced = []

    def replace_once(name):  # a trainer's atomic save lands just after pax.load looked
        if os.fspath(name) == os.fspath(path) and not replaced:
            replaced.append(True)
            os.replace(newer, path)

    def stat(name, *args, **kwargs):
        result = real_stat(name, *args, **kwargs)
        replace_once(name)
        return result

    def open_(name, *args, **kwargs):
        result = real_open(name, *args, **kwargs)
        replace_once(name)
        return result

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "open", open_)
    tree = pax.load(path, _version(0))
    monkeypatch.undo()
    assert replaced
    _check_version(tree, {1, 2})
    _check_version(pax.load(path, _version(0)), {2})


# --- 2: a directory or a missing file as the path -----------------------------------------------


def test_saving_to_a_directory_raises_is_a_directory_error(tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    with pytest.raises(
        IsADirectoryError, match=r"checkpoints is a directory.*Fix: name a file"
    ) as info:
        pax.save(directory, {"w": jnp.ones(2)})
    assert isinstance(info.value, pax.CheckpointError)
    assert info.value.errno == errno.EISDIR and info.value.filename == str(directory)
    assert os.listdir(tmp_path) == ["checkpoints"] and os.listdir(directory) == []
    with pytest.raises(IsADirectoryError, match=r"is a directory.*os\.path\.join"):
        pax.save(str(tmp_path / "missing") + os.sep, {"w": jnp.ones(2)})


def test_loading_a_directory_raises_is_a_directory_error(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a directory.*Fix: name a file.*pax\.load"):
        pax.load(tmp_path, {"w": jnp.ones(2)})
    with pytest.raises(OSError):  # what callers catch around file handling
        pax.load(tmp_path, {"w": jnp.ones(2)})
    with pytest.raises(pax.CheckpointError):  # and what they caught before
        pax.load(tmp_path, {"w": jnp.ones(2)})


def test_the_directory_error_pickles():
    import pickle

    from pax._src.errors import CheckpointIsADirectoryError

    error = CheckpointIsADirectoryError("pax.load: /x is a directory", "/x")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.filename == "/x" and again.errno == errno.EISDIR


def test_a_file_inside_the_directory_saves_and_a_missing_one_is_file_not_found(tmp_path):
    path = tmp_path / "checkpoints" / "model.npz"
    path.parent.mkdir()
    pax.save(path, {"w": jnp.ones(2)})
    np.testing.assert_array_equal(pax.load(path, {"w": jnp.zeros(2)})["w"], 1.0)
    with pytest.raises(FileNotFoundError):
        pax.load(tmp_path / "checkpoints" / "other.npz", {"w": jnp.zeros(2)})


# --- 3: views whose other arrays are None ----------------------------------------------------------


def _trained_batch_norm():
    bn = pax.nn.BatchNorm1D(3)
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 3)) + 2.0
    return jax.jit(lambda bn, x: (bn(x), bn)[1])(bn, x)


def test_saving_a_parameters_view_is_refused_naming_the_dropped_arrays(tmp_path):
    bn = _trained_batch_norm()
    path = tmp_path / "bn.npz"
    with pytest.raises(
        pax.CheckpointError,
        match=r"(?s)BatchNorm1D\.mean_ema\.counter.*BatchNorm1D\.var_ema\.average.*"
        r"model\.parameters\(\).*Fix: save the module itself: pax\.save\(path, model\)",
    ):
        pax.save(path, bn.parameters())
    assert os.listdir(tmp_path) == []
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.BatchNorm1D(3))
    with pytest.raises(pax.CheckpointError, match=r"(?s)Sequential\.modules\[0\]\.weight"):
        pax.save(path, net.states())
    with pytest.raises(pax.CheckpointError, match=r"\('model'\)\.weight|tree\['model'\]\.weight"):
        pax.save(path, {"model": pax.nn.Linear(2, 3).freeze().parameters()})


def test_saving_the_module_itself_keeps_its_statistics(tmp_path):
    bn = _trained_batch_norm()
    path = tmp_path / "bn.npz"
    pax.save(path, bn)
    restored = pax.load(path, pax.nn.BatchNorm1D(3))
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(bn)):
        np.testing.assert_array_equal(a, b)
    pax.save(path, pax.nn.Linear(2, 3).parameters())  # a view with no None leaf: all is saved


class _WithStateSubtree(pax.Module):
    def __init__(self):
        super().__init__()
        self.register_parameter("w", jnp.ones(2))
        self.register_state("count", jnp.zeros((), jnp.int32))
        self.register_state_subtree("stats", {"mean": jnp.zeros(2)})


def test_emptied_subtrees_of_a_view_are_named_too(tmp_path):
    path = tmp_path / "m.npz"
    with pytest.raises(
        pax.CheckpointError,
        match=r"2 key path\(s\):\n  _WithStateSubtree\.count\n  _WithStateSubtree\.stats\['mean'\]\n",
    ):
        pax.save(path, _WithStateSubtree().parameters())
    optimizer = pax.optim.adam(pax.nn.Linear(2, 3).parameters(), 1e-3)
    with pytest.raises(pax.CheckpointError, match=r"opt_state"):
        pax.save(path, optimizer.parameters())  # nothing at all would be saved
    pax.save(path, (pax.nn.Linear(2, 3), optimizer))
    assert os.listdir(tmp_path) == ["m.npz"]


class _OptionalParts(pax.Module):
    """None by design: a plain attribute, and an entry of a registered subtree."""

    def __init__(self):
        super().__init__()
        self.register_parameter("w", jnp.arange(3.0))
        self.cache = None
        self.register_state_subtree("extra", {"a": jnp.ones(2), "b": None})
        self.register_state_subtree("later", {"k": None})  # all None, filled later


def test_modules_with_none_by_design_still_save(tmp_path):
    path = tmp_path / "m.npz"
    for model in (pax.nn.Linear(2, 3, with_bias=False), _OptionalParts()):
        pax.save(path, model)
        restored = pax.load(path, model)
        for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(model)):
            np.testing.assert_array_equal(a, b)
    pax.save(path, {"model": pax.nn.Linear(2, 3), "note": None})  # None outside any module


# --- 4: a symbolic link as the path -----------------------------------------------------------


def test_saving_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    target = runs / "step-100.npz"
    link = tmp_path / "latest.npz"
    pax.save(target, _version(1))
    link.symlink_to(os.path.relpath(target, tmp_path))
    before = os.readlink(link)
    pax.save(link, _version(2))
    assert link.is_symlink() and os.readlink(link) == before
    _check_version(pax.load(target, _version(0)), {2})
    _check_version(pax.load(link, _version(0)), {2})
    assert _pax_temporaries(tmp_path) == [] and _pax_temporaries(runs) == []
    assert sorted(os.listdir(tmp_path)) == ["latest.npz", "runs"]


def test_saving_through_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "latest.npz"
    link.symlink_to(tmp_path / "new.npz")
    pax.save(link, _version(3))
    assert link.is_symlink()
    _check_version(pax.load(tmp_path / "new.npz", _version(0)), {3})


def test_a_read_only_target_behind_a_symlink_is_refused_naming_the_link(tmp_path):
    target, link = tmp_path / "t.npz", tmp_path / "link.npz"
    pax.save(target, _version(1))
    link.symlink_to(target)
    os.chmod(target, 0o444)
    with pytest.raises(PermissionError, match=r"t\.npz is read-only") as info:
        pax.save(link, _version(2))
    assert info.value.filename == str(link) and link.is_symlink()
    _check_version(pax.load(link, _version(0)), {1})


# --- 5: temporaries of killed saves, whatever their target ---------------------------------------

_CRASH = """
import os, sys, jax.numpy as jnp, pax
from pax._src.checkpoint import io as checkpoint_io
def crash(archive, name, array):
    os._exit(3)  # the process dies: no exception handler, no cleanup
checkpoint_io.write_array = crash
pax.save(sys.argv[1], {"w": jnp.zeros(4)})
"""

_BLOCK = """
import os, sys, time, jax.numpy as jnp, pax
from pax._src.checkpoint import io as checkpoint_io
real = checkpoint_io.write_array
def wait(archive, name, array):  # a live writer, slow to finish
    open(sys.argv[2], "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:
        time.sleep(0.02)
    real(archive, name, array)
checkpoint_io.write_array = wait
pax.save(sys.argv[1], {"w": jnp.full(4, 7.0)})
"""


def _dead_pid():
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return int(done.stdout)


def test_a_killed_save_is_cleaned_up_by_a_save_to_another_name(tmp_path):
    killed = subprocess.run(
        [sys.executable, "-c", _CRASH, str(tmp_path / "a.npz")], env=ENV, timeout=120
    )
    assert killed.returncode == 3
    (leftover,) = os.listdir(tmp_path)
    assert leftover.startswith(".a.npz.pax-") and leftover.endswith(".tmp")
    pax.save(tmp_path / "b.npz", {"w": jnp.ones(4)})
    assert os.listdir(tmp_path) == ["b.npz"]


def test_temporaries_that_may_be_live_or_are_not_paxs_are_kept(tmp_path):
    dead, host = _dead_pid(), checkpoint_io.host_tag()
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    kept = [
        f".a.npz.pax-{other_host}-{dead}-0123456789ab.tmp",  # another host: its pid means nothing here
        ".a.npz.0123456789ab.tmp",  # older naming, another target: only its own target removes it
        ".notes.tmp",
        "a.npz.tmp",
        f"a.npz.pax-{host}-{dead}-0123456789ab.tmp",  # not hidden: not pax's name
    ]
    locked = f".c.npz.pax-{host}-{dead}-0123456789ab.tmp"  # its pid is gone but someone holds it
    for name in [*kept, locked]:
        (tmp_path / name).write_bytes(b"partial")
    with open(tmp_path / locked, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        pax.save(tmp_path / "b.npz", {"w": jnp.ones(4)})
    assert sorted(os.listdir(tmp_path)) == sorted([*kept, locked, "b.npz"])
    stale = f".c.npz.pax-{host}-{dead}-ba9876543210.tmp"
    (tmp_path / stale).write_bytes(b"partial")
    pax.save(tmp_path / "b.npz", {"w": jnp.ones(4)})
    assert not (tmp_path / stale).exists() and not (tmp_path / locked).exists()


def test_a_live_writer_in_another_process_keeps_its_temporary(tmp_path):
    ready, go = tmp_path.parent / f"{tmp_path.name}.ready", tmp_path.parent / f"{tmp_path.name}.go"
    writer = subprocess.Popen(
        [sys.executable, "-c", _BLOCK, str(tmp_path / "a.npz"), str(ready), str(go)], env=ENV
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline and writer.poll() is None:
            time.sleep(0.02)
        assert ready.exists()
        (temporary,) = os.listdir(tmp_path)
        pax.save(tmp_path / "b.npz", {"w": jnp.ones(4)})
        assert sorted(os.listdir(tmp_path)) == sorted([temporary, "b.npz"])
    finally:
        go.touch()
        assert writer.wait(timeout=120) == 0
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"]
    np.testing.assert_array_equal(pax.load(tmp_path / "a.npz", {"w": jnp.zeros(4)})["w"], 7.0)


# --- 6: state-dict transforms returning array-likes --------------------------------------------


def test_a_transform_returning_a_list_of_python_floats_is_refused_naming_the_cause():
    sd = pax.state_dict(pax.nn.Linear(2, 3))
    with pytest.raises(
        ValueError,
        match=r"\.weight \(from '\.weight'\): given float64\[2, 3\] \(transform returned a list, "
        r"made float64\), model float32\[2, 3\](?s:.*)a\.astype\(np\.float32\)",
    ):
        pax.load_state_dict(pax.nn.Linear(2, 3), sd, transform=lambda key, a: a.tolist())


def test_a_transform_returning_a_cast_list_loads_exactly():
    net = pax.nn.Linear(2, 3)
    sd = pax.state_dict(net)
    loaded = pax.load_state_dict(
        pax.nn.Linear(2, 3), sd, transform=lambda key, a: np.asarray(a.tolist(), np.float32)
    )
    np.testing.assert_allclose(loaded.weight, net.weight)
    np.testing.assert_allclose(loaded.bias, net.bias)
    nested = pax.load_state_dict(
        pax.nn.Linear(2, 3, with_bias=False),
        {".weight": np.asarray(net.weight)},
        transform=lambda key, a: jnp.asarray(a),  # a jax array is fine too
    )
    np.testing.assert_allclose(nested.weight, net.weight)


def test_a_transform_returning_no_array_is_named():
    sd = pax.state_dict(pax.nn.Linear(2, 3))

    def forgot_return(key, a):
        a.T

    with pytest.raises(
        TypeError,
        match=r"transform\('\.weight', array\) \(for the entry '\.weight'\) returned None",
    ):
        pax.load_state_dict(pax.nn.Linear(2, 3), sd, transform=forgot_return)
    with pytest.raises(TypeError, match=r"returned 'abc' \(a str\), not a numeric array"):
        pax.load_state_dict(pax.nn.Linear(2, 3), sd, transform=lambda k, a: "abc")
    with pytest.raises(TypeError, match=r"returned a list that numpy cannot convert"):
        pax.load_state_dict(pax.nn.Linear(2, 3), sd, transform=lambda k, a: [[1.0], [1.0, 2.0]])


# --- sweep: wrong argument types ------------------------------------------------------------


def test_swapped_save_and_load_arguments_are_named(tmp_path):
    net, path = pax.nn.Linear(2, 3), tmp_path / "m.npz"
    with pytest.raises(
        TypeError, match=r"pax\.save: path must be a str.*got Linear.*pax\.save\(path, model\)"
    ):
        pax.save(net, path)
    pax.save(path, net)
    with pytest.raises(
        TypeError, match=r"pax\.load: path must be a str.*got Linear.*pax\.load\(path, like\)"
    ):
        pax.load(net, path)


def test_bytes_paths_save_and_load(tmp_path):
    path = os.fsencode(tmp_path / "m.npz")
    pax.save(path, {"w": jnp.ones(2)})
    np.testing.assert_array_equal(pax.load(path, {"w": jnp.zeros(2)})["w"], 1.0)


def test_none_as_the_tree_or_like_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    with pytest.raises(
        TypeError, match=r"pax\.save: tree is None.*Fix: .*pax\.save\(path, model\)"
    ):
        pax.save(path, None)
    assert os.listdir(tmp_path) == []
    pax.save(path, {})  # an empty container is a tree: saved and loaded as such
    assert pax.load(path, {}) == {}
    pax.save(path, pax.nn.Linear(2, 3))
    with pytest.raises(TypeError, match=r"pax\.load: like is None.*Fix: pax\.load\(path, "):
        pax.load(path, None)


def test_strict_must_be_a_bool(tmp_path):
    path = tmp_path / "m.npz"
    pax.save(path, {"w": jnp.ones(2)})
    with pytest.raises(TypeError, match=r"strict must be True or False, got None"):
        pax.load(path, {"w": jnp.zeros(2)}, strict=None)
    tree, report = pax.load(path, {"w": jnp.zeros(2)}, strict=False)
    np.testing.assert_array_equal(tree["w"], 1.0)
    assert report == pax.LoadReport((), ())
    sd = pax.state_dict(pax.nn.Linear(2, 3))
    with pytest.raises(TypeError, match=r"load_state_dict: strict must be True or False, got 'no'"):
        pax.load_state_dict(pax.nn.Linear(2, 3), sd, strict="no")


def test_state_dict_functions_refuse_none_and_wrong_argument_types():
    net = pax.nn.Linear(2, 3)
    sd = pax.state_dict(net)
    with pytest.raises(
        TypeError, match=r"pax\.state_dict: model is None.*pax\.state_dict\(model\)"
    ):
        pax.state_dict(None)
    with pytest.raises(TypeError, match=r"model is None.*pax\.load_state_dict\(model, mapping\)"):
        pax.load_state_dict(None, sd)
    with pytest.raises(TypeError, match=r"transform must be a function.*got int 3"):
        pax.load_state_dict(net, sd, transform=3)
    with pytest.raises(ValueError, match=r"rename='abc' is not a preset; the presets are"):
        pax.load_state_dict(net, sd, rename="abc")  # a string names a preset
    with pytest.raises(
        TypeError, match=r"rename\('\.weight'\) returned 3 of type int.*str\) or None"
    ):
        pax.load_state_dict(net, sd, rename=lambda name: 3)
    with pytest.raises(
        TypeError, match=r"the entry '\.bias' is None \(a NoneType\), not a numeric"
    ):
        pax.load_state_dict(net, {**sd, ".bias": None})
    loaded = pax.load_state_dict(
        net, {**sd, ".bias": [0.0, 0.0, 0.0]}, transform=lambda k, a: a.astype(np.float32)
    )
    np.testing.assert_array_equal(loaded.bias, np.zeros(3, np.float32))
    loaded = pax.load_state_dict(net, sd, rename=lambda name: name)  # a valid rename function
    np.testing.assert_array_equal(loaded.weight, net.weight)
