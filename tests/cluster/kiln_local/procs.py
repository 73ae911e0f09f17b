"""Start background processes with a pid file and a log; stop them by pid, leaving none behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from kiln_local.paths import LOGS, PIDS


def pidfile(name: str) -> Path:
    return PIDS / f"{name}.pid"


def running(name: str) -> int | None:
    try:
        pid = int(pidfile(name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    # A zombie or a recycled pid is not ours.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        if state == "Z":
            return None
    except OSError:
        return None
    return pid


def start(name: str, argv: list[str], env: dict | None = None, cwd: str | None = None) -> int:
    if pid := running(name):
        return pid
    PIDS.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{name}.log", "ab")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})}, cwd=cwd,
        start_new_session=True,  # its own process group, so stop() reaches its children too
    )
    pidfile(name).write_text(str(proc.pid))
    return proc.pid


def stop(name: str, grace: float = 10.0) -> bool:
    pid = running(name)
    pidfile(name).unlink(missing_ok=True)
    if pid is None:
        return False
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    signal_group(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _reap(pid: int, timeout: float = 10.0) -> None:
    """Wait until a killed process is gone (and reaped, when it is our child): no zombie stays behind."""
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def kill(name: str) -> bool:
    """SIGKILL, no grace: for tests that crash a component on purpose."""
    pid = running(name)
    pidfile(name).unlink(missing_ok=True)
    if pid is None:
        return False
    signal_group(pid, signal.SIGKILL)
    _reap(pid)
    return True


def signal_group(pid: int, sig: int) -> None:
    """Signal a process group (processes start in their own session), or the process alone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(check, what: str, timeout: float, log: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
        time.sleep(0.25)
    hint = f"; read {LOGS / (log + '.log')}" if log else ""
    raise TimeoutError(f"{what} not up after {timeout:.0f}s ({last}){hint}")
