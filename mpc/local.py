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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mpc.protocol import PeerError


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


@dataclass
class LocalParties:
    host: str
    port: int
    logs: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log_text(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{(self.logs / f'{name}.log').read_text()}" for name in self.processes
        )

    def client(self, *args: str, timeout_s: float = 3600, check: bool = True) -> dict | str:
        """Run the client program; the parsed JSON record, or its stderr when check is False."""
        out = self.logs / "client.json"
        out.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "mpc.client",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--json-out",
            str(out),
            *args,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise PeerError(f"the client did not finish within {timeout_s:.0f} s") from None
        if not check:
            return done.stderr
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
            raise PeerError(f"client failed: {last[0]} (logs in {self.logs})")
        return json.loads(out.read_text())


def _start(name: str, command: list[str], logs: Path) -> subprocess.Popen:
    log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    # Own process group, so stopping it also stops the party processes it spawned.
    return subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextlib.contextmanager
def local_parties(
    checkpoint: str | None,
    dealer: str = "ttp",
    host: str = "127.0.0.1",
    timeout_s: float = 60,
    server_args: tuple[str, ...] = (),
    logs: str | None = None,
) -> Iterator[LocalParties]:
    """Server (and dealer in ttp mode) running in the background until the block ends.
    With `checkpoint` None, `server_args` choose the weights (e.g. --random-arch aero --preset
    tiny)."""
    folder = Path(logs or tempfile.mkdtemp(prefix="aero-pi-parties-"))
    folder.mkdir(parents=True, exist_ok=True)
    port, dealer_port = free_port(host), free_port(host, span=1)
    parties = LocalParties(host, port, folder)
    python = [sys.executable, "-m"]
    try:
        if dealer == "ttp":
            parties.processes["dealer"] = _start(
                "dealer",
                [
                    *python,
                    "mpc.dealer",
                    "--host",
                    host,
                    "--port",
                    str(dealer_port),
                    "--timeout",
                    str(timeout_s),
                ],
                folder,
            )
        parties.processes["server"] = _start(
            "server",
            [
                *python,
                "mpc.server",
                *(["--checkpoint", str(checkpoint)] if checkpoint else []),
                "--host",
                host,
                "--port",
                str(port),
                "--dealer",
                dealer,
                "--dealer-address",
                f"{host}:{dealer_port}",
                "--timeout",
                str(timeout_s),
                *server_args,
            ],
            folder,
        )
        yield parties
    finally:
        for process in parties.processes.values():
            _signal_group(process, signal.SIGTERM)
        for process in parties.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)
