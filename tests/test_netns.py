"""Two hosts for real: server, client and dealer in their own network namespaces (bench.netns),
behind a router that caps each link's bandwidth (tc tbf) and adds delay (a userspace tun relay).

Needs root, iproute2 and /dev/net/tun; skipped otherwise. The tolerances come from runs on a
2-vCPU VM shared with other jobs (tiny baseline, 16-token prompt, trusted dealer):
- bandwidth: the server's CrypTen count is 9.5 MB per query (7.5 MB with the client, 2 MB with the
  dealer, whose triples share the server's link). Capping every link at 10 Mbit/s added 3.9-5.1 s
  of communication time (min of two runs each) against (9.5 MB / 2) * 8 / 10 Mbit/s = 3.8 s
  predicted: ratio 1.0-1.35, the higher values while other jobs loaded the machine (1.3 at
  5 Mbit/s). Above 1 because the wire carries more than CrypTen counts: TCP/IP headers, ACKs and
  gloo framing (the hub counts 4.9 MB per direction between client and server for CrypTen's
  3.76 MB). Tolerance: 0.8-1.7.
- delay: TCP RTT through the relay is 0.05-0.4 ms above the setting (host wake-up latency).
- rounds: with RTT r, each CrypTen round costs ~2 r, not r: gloo's collectives wait for the peer's
  "ready to receive" before sending (measured 2.03 r at 20 ms and 2.06 r at 80 ms, dealer tfp).
  A trusted-dealer triple request costs ~4 r more on the server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from bench.netns import (
    PREFIX,
    Network,
    leftover_namespaces,
    measure_link,
    parse_network,
    shape_links,
    shaped_network,
    shaped_parties,
    sweep_stale,
    unavailable,
)
from models.checkpoint import load_checkpoint, random_checkpoint, save_checkpoint
from models.config import resolve_config

LOGIT_TOLERANCE = 0.05  # as tests/test_secure_inference.py: 16 fraction bits, default approx
CAP_BIT_S = 10e6
# Measured comm-time increase / ((server bytes / 2) * 8 / cap). Seen 1.0-1.35 on an idle machine
# (TCP/IP headers, ACKs and gloo framing add ~30 % on the wire) and 0.76 while two other jobs
# loaded both cores (CPU waits inflate the uncapped baseline and shrink the difference).
BANDWIDTH_RATIO = (0.6, 1.8)
# Measured TCP RTT minus the setting: 0.05-0.4 ms typical, 0.80 ms seen once in a full CI run
# (the relay's wake-up latency on a busy 2-vCPU machine).
RTT_EXCESS_S = (0.0, 1.5e-3)
OURS = f"{PREFIX}{os.getpid()}-"


@pytest.fixture
def netns():
    """Skips where namespaces cannot be built; afterwards checks that nothing was left behind."""
    if reason := unavailable():
        pytest.skip(reason)
    yield
    assert leftover_namespaces(OURS) == [], "namespaces left behind"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("netns") / "baseline-tiny.pt"
    save_checkpoint(path, random_checkpoint(resolve_config("baseline", "tiny")))
    return path


def test_network_names_and_custom_shapes():
    assert parse_network("wan") == Network("wan", 100e6, 0.08)  # the paper's
    assert (parse_network("lan").rate_bit_s, parse_network("lan").rtt_s) == (1e9, 0.5e-3)
    custom = parse_network("50mbit,20ms")
    assert (custom.rate_bit_s, custom.rtt_s) == (50e6, 0.02)
    assert parse_network("none").rate_bit_s is None and parse_network("none").rtt_s == 0
    assert parse_network("none,2ms").rtt_s == 0.002 and parse_network("1gbit,500us").rtt_s == 5e-4
    for bad in ("50mbit", "fast,1ms", "50,20ms", "10kbit,1ms"):
        with pytest.raises(Exception, match="RATE,RTT"):
            parse_network(bad)


def test_relay_rtt_and_tbf_rate_match_the_configuration(netns):
    direct = parse_network("none")
    with shaped_network(direct) as topology:
        base = measure_link(topology, direct, pings=20)
    assert base["rtt_median_s"] < 0.5e-3, "without a relay the RTT is the host stack's"
    shaped = parse_network("20mbit,20ms")
    with shaped_network(shaped) as topology:
        found = measure_link(topology, shaped, pings=30)
        assert set(topology.namespaces()) <= set(leftover_namespaces(OURS))
    excess = found["rtt_median_s"] - shaped.rtt_s
    assert RTT_EXCESS_S[0] <= excess <= RTT_EXCESS_S[1], f"RTT {found['rtt_median_s'] * 1e3:.3f} ms"
    # Goodput: payload only (headers take ~4 % of 1500-byte frames), slow start included.
    assert 0.8 * 20e6 <= found["throughput_bit_s"] <= 20e6, f"{found['throughput_bit_s']:.3g}"


def _plaintext_last_logits(checkpoint, ids) -> torch.Tensor:
    with torch.no_grad():
        return load_checkpoint(checkpoint).build_model()(torch.tensor([ids]))[0, -1]


def link_bytes(topology) -> dict[str, int]:
    """Bytes the hub sent towards each party: frames with all headers, ACKs included."""
    found = {}
    for party in ("server", "client", "dealer"):
        command = ["ip", "-n", topology.namespace("hub"), "-s", "-j", "link", "show", f"to-{party}"]
        shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        found[party] = json.loads(shown)[0]["stats64"]["tx"]["bytes"]
    return found


def _total(record: dict, key: str) -> float:
    return sum(step[key] for step in record["steps"])


def test_bandwidth_cap_costs_bytes_over_rate_and_keeps_logits(netns, checkpoint, tmp_path):
    ids = [(7 * i + 3) % 512 for i in range(16)]
    prompt = tmp_path / "prompt.json"
    prompt.write_text(json.dumps(ids))
    expected = _plaintext_last_logits(checkpoint, ids)
    runs: dict[float | None, list[tuple[dict, dict]]] = {None: [], CAP_BIT_S: []}
    with shaped_parties("none", checkpoint=checkpoint, logs=str(tmp_path / "logs")) as parties:
        for query, cap in enumerate((None, CAP_BIT_S, None, CAP_BIT_S), start=1):
            shape_links(parties.topology, cap, 0.0)
            before = link_bytes(parties.topology)
            record = parties.client("--tokens", str(prompt))
            runs[cap].append((record, parties.server_record(query)))
            after = link_bytes(parties.topology)
            wire = {party: after[party] - before[party] for party in after}
            print(f"cap {cap}: bytes on the wire towards each party {wire}")
        logs = parties.log_text()
    # Distinct hosts: the dealer is booked from the server's address, the query comes from the
    # client's, and gloo bound each party's own interface.
    assert re.search(r"dealer: session 1 for 10\.77\.1\.2:7001", logs), logs
    assert re.search(r"server: query 1 from 10\.77\.2\.2", logs), logs
    for record, _ in runs[None] + runs[CAP_BIT_S]:
        revealed = torch.tensor(record["logits"][0])[-1]
        error = (revealed - expected).abs().max().item()
        print(f"max abs logit error {error:.4f}")
        assert error < LOGIT_TOLERANCE, f"max abs logit error {error:.4f} (same as on loopback)"
    # The minimum of two runs: other jobs on the machine only ever add time.
    comm = {
        cap: min(_total(server, "comm_s") for _, server in pairs) for cap, pairs in runs.items()
    }
    server_bytes = _total(runs[CAP_BIT_S][0][1], "bytes")
    predicted = (server_bytes / 2) * 8 / CAP_BIT_S
    ratio = (comm[CAP_BIT_S] - comm[None]) / predicted
    print(f"{server_bytes / 1e6:.2f} MB: +{comm[CAP_BIT_S] - comm[None]:.2f} s, {predicted:.2f} s")
    assert BANDWIDTH_RATIO[0] <= ratio <= BANDWIDTH_RATIO[1], f"measured / predicted = {ratio:.2f}"


def _wait_for_namespaces(pid: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(leftover_namespaces(f"{PREFIX}{pid}-")) < 4:
        assert time.monotonic() < deadline, "the namespaces never appeared"
        time.sleep(0.1)
    time.sleep(1.0)  # relay and probes started


def test_failure_ctrl_c_and_kill_leave_nothing_behind(netns):
    with pytest.raises(RuntimeError, match="boom"), shaped_network("1mbit,5ms") as topology:
        assert set(topology.namespaces()) <= set(leftover_namespaces(OURS))
        raise RuntimeError("boom")
    assert leftover_namespaces(topology.tag) == []
    command = [
        *[sys.executable, "-m", "bench.netns", "--network", "1mbit,50ms", "--check"],
        *["--hold", "120"],  # on a quiet machine the check alone could end before the signal
    ]
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_namespaces(run.pid)
        children = psutil.Process(run.pid).children(recursive=True)
        assert children, "relay and probe processes expected"
        run.send_signal(signum)
        assert run.wait(timeout=30) != 0
        if signum == signal.SIGKILL:  # no clean-up ran: the next run sweeps it
            sweep_stale()
        assert leftover_namespaces(f"{PREFIX}{run.pid}-") == [], signal.Signals(signum).name
        psutil.wait_procs(children, timeout=10)
        assert not [c for c in children if c.is_running()], "processes left behind"


@pytest.mark.slow
def test_each_round_costs_about_two_round_trips(netns, checkpoint, tmp_path):
    """Dealer tfp so that only client-server rounds count; uncapped links, RTT 0 then 20 ms."""
    prompt = tmp_path / "prompt.json"
    prompt.write_text(json.dumps(list(range(16))))
    comm, rounds = {}, 0.0
    for network in ("none", "none,20ms"):
        with shaped_parties(network, checkpoint=checkpoint, dealer="tfp") as parties:
            record = parties.client("--tokens", str(prompt))
            comm[network], rounds = _total(record, "comm_s"), _total(record, "rounds")
    per_round = (comm["none,20ms"] - comm["none"]) / rounds / 0.020
    assert 1.5 <= per_round <= 2.5, f"{per_round:.2f} RTT per CrypTen round"


@pytest.mark.slow
def test_command_line_runs_one_query_on_a_wan_like_link(netns):
    command = [sys.executable, "-m", "bench.netns", "--network", "50mbit,10ms"]
    done = subprocess.run(
        [*command, "--random-arch", "baseline", "--preset", "tiny"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"client [\d.]+ MB, \d+ rounds, comm [\d.]+ s", done.stdout), done.stdout
