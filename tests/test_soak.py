"""One long-running server under load: many consecutive queries, concurrent clients up to the limit,
a "busy" answer beyond it, stable memory, the same answer for the same prompt, and nothing carried
from one session to the next (fresh shares every time).

The default suite runs a short soak (`QUERIES_DEFAULT`); `-m slow` runs the full 50 queries.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from mpc.client import EXIT_BUSY
from mpc.session.control import ServerBusy, connect, recv_message
from mpc.session.local import LocalParties, free_port, local_parties, party_flags
from tests.test_curious_parties import own_input_shares
from tests.test_secure_errors import wait_for

RANDOM_TINY = ("--random-arch", "baseline", "--preset", "tiny")
PROMPT = [5, 17, 3, 250, 9]
QUERIES_DEFAULT, QUERIES_FULL = 4, 50
WARMUP = 2  # queries before the memory baseline: imports, caches and allocator pools settle
MAX_RSS_GROWTH = 0.10
LOGIT_ATOL = 1e-3  # fresh shares each session: probabilistic truncation moves the last bits
CONCURRENT = 2


def prompt_file(folder: Path) -> str:
    path = folder / "prompt.json"
    path.write_text(json.dumps(PROMPT))
    return str(path)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def session_processes(pid: int) -> list[psutil.Process]:
    """The per-session party processes (multiprocessing "spawn" children) of a server or dealer."""
    sessions = []
    for child in psutil.Process(pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                sessions.append(child)
        except psutil.Error:  # ended (or a zombie) while we looked
            continue
    return sessions


def soak(parties: LocalParties, queries: int, folder: Path) -> dict:
    """`queries` consecutive identical queries; per query the server's RSS (MB) after it, its
    party's and the client's peak RSS, and the answers."""
    server_pid, tokens = parties.processes["server"].pid, prompt_file(folder)
    figures = {"server_rss": [], "party_peak": [], "client_peak": [], "logits": [], "ids": []}
    answered = len(list((parties.logs / "measure").glob("server-*.json")))  # by earlier tests
    for query in range(answered + 1, answered + queries + 1):
        record = parties.client("--tokens", tokens, "--timeout", "60")
        measured = parties.logs / "measure" / f"server-{query}.json"
        wait_for(measured.exists, 30)  # written by the session thread after the client ends
        figures["server_rss"].append(rss_mb(server_pid))
        figures["party_peak"].append(json.loads(measured.read_text())["steps"][0]["peak_rss_mb"])
        figures["client_peak"].append(record["steps"][0]["peak_rss_mb"])
        figures["logits"].append(torch.tensor(record["logits"][0]))
        figures["ids"].append(record["generated_ids"])
    return figures


def growth(series: list[float]) -> float:
    """Largest increase after warm-up, relative to the value right after warm-up."""
    baseline = series[WARMUP - 1]
    return max(series[WARMUP:]) / baseline - 1


def check_soak(figures: dict, queries: int) -> None:
    print(f"\nsoak: {queries} queries", {k: v for k, v in figures.items() if "rss" in k})
    first = figures["logits"][0]
    assert all(ids == figures["ids"][0] for ids in figures["ids"]), figures["ids"]
    drift = max((logits - first).abs().max().item() for logits in figures["logits"])
    print(f"soak: same generated ids every time; logits at most {drift:.2g} apart")
    assert drift <= LOGIT_ATOL, f"the same prompt gave logits {drift:.3g} apart"
    for name in ("server_rss", "party_peak", "client_peak"):
        rise = growth(figures[name])
        print(f"soak: {name} growth after warm-up {100 * rise:.1f} %")
        assert rise < MAX_RSS_GROWTH, f"{name} grew {100 * rise:.1f} %: {figures[name]}"


@pytest.fixture(scope="module")
def soak_parties(tmp_path_factory):
    """One server for the whole module: it must stay well through every test here."""
    logs = tmp_path_factory.mktemp("soak")
    server_args = (*RANDOM_TINY, "--measure-dir", str(logs / "measure"))
    with local_parties(
        None, server_args=server_args, logs=str(logs), timeout_s=30, max_concurrent=CONCURRENT
    ) as parties:
        yield parties


def test_short_soak(soak_parties, tmp_path):
    check_soak(soak(soak_parties, QUERIES_DEFAULT, tmp_path), QUERIES_DEFAULT)


@pytest.mark.slow
def test_full_soak_of_fifty_queries(soak_parties, tmp_path):
    check_soak(soak(soak_parties, QUERIES_FULL, tmp_path), QUERIES_FULL)


def test_concurrent_clients_up_to_the_limit_then_busy(soak_parties, tmp_path):
    parties, tokens = soak_parties, prompt_file(tmp_path)
    server_pid = parties.processes["server"].pid
    most, stop = [0], threading.Event()

    def watch() -> None:  # proves the sessions overlapped: both party processes alive at once
        while not stop.wait(0.1):
            most[0] = max(most[0], len(session_processes(server_pid)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    records: dict[int, dict] = {}
    clients = [
        threading.Thread(
            target=lambda i=i: records.update({i: parties.client("--tokens", tokens, name=f"c{i}")})
        )
        for i in range(CONCURRENT)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=300)
    stop.set()
    assert len(records) == CONCURRENT, parties.log_text()
    assert most[0] == CONCURRENT, f"at most {most[0]} sessions ran at once"
    assert records[0]["generated_ids"] == records[1]["generated_ids"]
    assert_busy_beyond_the_limit(parties, tokens)


def hold_a_slot(parties: LocalParties, within_s: float = 30.0):
    """A connected, silent client holding one session slot. A session whose client has just
    finished may still hold its slot for a moment (its thread ends after the party process):
    a "busy" answer then is retried."""
    deadline = time.monotonic() + within_s
    while True:
        sock = connect(parties.host, parties.port, 10, "server")
        try:
            recv_message(sock, 10, expect="hello")
            return sock
        except ServerBusy:
            sock.close()
            assert time.monotonic() < deadline, "the earlier sessions never released their slots"
            time.sleep(0.2)


def assert_busy_beyond_the_limit(parties: LocalParties, tokens: str) -> None:
    """Two clients that connected and stay silent hold both slots: a third is told "busy" at
    once, with its own exit code; once they leave (or time out) the server serves again."""
    held = [hold_a_slot(parties) for _ in range(CONCURRENT)]
    try:
        started = time.monotonic()
        command = [sys.executable, "-m", "mpc.client", "--port", str(parties.port)]
        done = subprocess.run(
            [*command, "--tokens", tokens], capture_output=True, text=True, timeout=60
        )
    finally:
        for sock in held:
            sock.close()
    assert done.returncode == EXIT_BUSY, done.stderr
    assert done.stderr == f"error: server busy: {CONCURRENT} sessions running; try again later\n"
    assert time.monotonic() - started < 30  # the answer comes at once; the rest is start-up
    assert parties.client("--tokens", tokens, name="after")["generated_ids"]


def test_sessions_share_no_randomness(tmp_path, monkeypatch):
    """Two identical queries to one (curious) server: the same answer, but every share the server
    held differs: its share of the client's prompt and its own share of each weight."""
    monkeypatch.setenv("CURIOUS_TRANSCRIPT", str(tmp_path / "server.pt"))
    host, port, dealer_port = "127.0.0.1", free_port(span=2), free_port(span=1)
    dealer_flags, server_flags = party_flags(
        None, "ttp", (host, port), (host, dealer_port), 30, (*RANDOM_TINY, "--max-concurrent", "1")
    )
    parties = LocalParties(host, port, tmp_path)
    try:
        parties.start("dealer", parties.program("dealer", "mpc.dealer", *dealer_flags))
        parties.start("server", [sys.executable, "-m", "tests.curious_server", *server_flags])
        records = [parties.client("--tokens", prompt_file(tmp_path)) for _ in range(2)]
    finally:
        parties.stop()
    transcripts = sorted(tmp_path.glob("server.pt*"), key=lambda p: p.stat().st_mtime)
    assert len(transcripts) == 2, parties.log_text()
    views = [torch.load(path, weights_only=True)["events"] for path in transcripts]
    assert records[0]["generated_ids"] == records[1]["generated_ids"]
    first, second = (torch.tensor(r["logits"][0]) for r in records)
    assert (first - second).abs().max() <= LOGIT_ATOL
    for src, what in ((1, "the client's prompt"), (0, "the weights")):
        shares = [own_input_shares(view, src) for view in views]
        assert shares[0] and len(shares[0]) == len(shares[1]), what
        same = [torch.equal(a, b) for a, b in zip(*shares, strict=True)]
        assert not any(same), f"the server held the same share of {what} in two sessions"
