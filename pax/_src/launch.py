"""Starting N local processes of one program: ``python -m pax.launch -n N program.py args...``.

Each child gets ``PAX_COORDINATOR_ADDRESS`` (``127.0.0.1`` and a free port),
``PAX_NUM_PROCESSES`` and ``PAX_PROCESS_ID``, which `pax.distributed.initialize` reads. Process
0's output is streamed; the others' is kept and shown when they fail. When a child fails, or
the run outlives its timeout, every child is ended (its whole process group) and waited for.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO

from pax._src.distributed import COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV

TAIL_LINES = 20  # lines of a failed child's output shown in the error
TIMEOUT_EXIT_CODE = 124  # as `timeout(1)`
_GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on (the OS picks it: bind to port 0).

    Example:
      >>> from pax.launch import free_port
      >>> 0 < free_port() < 65536
      True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def child_env(
    process_id: int,
    num_processes: int,
    coordinator_address: str,
    devices_per_process: int | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of child `process_id`: `env` (default ``os.environ``) plus pax's three
    variables and, with `devices_per_process`, that many simulated CPU devices.

    Example:
      >>> from pax.launch import child_env
      >>> e = child_env(1, 2, "127.0.0.1:1234", devices_per_process=4, env={})
      >>> e["PAX_PROCESS_ID"], e["PAX_NUM_PROCESSES"], e["JAX_PLATFORMS"], e["XLA_FLAGS"]
      ('1', '2', 'cpu', '--xla_force_host_platform_device_count=4')
    """
    out = dict(os.environ if env is None else env)
    out[COORDINATOR_ENV] = coordinator_address
    out[NUM_PROCESSES_ENV] = str(num_processes)
    out[PROCESS_ID_ENV] = str(process_id)
    out["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are printed
    if devices_per_process is not None:
        flags = re.sub(rf"{_DEVICE_COUNT_FLAG}=\S*", "", out.get("XLA_FLAGS", "")).split()
        out["XLA_FLAGS"] = " ".join([*flags, f"{_DEVICE_COUNT_FLAG}={devices_per_process}"])
        out["JAX_PLATFORMS"] = "cpu"
    return out


class _Child:
    """One child process, its output readers and the tail of its output."""

    def __init__(self, index: int, argv: list[str], env: dict[str, str], stream: bool) -> None:
        self.index = index
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.popen = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stream else subprocess.STDOUT,
            start_new_session=True,  # its own process group: ended as one, grandchildren too
        )
        pipes: list[tuple[IO[bytes] | None, IO[str] | None]] = [
            (self.popen.stdout, sys.stdout if stream else None)
        ]
        if stream:
            pipes.append((self.popen.stderr, sys.stderr))
        self.readers = [
            threading.Thread(target=self._read, args=(pipe, out), daemon=True)
            for pipe, out in pipes
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, pipe: IO[bytes] | None, out: IO[str] | None) -> None:
        if pipe is None:
            return
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            self.tail.append(line.rstrip("\n"))
            if out is not None:
                out.write(line)
                out.flush()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already

    def finish_output(self) -> None:
        for reader in self.readers:
            reader.join(timeout=_GRACE_SECONDS)
        if any(reader.is_alive() for reader in self.readers):
            return  # a process outside the group holds the pipe; closing it would block
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()

    def last_lines(self) -> str:
        lines = list(self.tail)
        return "\n".join(f"    {line}" for line in lines) if lines else "    (no output)"


