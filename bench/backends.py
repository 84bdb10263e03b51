"""The benchmark's one seam between backends: a name maps to a runner with one interface.

A runner lists the settings it measures (CrypTen: one per protocol profile; SPU: its own
settings), starts its server for one target and setting, and runs one client query, returning both
parties' records in the common `PartyRecord` form. `measure` is the loop every backend shares.
Adding a backend is one runner class and one entry in BACKENDS.

SPU differences, all labelled in the rows: bytes per stage come from SPU's profile log (send +
recv), cross-checked against the kernel's TCP counters on the total rows; `rounds` holds SPU's
"send actions" (messages sent: an upper bound on rounds, as SPU pipelines many per round); comm_s
is 0 (SPU does not report it apart); `protocol` holds the settings that change costs; `dealer` is
"tfp" for SEMI2K (INSECURE: the server makes the triples) and "none" for the dealer-free CHEETAH.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    PartyRecord,
    Target,
    add_accuracy,
    add_predictions,
    prompt_tokens,
    query_rows,
    report_progress,
)
from bench.schema import TOTAL, ResultRow, transfer_seconds
from models.errors import UserError
from mpc.approx import approx_from_arguments, profile_name
from mpc.session.local import free_port, wait_for_json


@dataclass(frozen=True)
class Setting:
    label: str  # the CSV's `protocol` column
    dealer: str
    settings: Any  # ApproxConfig (CrypTen) or SpuSettings (SPU)
    transport: str  # the CSV's `transport` column


class Session:
    """One running server (and dealer) of a backend; `query` runs one client."""

    def query(self, tokens: list[int], repeat: int) -> tuple[PartyRecord, PartyRecord, list]:
        """(client, server, the revealed last-position logits) of one query."""
        raise NotImplementedError


def crypten_record(record: dict) -> PartyRecord:
    step = record["steps"][0]
    setup = {key: step.get(key) or {} for key in ("mask_setup", "offline")}
    return PartyRecord(step["ops"], step, setup)


class CryptenSession(Session):
    def __init__(self, parties: Any, scratch: Path, args: Any) -> None:
        self.parties, self.scratch, self.args = parties, scratch, args

    def query(self, tokens: list[int], repeat: int) -> tuple[PartyRecord, PartyRecord, list]:
        prompt = self.scratch / "prompt.json"
        prompt.write_text(json.dumps(tokens))
        timeout = str(self.args.timeout)
        client = self.parties.client(
            "--tokens", str(prompt), "--timeout", timeout, "--threads", str(self.args.threads),
            timeout_s=4 * self.args.timeout,  # each of the query's waits may take `timeout`
            on_progress=progress_printer(),
        )  # fmt: skip
        server = crypten_record(self.parties.server_record(repeat + 1, self.args.timeout))
        report_mask_setup(server)
        return crypten_record(client), server, client["logits"][0][-1]


def progress_printer(quiet_s: float = 5.0):
    """Relays the client's progress lines once a query has run `quiet_s` seconds (short queries
    stay quiet; a GPT-2 query over a WAN says where it is)."""
    started = time.perf_counter()

    def show(line: str) -> None:
        if time.perf_counter() - started > quiet_s:
            print(f"    {line}", flush=True)

    return show


def report_mask_setup(server: PartyRecord) -> None:
    """The one-off weight-mask upload of the optimized profile (first query of a loaded model):
    not part of any query's figures, so it is printed here and stated in README."""
    setup = server.extra["mask_setup"]
    if setup.get("bytes"):
        print(
            f"  weight masks: {setup['bytes'] / 1e6:.1f} MB sent to the dealer once for this "
            f"loaded model ({setup['wall_s']:.1f} s), not counted per query",
            flush=True,
        )


class CryptenRunner:
    """CrypTen: server, dealer and client as separate processes, on loopback or each in its
    own network namespace behind a shaped link."""

    backend = "crypten"

    def settings(self, args: Any) -> list[Setting]:
        approxes = [approx_from_arguments(args, p) for p in args.protocol or ["stock"]]
        return [
            Setting(profile_name(a), args.dealer, a, "pair_channel" if a.pair_channel else "gloo")
            for a in approxes
        ]

    @contextlib.contextmanager
    def session(self, args, target: Target, setting: Setting, network: str) -> Iterator[Session]:
        with tempfile.TemporaryDirectory(prefix="aero-pi-bench-") as scratch:
            folder = Path(scratch)
            approx = folder / "approx.json"
            approx.write_text(setting.settings.to_json())
            server_args = (
                "--checkpoint", str(target.file(folder)), "--approx-config", str(approx),
                "--threads", str(args.threads),
            )  # fmt: skip
            options = dict(
                dealer=args.dealer, timeout_s=args.timeout, server_args=server_args, logs=scratch
            )
            with parties_on(network, **options) as parties:
                yield CryptenSession(parties, folder, args)

    def predict(self, rows: list[ResultRow], target: Target, setting: Setting) -> None:
        add_predictions(rows, target, setting.settings, setting.dealer)


def parties_on(network: str, **kwargs):
    """The parties on loopback, or each in its own network namespace behind a shaped link."""
    if network == "loopback":
        from mpc.session.local import local_parties

        return local_parties(None, **kwargs)
    from bench.netns import shaped_parties

    return shaped_parties(network, None, **kwargs)


def spu_record(record: dict) -> PartyRecord:
    total = {**record["total"], **{k: record[k] for k in ("os_bytes", "peak_rss_mb")}}
    return PartyRecord(record["ops"], total)


