"""Servers the ops tests start for real (the Dagster UI, PostgreSQL): each in its own process group, stopped with
SIGINT, then SIGKILL if it lingers; plus the Debian binaries they need, found where Debian installs them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INSTALL_HINT = "`make test-deps` installs it as root (apt-get install --no-install-recommends {package})"


def require_binary(path: Path | str | None, package: str) -> Path:
    """The binary, or skip naming the Debian package (make test-deps installs it wherever it can: root + apt)."""
    if path is None or not Path(path).exists():
        pytest.skip(f"{path or package}: not installed; Debian package '{package}'. "
                    + INSTALL_HINT.format(package=package))
    return Path(path)


def postgres_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries: /usr/lib/postgresql/<newest version>/bin (not on PATH), else
    wherever `pg_config --bindir` or PATH says."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    if pg_config := shutil.which("pg_config"):
        bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def instance_dir(home: Path) -> Path:
    """This project's dagster.yaml, with everything it stores moved under `home`."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    config["local_artifact_storage"]["config"]["base_dir"] = str(home / "artifacts")
    config["compute_logs"]["config"]["base_dir"] = str(home / "logs")
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def group_members(pgid: int) -> list[tuple[int, str]]:
    """Live (non-zombie) processes of a process group: (pid, command line)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            state, _ppid, pgrp = text[text.rindex(")") + 2:].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                members.append((int(stat.parent.name), cmd[:160]))
        except (OSError, ValueError):
            continue  # the process ended while we looked
    return members


def _own_group_default_signals() -> None:
    # A shell that starts a command in the background (`make test &`, CI wrappers) makes SIGINT and SIGTERM ignored,
    # and ignored signals survive exec: dagster dev would then shrug off both. Its own session, default handlers.
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclass
class Stopped:
    """How a process group ended."""

    signal_sent: str = "SIGINT"
    seconds: float = 0.0
    killed: list[tuple[int, str]] = field(default_factory=list)  # still alive after the grace period: SIGKILLed
    left: list[tuple[int, str]] = field(default_factory=list)  # still alive after SIGKILL (should be empty)


def stop_group(proc: subprocess.Popen, *, grace: float = 60.0) -> Stopped:
    """SIGINT to the whole group (what Ctrl-C does), wait up to `grace` seconds, then SIGKILL what is left."""
    pgid, start, stopped = proc.pid, time.monotonic(), Stopped()
    try:
        os.killpg(pgid, signal.SIGINT)
    except ProcessLookupError:
        pass
    while group_members(pgid) and time.monotonic() - start < grace:
        time.sleep(0.5)
    stopped.killed = group_members(pgid)
    if stopped.killed:
        stopped.signal_sent = "SIGINT, then SIGKILL"
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 15
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    stopped.left = group_members(pgid)
    stopped.seconds = time.monotonic() - start
    return stopped


@contextmanager
def process_group(cmd: Sequence[str], *, env: dict, cwd: Path, log: Path, grace: float = 60.0,
                  stopped: list[Stopped] | None = None) -> Iterator[subprocess.Popen]:
    """Run `cmd` in its own process group, output to `log`; on exit stop the whole group (appended to `stopped`)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_own_group_default_signals)
    try:
        yield proc
    finally:
        result = stop_group(proc, grace=grace)
        if stopped is not None:
            stopped.append(result)


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, *, timeout: float) -> float:
    """Poll `url` until it answers 200; fail early if the server exited. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with code {proc.returncode} before answering {url}; "
                                 f"log {log}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s; log {log}:\n{log_tail(log)}")
