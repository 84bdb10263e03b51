"""Run server, dealer and client as separate OS processes on one machine (127.0.0.1 by default).

Used by the tests, the accuracy report and the benchmark: the same programs a user starts by hand,
on real sockets, with free ports picked here and logs kept for failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mpc.session.control import DEFAULT_MAX_CONCURRENT, PeerError
from mpc.session.progress import LINE_PREFIX


def wait_for_json(path: Path, timeout_s: float, what: str) -> dict:
    """The JSON record another process writes atomically at `path`, awaited up to `timeout_s`
    (a party may write its record a moment after its peer finished)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise PeerError(f"{what} wrote no record to {path}")
        time.sleep(0.1)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise PeerError(f"{what} wrote a record that is not JSON: {path}") from None


def free_port(host: str = "127.0.0.1", span: int = 2) -> int:
    """A port p such that p .. p+span-1 were free a moment ago (the control and MPC ports)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if port + span >= 65536:
            continue
        try:
            holders = []
            for offset in range(1, span):
                holder = socket.socket()
                holders.append(holder)
                holder.bind((host, port + offset))
            return port
        except OSError:
            continue
        finally:
            for holder in holders:
                holder.close()
    raise RuntimeError("no free port range found")


def run_streaming(
    command: list[str], stdin: str | None, timeout_s: float, on_progress
) -> subprocess.CompletedProcess:
    """subprocess.run with captured output; with `on_progress`, the progress lines of stdout
    are handed over as they arrive (the process is killed past `timeout_s`)."""
    if on_progress is None:
        return subprocess.run(
            command, input=stdin, capture_output=True, text=True, timeout=timeout_s
        )
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)
    reader.start()
    try:
        if stdin:
            process.stdin.write(stdin)
        process.stdin.close()
        lines = []
        for line in process.stdout:
            if line.startswith(LINE_PREFIX):
                on_progress(line[len(LINE_PREFIX) :].strip())
            else:
                lines.append(line)
        process.wait()
        reader.join()
    finally:
        expired = not timer.is_alive()
        timer.cancel()
    if expired and process.returncode != 0:
        raise subprocess.TimeoutExpired(command, timeout_s)
    return subprocess.CompletedProcess(command, process.returncode, "".join(lines), stderr[0])


class LocalParties:
    """Handles on the running dealer and server, and a way to run the client against them.
    Subclasses change where a party's program runs by overriding `program`."""

    def __init__(self, host: str, port: int, logs: Path) -> None:
        self.host, self.port, self.logs = host, port, logs
        self.processes: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, list[str]] = {}

    def program(self, party: str, module: str, *args: str) -> list[str]:
        """The command line that runs `python -m module args` as `party`."""
        return [sys.executable, "-m", module, *args]

    def server_record(self, query: int, timeout_s: float = 60) -> dict:
        """The server's --measure-dir record of its `query`-th answered query (from 1)."""
        return wait_for_json(
            self.logs / "measure" / f"server-{query}.json", timeout_s, "the server"
        )

    def log_text(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{(self.logs / f'{name}.log').read_text()}" for name in self.processes
        )

    def client(
        self,
        *args: str,
        timeout_s: float = 3600,
        check: bool = True,
        name: str = "client",
        stdin: str | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> dict | str:
        """Run the client program (`stdin` is its standard input); the parsed JSON record, or
        its stderr when check is False. Concurrent clients need distinct `name`s (their JSON
        records are LOGS/NAME.json). With `on_progress`, the client runs with `--progress
        lines` and each of its progress lines is handed over as it comes."""
        out = self.logs / f"{name}.json"
        out.unlink(missing_ok=True)
        command = self.program(
            "client",
            "mpc.client",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--json-out",
            str(out),
            *args,
        )
        if on_progress is not None:
            command += ["--progress", "lines"]
        try:
            done = run_streaming(command, stdin, timeout_s, on_progress)
        except subprocess.TimeoutExpired:
            raise PeerError(f"the client did not finish within {timeout_s:.0f} s") from None
        if not check:
            return done.stderr
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
            raise PeerError(f"client failed: {last[0]} (logs in {self.logs})")
        return json.loads(out.read_text())

    def start(self, name: str, command: list[str]) -> None:
        mode = "a" if name in self.commands else "w"  # a restarted party appends to its log
        self.commands[name] = command
        log = open(self.logs / f"{name}.log", mode)  # noqa: SIM115 - closed with the process
        # Own process group, so stopping it also stops the party processes it spawned.
        self.processes[name] = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill(self, name: str) -> None:
        """SIGKILL a party's program and the session processes it started (fault tests)."""
        _signal_group(self.processes[name], signal.SIGKILL)
        self.processes[name].wait()

    def restart(self, name: str) -> None:
        """Start a killed party again with the same command line (its log is appended to)."""
        self.start(name, self.commands[name])

    def stop(self) -> None:
        """SIGTERM every party's process group, SIGKILL what is still there after 10 s."""
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def party_flags(
    checkpoint: str | None,
    dealer: str,
    server: tuple[str, int],
    dealer_at: tuple[str, int],
    timeout_s: float,
    server_args: tuple[str, ...],
) -> tuple[list[str], list[str]]:
    """(dealer flags, server flags) for parties listening at the given addresses."""
    timeout = ["--timeout", str(timeout_s)]
    dealer_flags = ["--host", dealer_at[0], "--port", str(dealer_at[1]), *timeout]
    server_flags = [
        *(["--checkpoint", str(checkpoint)] if checkpoint else []),
        "--host",
        server[0],
        "--port",
        str(server[1]),
        "--dealer",
        dealer,
        "--dealer-address",
        f"{dealer_at[0]}:{dealer_at[1]}",
        *timeout,
        *server_args,
    ]
    return dealer_flags, server_flags


def start_parties(parties: LocalParties, dealer: str, flags: tuple[list[str], list[str]]) -> None:
    if dealer == "ttp":
        parties.start("dealer", parties.program("dealer", "mpc.dealer", *flags[0]))
    parties.start("server", parties.program("server", "mpc.server", *flags[1]))


@contextlib.contextmanager
def local_parties(
    checkpoint: str | None,
    dealer: str = "ttp",
    host: str = "127.0.0.1",
    timeout_s: float = 60,
    server_args: tuple[str, ...] = (),
    logs: str | None = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
) -> Iterator[LocalParties]:
    """Server (and dealer in ttp mode) running in the background until the block ends.
    With `checkpoint` None, `server_args` choose the weights (e.g. --random-arch aero --preset
    tiny). The server's MPC ports are the `max_concurrent` ports after its control port."""
    folder = Path(logs or tempfile.mkdtemp(prefix="aero-pi-parties-"))
    folder.mkdir(parents=True, exist_ok=True)
    port, dealer_port = free_port(host, span=1 + max_concurrent), free_port(host, span=1)
    parties = LocalParties(host, port, folder)
    measure = ("--measure-dir", str(folder / "measure"))  # a later --measure-dir wins
    server_args = (*measure, "--max-concurrent", str(max_concurrent), *server_args)
    try:
        flags = party_flags(
            checkpoint, dealer, (host, port), (host, dealer_port), timeout_s, server_args
        )
        start_parties(parties, dealer, flags)
        yield parties
    finally:
        parties.stop()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