def _end_all(children: Sequence[_Child]) -> None:
    """SIGTERM to every child's process group, SIGKILL to those still there after a grace
    period; waits for every child."""
    for child in children:
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + _GRACE_SECONDS
    for child in children:
        try:
            child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for child in children:
        child.signal_group(signal.SIGKILL)  # also any grandchild left in the group
        child.popen.wait()
        child.finish_output()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def launch(
    argv: Sequence[str],
    num_processes: int,
    *,
    timeout: float | None = None,
    devices_per_process: int | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Runs ``python *argv`` as `num_processes` local processes of one multi-process run.

    Every child gets ``PAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>``,
    ``PAX_NUM_PROCESSES`` and its ``PAX_PROCESS_ID``, so that `pax.distributed.initialize`
    joins them into one JAX run. Process 0's stdout and stderr are streamed to this process's;
    the others' output is kept (its last lines are shown if they fail). When a child fails, or
    the run lasts longer than `timeout`, every child is ended (its process group: SIGTERM, then
    SIGKILL after 5 s) and waited for, and a message on stderr names the process and shows its
    last output lines.

    Args:
      argv: the program and its arguments, e.g. ``["examples/char_rnn.py", "--steps", "10"]``
        (or ``["-m", "package.module", ...]``); run with this Python interpreter.
      num_processes: how many processes to start (>= 1).
      timeout: seconds the whole run may take (None: no limit).
      devices_per_process: give each process this many simulated CPU devices
        (``XLA_FLAGS=--xla_force_host_platform_device_count=K`` and ``JAX_PLATFORMS=cpu``).
      env: the children's base environment (default: this process's).

    Returns:
      0 when every process succeeded; else the first failing process's exit code (128 + the
      signal number if a signal ended it), or 124 on timeout.

    Raises:
      ValueError: `argv` is empty or a count is below 1.

    Example:
      >>> import os, tempfile
      >>> from pax.launch import launch
      >>> program = os.path.join(tempfile.mkdtemp(), "hello.py")
      >>> with open(program, "w") as f:
      ...     _ = f.write("import os; print('hello from', os.environ['PAX_PROCESS_ID'])")
      >>> launch([program], num_processes=2, timeout=60)
      hello from 0
      0
    """
    if not argv:
        raise ValueError("launch: `argv` is empty. Fix: launch(['program.py', ...], 2).")
    if num_processes < 1:
        raise ValueError(f"launch: num_processes={num_processes}; it must be >= 1. Fix: 2.")
    if devices_per_process is not None and devices_per_process < 1:
        raise ValueError(
            f"launch: devices_per_process={devices_per_process}; it must be >= 1 (or None for "
            f"the machine's devices). Fix: devices_per_process=4."
        )
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, *argv]
    children: list[_Child] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for i in range(num_processes):
            child_environment = child_env(i, num_processes, address, devices_per_process, env)
            children.append(_Child(i, command, child_environment, stream=i == 0))
        while True:
            codes = [child.popen.poll() for child in children]
            failed = next((c for c, code in zip(children, codes) if code not in (None, 0)), None)
            if failed is not None:
                _end_all(children)
                code = failed.popen.returncode
                print(
                    f"pax.launch: process {failed.index} of {num_processes} "
                    f"{_describe_exit(code)}; ended the other processes. Last lines of process "
                    f"{failed.index}'s output:\n{failed.last_lines()}",
                    file=sys.stderr,
                )
                return code if code > 0 else 128 - code
            if all(code == 0 for code in codes):
                for child in children:
                    child.signal_group(signal.SIGKILL)  # a grandchild left behind
                    child.finish_output()
                return 0
            if deadline is not None and time.monotonic() > deadline:
                running = [c.index for c, code in zip(children, codes) if code is None]
                _end_all(children)
                tails = "\n".join(
                    f"  process {c.index}:\n{c.last_lines()}" for c in children if c.index
                )
                print(
                    f"pax.launch: timed out after {timeout:g} s with process(es) "
                    f"{', '.join(map(str, running))} still running; ended every process. Fix: "
                    f"a larger --timeout if the program is only slow. Last lines of the other "
                    f"processes:\n{tails or '  (none)'}",
                    file=sys.stderr,
                )
                return TIMEOUT_EXIT_CODE
            time.sleep(0.05)
    finally:
        if any(child.popen.returncode is None for child in children):
            _end_all(children)  # an error or KeyboardInterrupt in here: leave nothing running


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m pax.launch`` (see `main`).

    Example:
      >>> from pax.launch import parse_args
      >>> args = parse_args(["-n", "2", "--timeout", "60", "train.py", "--steps", "5"])
      >>> args.num_processes, args.timeout, args.program
      (2, 60.0, ['train.py', '--steps', '5'])
    """
    p = argparse.ArgumentParser(
        prog="python -m pax.launch",
        description="Run a program as N local processes of one multi-process JAX run.",
    )
    p.add_argument("-n", "--num-processes", type=int, required=True, help="processes to start")
    p.add_argument("--timeout", type=float, default=None, help="seconds before all are ended")
    p.add_argument(
        "--devices-per-process",
        type=int,
        default=None,
        help="simulated CPU devices per process (sets XLA_FLAGS and JAX_PLATFORMS=cpu)",
    )
    p.add_argument("program", nargs=argparse.REMAINDER, help="program.py and its arguments")
    args = p.parse_args(argv)
    if args.program[:1] == ["--"]:
        args.program = args.program[1:]
    if not args.program:
        p.error("no program given. Fix: python -m pax.launch -n 2 program.py [args...]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pax.launch -n N [--timeout S] [--devices-per-process K] program.py args...``

    Returns the exit code of `launch`.

    Example:
      >>> import os, tempfile
      >>> from pax.launch import main
      >>> program = os.path.join(tempfile.mkdtemp(), "fail.py")
      >>> with open(program, "w") as f:
      ...     _ = f.write("import os, sys; sys.exit(int(os.environ['PAX_PROCESS_ID']) * 3)")
      >>> main(["-n", "2", "--timeout", "60", program])
      3
    """
    args = parse_args(argv)
    return launch(
        args.program,
        args.num_processes,
        timeout=args.timeout,
        devices_per_process=args.devices_per_process,
    )