class SpuSession(Session):
    def __init__(self, backend: str, port: int, folder: Path, timeout: float) -> None:
        self.backend, self.port, self.folder, self.timeout = backend, port, folder, timeout

    def query(self, tokens: list[int], repeat: int) -> tuple[PartyRecord, PartyRecord, list]:
        prompt = self.folder / "prompt.json"
        prompt.write_text(json.dumps(tokens))
        out = self.folder / "client.json"
        out.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "mpc.spu.client", "--backend", self.backend,
            "--port", str(self.port), "--tokens", str(prompt), "--json-out", str(out),
            "--timeout", str(self.timeout),
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=2 * self.timeout)
        except subprocess.TimeoutExpired:
            raise UserError(
                f"the SPU client did not finish within {2 * self.timeout:.0f} s"
            ) from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            server = (self.folder / "server.log").read_text()[-2000:]
            raise UserError(f"SPU client failed: {last}\n--- server log ---\n{server}")
        client = json.loads(out.read_text())
        path = self.folder / f"server-{repeat + 1}.json"
        server = wait_for_json(path, self.timeout, "the SPU server")
        return spu_record(client), spu_record(server), client["logits"]


class SpuRunner:
    """SecretFlow SPU (`mpc.spu`): its server and, per query, its client as separate processes
    over a brpc link, on loopback."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def settings(self, args: Any) -> list[Setting]:
        from models.cli import parse_overrides
        from mpc.spu.settings import SpuSettings, settings_for_backend, settings_label

        fields = parse_overrides(getattr(args, "spu_set", []), SpuSettings, "--spu-set")
        if "protocol" in fields:
            raise UserError("--spu-set protocol=...: the protocol is the backend's (--backend)")
        settings = settings_for_backend(self.backend, **fields)
        return [Setting(settings_label(settings), settings.dealer, settings, "brpc")]

    @contextlib.contextmanager
    def session(self, args, target: Target, setting: Setting, network: str) -> Iterator[Session]:
        if reason := spu_unavailable():
            raise UserError(reason)
        with tempfile.TemporaryDirectory(prefix="aero-pi-spu-bench-") as scratch:
            folder, port = Path(scratch), free_port()
            settings = folder / "spu-settings.json"
            settings.write_text(setting.settings.to_json())
            command = [
                sys.executable, "-m", "mpc.spu.server", "--backend", self.backend,
                "--checkpoint", str(target.file(folder)), "--port", str(port),
                "--queries", str(args.repeats), "--measure-dir", scratch,
                "--timeout", str(args.timeout), "--settings-config", str(settings),
            ]  # fmt: skip
            with open(folder / "server.log", "w") as log:
                server = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
                try:
                    yield SpuSession(self.backend, port, folder, args.timeout)
                finally:
                    server.terminate()
                    server.wait(timeout=30)

    def predict(self, rows: list[ResultRow], target: Target, setting: Setting) -> None:
        """No analytic model for SPU: its predicted columns stay empty."""


def spu_unavailable() -> str | None:
    """None if SPU imports here, else what to do."""
    try:
        import spu  # noqa: F401
    except ImportError:
        return 'SPU is not installed: pip install -e ".[spu]" (see README, "SecretFlow SPU")'
    return None


BACKENDS = {
    "crypten": CryptenRunner(),
    "spu-semi2k": SpuRunner("spu-semi2k"),
    "spu-cheetah": SpuRunner("spu-cheetah"),
}
SHAPED_NETWORK_BACKENDS = ("crypten",)  # SPU's link runs on loopback only (bench/run.py refuses)


def measure(args, target: Target, seq_len: int, run_id: str, network: str) -> list[ResultRow]:
    """Every backend and setting of `args` for one target at one T on one network: all repeats
    of a setting in one server's lifetime."""
    rows: list[ResultRow] = []
    for backend in args.backend:
        runner = BACKENDS[backend]
        for setting in runner.settings(args):
            base = dict(
                run_id=run_id, arch=target.config.arch, preset=args.preset,
                weights=target.weights, backend=backend, protocol=setting.label,
                dealer=setting.dealer, network=network, seq_len=seq_len,
                transport=setting.transport,
            )  # fmt: skip
            fresh: list[ResultRow] = []
            with runner.session(args, target, setting, network) as session:
                for repeat in range(args.repeats):
                    tokens = prompt_tokens(target, seq_len, repeat)
                    started = time.perf_counter()
                    client, server, last = session.query(tokens, repeat)
                    query = query_rows(client, server, base, repeat)
                    add_accuracy(query, target, tokens, last)
                    report_progress(base, repeat, args.repeats, query, started)
                    fresh += query
            runner.predict(fresh, target, setting)
            add_round_trips(fresh, network)
            rows += [row.project() for row in fresh]
    return rows


def add_round_trips(rows: list[ResultRow], network: str) -> None:
    """On a shaped link, the measured network round trips per communication round: the
    communication time less the transfer time at the link's rate, per round, per RTT."""
    if network == "loopback":
        return
    from bench.netns import parse_network

    link = parse_network(network)
    if not link.rtt_s or not link.rate_bit_s:
        return
    for row in rows:
        if row.category == TOTAL and row.rounds:
            waiting = row.comm_s - transfer_seconds(row.bytes, link.rate_bit_s)
            row.rtt_per_round = waiting / (row.rounds * link.rtt_s)
