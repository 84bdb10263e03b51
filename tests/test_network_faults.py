"""Network faults during a query, on shaped links (bench.netns: each party in its own namespace
behind the hub's delaying relay): a party's link goes down and comes back, a link's rate collapses
to 1 Mbit/s, the relay drops packets. Each time the client either completes (a whole, parseable
record) or ends with one line within its timeout; the server and dealer go on (their session
processes end, their logs hold no traceback) and answer the next client; no partial file is left.
Counted per kind like the kill faults of tests/test_faults.py; `-m slow` (root; ~20 minutes).
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bench.netns import parse_network, set_link_up, shape_link, shaped_parties, unavailable
from tests.test_faults import check_logs_and_files, survivors_ended
from tests.test_secure_errors import EXIT_USER_ERROR, wait_for
from tests.test_soak import RANDOM_TINY, prompt_file

TIMEOUT_S = 20
NETWORK = "100mbit,2ms"  # RTT > 0: the relay runs, and can drop
FAULTS = 20
KINDS = ("link_down", "rate_collapse", "packet_loss")
COLLAPSED_BIT_S = 1e6
# A fault lasts at most 2 timeouts; the survivors then need up to two more (gloo retries its pair
# connections, tests/test_faults.py) plus process start-up and teardown on 2 loaded cores.
LONGEST_FAULT_S = 2 * TIMEOUT_S
ENDED_S = LONGEST_FAULT_S + 2 * TIMEOUT_S + 40


@pytest.fixture
def parties(tmp_path):
    if reason := unavailable():
        pytest.skip(reason)
    server_args = (*RANDOM_TINY,)
    with shaped_parties(
        NETWORK, timeout_s=TIMEOUT_S, server_args=server_args, logs=str(tmp_path)
    ) as p:
        yield p


def start_client(parties, folder: Path, name: str) -> subprocess.Popen:
    args = ["--host", parties.host, "--port", str(parties.port), "--tokens", prompt_file(folder)]
    args += ["--max-new-tokens", "2", "--timeout", str(TIMEOUT_S)]
    command = parties.program(
        "client", "mpc.client", *args, "--json-out", str(folder / f"{name}.json")
    )
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=(folder / f"{name}.err").open("w"),
        start_new_session=True,
    )


def fault(parties, kind: str, link: str, delay: float, duration: float, rng: random.Random) -> str:
    """Thread body: `delay` s into the query, `kind` on `link` for `duration` s, then repaired."""
    network, topology = parse_network(NETWORK), parties.topology
    time.sleep(delay)
    if kind == "link_down":
        set_link_up(topology, link, False)
    elif kind == "rate_collapse":
        shape_link(topology, link, COLLAPSED_BIT_S, network.rtt_s)
    else:
        topology.loss.value = rng.uniform(0.01, 0.1)  # every link through the relay
    time.sleep(duration)
    if kind == "link_down":
        set_link_up(topology, link, True)
    elif kind == "rate_collapse":
        shape_link(topology, link, network.rate_bit_s, network.rtt_s)
    else:
        topology.loss.value = 0.0


def fault_round(parties, kind: str, rng: random.Random, query_s: float, folder: Path, name: str):
    link = "all" if kind == "packet_loss" else rng.choice(("client", "server", "dealer"))
    delay, duration = rng.uniform(0.2, query_s), rng.uniform(1.0, LONGEST_FAULT_S)
    client = start_client(parties, folder, name)
    injector = threading.Thread(target=fault, args=(parties, kind, link, delay, duration, rng))
    started = time.monotonic()
    injector.start()
    try:
        wait_for(lambda: survivors_ended(parties, client), ENDED_S)
    finally:
        injector.join()
        if client.poll() is None:  # a failed check must not leave the client running
            client.kill()
            client.wait()
    took = time.monotonic() - started
    stderr = (folder / f"{name}.err").read_text()
    if client.returncode == 0:
        json.loads((folder / f"{name}.json").read_text())  # whole and parseable
        outcome = "completed"
    else:
        assert client.returncode == EXIT_USER_ERROR, stderr
        assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
        assert not (folder / f"{name}.json").exists(), "a failed query left a result file"
        outcome = "one line"
    print(f"network faults: {kind} on {link} link(s) after {delay:.1f} s for {duration:.1f} s: "
          f"{outcome} in {took:.1f} s {stderr.strip()[:150]}")  # fmt: skip
    return outcome


def run_network_faults(parties, count: int, folder: Path) -> dict[str, dict[str, int]]:
    rng = random.Random(19)
    wait_for(lambda: "at most" in (parties.logs / "server.log").read_text(), 120)  # listening
    started = time.monotonic()
    assert parties.client("--tokens", prompt_file(folder), "--max-new-tokens", "2")
    query_s = time.monotonic() - started
    counts = {kind: {"completed": 0, "one line": 0} for kind in KINDS}
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        counts[kind][fault_round(parties, kind, rng, query_s, folder, f"{kind}-{index}")] += 1
        record = parties.client("--tokens", prompt_file(folder), name=f"after-{index}")
        assert record["generated_ids"], "the server must serve the next client"
    files = check_logs_and_files(parties)
    print(f"\nnetwork faults: clean query {query_s:.1f} s; {files}; {counts}")
    assert files["partial_files"] == 0
    return counts


@pytest.mark.slow
def test_twenty_network_faults(parties, tmp_path):
    counts = run_network_faults(parties, FAULTS, tmp_path)
    assert sum(sum(c.values()) for c in counts.values()) == FAULTS
