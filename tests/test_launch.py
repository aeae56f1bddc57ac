"""`python -m pax.launch`: N local processes, process 0's output streamed, every child ended on
failure, on timeout and on an interrupt (checked by pid)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

import pax.launch
from pax._src import launch as launch_impl

ROOT = Path(__file__).resolve().parent.parent


def _program(tmp_path: Path, body: str, name: str = "prog.py") -> str:
    """Writes a child program; it records its pid (and its grandchild's) under `tmp_path`."""
    path = tmp_path / name
    header = f"""\
        import os, subprocess, sys, time
        ID = int(os.environ["PAX_PROCESS_ID"])
        OUT = {str(tmp_path)!r}
        with open(os.path.join(OUT, f"pid{{ID}}"), "w") as f:
            f.write(str(os.getpid()))
        def grandchild():
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            with open(os.path.join(OUT, f"grandchild{{ID}}"), "w") as f:
                f.write(str(p.pid))
        """
    path.write_text(textwrap.dedent(header) + textwrap.dedent(body))
    return str(path)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _pids(tmp_path: Path, prefix: str) -> list[int]:
    return [int(p.read_text()) for p in sorted(tmp_path.glob(f"{prefix}*")) if p.read_text()]


def _wait_for_files(tmp_path: Path, names: list[str], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not all((tmp_path / n).is_file() and (tmp_path / n).read_text() for n in names):
        if time.monotonic() > deadline:
            raise AssertionError(f"the children did not write {names} in {seconds} s")
        time.sleep(0.05)


def _none_alive(pids: list[int], seconds: float = 10) -> bool:
    """Whether every pid is gone (orphaned grandchildren may take a moment to be reaped)."""
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            for p in pids:  # do not leave them behind if the test fails
                if _alive(p):
                    os.kill(p, signal.SIGKILL)
            return False
        time.sleep(0.05)
    return True


def test_success_streams_process_0_only(tmp_path, capsys):
    prog = _program(
        tmp_path,
        """\
        print(f"out from {ID} of {os.environ['PAX_NUM_PROCESSES']}")
        print(f"err from {ID}", file=sys.stderr)
        """,
    )
    assert pax.launch.launch([prog], 3, timeout=60) == 0
    out, err = capsys.readouterr()
    assert out == "out from 0 of 3\n"
    assert err == "err from 0\n"
    pids = _pids(tmp_path, "pid")
    assert len(pids) == 3
    assert _none_alive(pids)


def test_children_get_the_coordinator_count_id_and_devices(tmp_path):
    prog = _program(
        tmp_path,
        """\
        keys = ("PAX_COORDINATOR_ADDRESS", "PAX_NUM_PROCESSES", "PAX_PROCESS_ID", "XLA_FLAGS",
                "JAX_PLATFORMS", "KEEP")
        with open(os.path.join(OUT, f"env{ID}"), "w") as f:
            f.write("\\n".join(os.environ.get(k, "-") for k in keys))
        """,
    )
    env = {**os.environ, "KEEP": "kept", "XLA_FLAGS": "--xla_dump_to=x "}
    env["XLA_FLAGS"] += "--xla_force_host_platform_device_count=8"
    assert pax.launch.launch([prog], 2, timeout=60, devices_per_process=3, env=env) == 0
    rows = [(tmp_path / f"env{i}").read_text().split("\n") for i in range(2)]
    address = rows[0][0]
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1" and 0 < int(port) < 65536
    for i, row in enumerate(rows):
        assert row == [
            address,
            "2",
            str(i),
            "--xla_dump_to=x --xla_force_host_platform_device_count=3",
            "cpu",
            "kept",
        ]


def test_a_failing_child_ends_the_others_and_is_named(tmp_path, capsys):
    prog = _program(
        tmp_path,
        """\
        if ID == 1:
            while not all(os.path.exists(os.path.join(OUT, f"grandchild{i}")) for i in (0, 2)):
                time.sleep(0.05)
            print("something went wrong in process one")
            sys.exit(3)
        grandchild()
        print("process 0 waits", flush=True)
        time.sleep(600)
        """,
    )
    start = time.monotonic()
    assert pax.launch.launch([prog], 3, timeout=120) == 3
    assert time.monotonic() - start < 60
    out, err = capsys.readouterr()
    assert "process 0 waits" in out
    assert "pax.launch: process 1 of 3 exited with code 3; ended the other processes" in err
    assert "something went wrong in process one" in err
    pids = _pids(tmp_path, "pid") + _pids(tmp_path, "grandchild")
    assert len(pids) == 5
    assert _none_alive(pids)


def test_a_child_killed_by_a_signal_is_named(tmp_path, capsys):
    prog = _program(
        tmp_path,
        """\
        if ID == 0:
            time.sleep(600)
        os.kill(os.getpid(), 9)
        """,
    )
    assert pax.launch.launch([prog], 2, timeout=120) == 128 + 9
    assert "process 1 of 2 was killed by SIGKILL" in capsys.readouterr().err
    assert _none_alive(_pids(tmp_path, "pid"))


def test_a_hanging_run_is_ended_at_the_timeout(tmp_path, capsys):
    prog = _program(
        tmp_path,
        """\
        grandchild()
        while not os.path.exists(os.path.join(OUT, f"grandchild{1 - ID}")):
            time.sleep(0.05)
        print(f"process {ID} hangs", flush=True)
        signal_ignored = __import__("signal")
        signal_ignored.signal(signal_ignored.SIGTERM, signal_ignored.SIG_IGN)  # needs SIGKILL
        time.sleep(600)
        """,
    )
    start = time.monotonic()
    assert pax.launch.launch([prog], 2, timeout=3) == launch_impl.TIMEOUT_EXIT_CODE
    elapsed = time.monotonic() - start
    assert 3 <= elapsed < 3 + launch_impl._GRACE_SECONDS + 20
    out, err = capsys.readouterr()
    assert "process 0 hangs" in out
    assert "pax.launch: timed out after 3 s with process(es) 0, 1 still running" in err
    assert "process 1 hangs" in err  # the other processes' last lines
    pids = _pids(tmp_path, "pid") + _pids(tmp_path, "grandchild")
    assert len(pids) == 4
    assert _none_alive(pids)


def test_an_interrupt_of_the_launcher_ends_every_child(tmp_path, monkeypatch):
    prog = _program(tmp_path, "time.sleep(600)\n")
    calls = []

    def interrupted(seconds):
        calls.append(seconds)
        if len(calls) > 1:  # the children are running
            _wait_for_files(tmp_path, ["pid0", "pid1"])
            raise KeyboardInterrupt

    fake_time = types.SimpleNamespace(monotonic=time.monotonic, sleep=interrupted)
    monkeypatch.setattr(launch_impl, "time", fake_time)
    with pytest.raises(KeyboardInterrupt):
        pax.launch.launch([prog], 2, timeout=120)
    assert _none_alive(_pids(tmp_path, "pid"))


def test_launch_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"`argv` is empty. Fix: launch\(\['program.py'"):
        pax.launch.launch([], 2)
    with pytest.raises(ValueError, match="num_processes=0; it must be >= 1"):
        pax.launch.launch(["x.py"], 0)
    with pytest.raises(ValueError, match="devices_per_process=0; it must be >= 1"):
        pax.launch.launch(["x.py"], 2, devices_per_process=0)


def test_command_line(tmp_path):
    prog = _program(tmp_path, "print('hi', ID, sys.argv[1:])\nsys.exit(5 * ID)\n")
    args = ["-n", "2", "--timeout", "60", "--devices-per-process", "2", prog, "--steps", "3"]
    parsed = pax.launch.parse_args(args)
    assert parsed.program == [prog, "--steps", "3"]
    assert parsed.devices_per_process == 2
    assert pax.launch.parse_args(["-n", "2", "--", prog]).program == [prog]
    result = subprocess.run(
        [sys.executable, "-m", "pax.launch", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 5
    assert result.stdout == "hi 0 ['--steps', '3']\n"
    assert "process 1 of 2 exited with code 5" in result.stderr
    assert "hi 1 ['--steps', '3']" in result.stderr  # its last lines


def test_command_line_needs_a_program(capsys):
    with pytest.raises(SystemExit):
        pax.launch.parse_args(["-n", "2"])
    assert "no program given. Fix: python -m pax.launch -n 2 program.py" in capsys.readouterr().err


def test_free_port_can_be_bound():
    import socket

    port = pax.launch.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
