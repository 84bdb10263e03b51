"""Server, client and dealer on their own network namespaces behind a shaped, delayed router.

    python -m bench.netns --network wan --random-arch baseline --preset tiny   # one query
    python -m bench.netns --network 50mbit,20ms --check   # build, measure RTT and rate, tear down

Needs root (ip netns, tc, /dev/net/tun). Namespaces TAG-server, TAG-client, TAG-dealer (eth0
10.77.{1,2,3}.2) reach TAG-hub (to-PARTY 10.77.N.1) on routed /30 veths; TAG = aeropi-<pid>-<n>.

Bandwidth: `tc tbf` at RATE on both ends of each party link. The hub's egress to the party paces,
with a bucket of max(one frame, RATE x 250 us): the least that tbf (waking every ~80 us on this
VM) still drives at RATE; a real link has no free burst. The party's egress caps its total rate with
a bucket of one 64 KiB TSO frame, so large segments reach the relay whole. Full duplex: B bytes
logged by a party (both directions) take ~(B/2)*8/RATE s, plus TCP/IP headers and ACKs.

Delay without netem: packets from a party link are routed (`ip rule iif to-X lookup 97`: default
dev delay) into a tun held by a relay process in the hub (`bench.relay`), which reads each
(IFF_VNET_HDR with TSO offloads: 64 KiB segments, not 1500-byte packets), keeps it RTT/2 less its
own latency and writes it back unchanged; re-injected (iif delay) it takes the main table on. Both
directions cross the hub: RTT = 2 x RTT/2 (0: no relay). Measured here (2 vCPUs) with --check: TCP
RTT 0.05-0.4 ms above the setting (wake-up latency); the relay passes ~2.8 Gbit/s, or ~13 k
packets/s of 1500 bytes; tbf gets 0.4-0.6 of 1 Gbit/s (CPU bound) and meets 100 Mbit/s and below
(goodput 92-95 %).
Faults (tests/test_network_faults.py): a link set down and up, its tbf rate changed during a
query, and `Topology.loss`, the fraction of packets the relay drops.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.relay import TUN_IF, enter_namespace, relay
from bench.schema import NETWORKS
from models.cli import run_main
from models.errors import UserError
from mpc.session.local import LocalParties, party_flags, start_parties

PREFIX, PARTIES = "aeropi-", ("server", "client", "dealer")
PARTY_IF, DELAY_TABLE = "eth0", "97"
CONTROL_PORT, DEALER_PORT, PROBE_PORT = 7000, 7100, 9000
UPLINK_BURST, MIN_BURST, PACING_S = 96 * 1024, 1600, 250e-6  # 64 KiB TSO frame + its headers
RELAY_LATENCY_S = 30e-6
_runs = itertools.count()


class NetnsError(UserError):
    """The namespaces could not be built, measured or removed (root and iproute2 needed)."""


@dataclass(frozen=True)
class Network:
    name: str
    rate_bit_s: float | None  # None: no bandwidth cap
    rtt_s: float  # 0: no delay relay


def parse_network(text: str) -> Network:
    """`lan`, `wan` (bench.schema.NETWORKS), `none`, or RATE,RTT: `50mbit,20ms`, `none,2ms`."""
    if text in NETWORKS:
        return Network(text, *NETWORKS[text])
    rates, times = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}, {"us": 1e-6, "ms": 1e-3, "s": 1}
    number = r"(\d+(?:\.\d+)?)"
    found = re.fullmatch(rf"(?:none|{number}([kmg]bit)),{number}(us|ms|s)?", text.lower())
    if text == "none" or found:
        rate = float(found[1]) * rates[found[2]] if found and found[1] else None
        rtt = float(found[3]) * times[found[4] or "ms"] if found else 0.0
        if rate is None or rate >= 1e5:
            return Network(text, rate, rtt)
    raise NetnsError(f"network {text!r}: give lan, wan, none or RATE,RTT (50mbit,20ms; >= 100kbit)")


@dataclass(frozen=True)
class Topology:
    tag: str  # aeropi-<pid>-<n>: unique per run, and stale ones are found by their pid
    # Fraction of packets the delaying relay drops (fault tests set it while the run goes on;
    # only with RTT > 0, when there is a relay): a shared double, read per packet.
    loss: Any = field(default=None, compare=False)

    def namespace(self, party: str) -> str:  # a party, or "hub"
        return f"{self.tag}-{party}"

    def address(self, party: str) -> str:
        return f"10.77.{PARTIES.index(party) + 1}.2"

    def namespaces(self) -> list[str]:
        return [self.namespace(p) for p in ("hub", *PARTIES)]


def _run(command: str | list[str]) -> str:
    """Run an ip/tc command (a string is split on spaces); a NetnsError if it fails."""
    argv = command.split() if isinstance(command, str) else command
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip()} (needs root, iproute2)")
    return done.stdout


def shape_links(topology: Topology, rate: float | None, rtt_s: float) -> None:
    """tbf at `rate` on both ends of every party link (None: remove the caps)."""
    for party in PARTIES:
        shape_link(topology, party, rate, rtt_s)


def shape_link(topology: Topology, party: str, rate: float | None, rtt_s: float) -> None:
    """tbf at `rate` on both ends of one party's link (None: remove the cap)."""
    limit = max(2 * int((rate or 0) / 8 * rtt_s), 256 * 1024)  # queue: 2 x bandwidth-delay
    downlink = max(MIN_BURST, int((rate or 0) / 8 * PACING_S))
    for space, device, burst in (
        (topology.namespace(party), PARTY_IF, UPLINK_BURST),
        (topology.namespace("hub"), f"to-{party}", downlink),
    ):
        if rate is None:  # back to the default qdisc
            subprocess.run(f"tc -n {space} qdisc del dev {device} root".split(), stderr=-3)
        else:
            _run(f"tc -n {space} qdisc replace dev {device} root tbf rate {rate:.0f}bit "
                 f"burst {burst} limit {limit}")  # fmt: skip


def set_link_up(topology: Topology, party: str, up: bool) -> None:
    """Take a party's link down at the hub (its frames go nowhere) or bring it back."""
    _run(f"ip -n {topology.namespace('hub')} link set to-{party} {'up' if up else 'down'}")


def build(topology: Topology, network: Network) -> None:
    """Namespaces, routed veth links, forwarding, shaping and the delay routing (not the relay)."""
    hub = topology.namespace("hub")
    _run(f"ip netns add {hub}")
    _run(f"ip -n {hub} link set lo up")
    _run(f"ip netns exec {hub} sysctl -qw net.ipv4.ip_forward=1")
    for party in PARTIES:
        space, link, address = topology.namespace(party), f"to-{party}", topology.address(party)
        gateway = address.rsplit(".", 1)[0] + ".1"
        _run(f"ip netns add {space}")
        _run(f"ip link add {link} netns {hub} type veth peer {PARTY_IF} netns {space}")
        _run(f"ip -n {hub} addr add {gateway}/30 dev {link}")
        _run(f"ip -n {space} addr add {address}/30 dev {PARTY_IF}")
        for namespace, device in ((hub, link), (space, PARTY_IF), (space, "lo")):
            _run(f"ip -n {namespace} link set {device} up")
        _run(f"ip -n {space} route add default via {gateway}")
    shape_links(topology, network.rate_bit_s, network.rtt_s)
    if network.rtt_s > 0:
        _run(f"ip -n {hub} tuntap add dev {TUN_IF} mode tun vnet_hdr")
        _run(f"ip -n {hub} link set {TUN_IF} up txqueuelen 10000")
        _run(f"ip netns exec {hub} sysctl -qw net.ipv4.conf.{TUN_IF}.rp_filter=0")
        _run(f"ip -n {hub} route add default dev {TUN_IF} table {DELAY_TABLE}")
        for party in PARTIES:
            _run(f"ip -n {hub} rule add iif to-{party} lookup {DELAY_TABLE}")


def teardown(topology: Topology) -> list[str]:
    """Delete the run's namespaces (their veths and tun go with them); the names that failed."""
    failed = []
    for name in topology.namespaces():
        done = subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if done.returncode != 0 and Path("/run/netns", name).exists():
            failed.append(name)
    return failed


def unavailable() -> str | None:
    """Why namespaces cannot be built here (not root, no iproute2 or tun), or None."""
    if os.geteuid() != 0:
        return "needs root"
    if not (shutil.which("ip") and shutil.which("tc") and Path("/dev/net/tun").exists()):
        return "needs iproute2 (ip, tc) and /dev/net/tun"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None if made.returncode == 0 else f"ip netns fails: {made.stderr.strip()}"


def leftover_namespaces(prefix: str = PREFIX) -> list[str]:
    folder = Path("/run/netns")
    return sorted(p.name for p in folder.glob(f"{prefix}*")) if folder.is_dir() else []


def sweep_stale() -> None:
    """Remove namespaces, and the processes in them, of runs whose process is gone (SIGKILL)."""
    for name in leftover_namespaces():
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path("/proc", pid).exists():
            orphans = subprocess.run(["ip", "netns", "pids", name], capture_output=True).stdout
            for orphan in orphans.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(orphan), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _probe_server(namespace: str, address: str, ready) -> None:
    """Child process: one echo connection (RTT), then one sink connection (throughput)."""
    enter_namespace(namespace)
    with socket.create_server((address, PROBE_PORT)) as server:
        ready.send("ready")
        for echo in (True, False):
            conn, _ = server.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while data := conn.recv(1 << 20):
                    if echo or data.endswith(b"\n"):
                        conn.sendall(data if echo else b"k")


def _probe_client(namespace: str, address: str, pings: int, size: int, result) -> None:
    enter_namespace(namespace)
    rtts = []
    with socket.create_connection((address, PROBE_PORT), timeout=30) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(pings):
            started = time.perf_counter()
            conn.sendall(b"x")
            conn.recv(1)
            rtts.append(time.perf_counter() - started)
    with socket.create_connection((address, PROBE_PORT), timeout=120) as conn:
        started = time.perf_counter()
        conn.sendall(b"\0" * (size - 1) + b"\n")
        conn.recv(1)
        result.send({"rtts_s": rtts, "bytes": size, "seconds": time.perf_counter() - started})


def _spawn(target, *args, wait_s: float = 120) -> tuple[multiprocessing.Process, object]:
    """A child process running `target(*args, conn)`, once it has sent its first message."""
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    process = context.Process(target=target, args=(*args, theirs), daemon=True)
    process.start()
    if not mine.poll(wait_s):
        process.kill()
        raise NetnsError(f"{target.__name__} sent nothing in {wait_s:.0f} s")
    return process, mine


def measure_link(topology: Topology, network: Network, pings: int = 30) -> dict:
    """Client to server: TCP RTTs (1-byte ping-pong) and the time of a ~8 s bulk transfer (long
    enough that TCP's slow start, ~0.5 s at 80 ms, costs under 10 % of it)."""
    size = int(min((network.rate_bit_s or 8e8) / 8 * 8, 400e6))
    server, children = topology.address("server"), []
    try:
        children.append(_spawn(_probe_server, topology.namespace("server"), server)[0])
        client, result = _spawn(_probe_client, topology.namespace("client"), server, pings, size)
        children.append(client)
        found = result.recv()  # sent before _spawn returned
    finally:
        for child in children:
            child.kill()
            child.join()
    rtts = sorted(found["rtts_s"])
    return {
        **found,
        "rtt_median_s": rtts[len(rtts) // 2],
        "rtt_p90_s": rtts[int(0.9 * (len(rtts) - 1))],
        "throughput_bit_s": size * 8 / found["seconds"],
    }


@contextlib.contextmanager
def shaped_network(network: Network | str) -> Iterator[Topology]:
    """The built topology with its relay running; all of it removed when the block ends."""
    network = parse_network(network) if isinstance(network, str) else network
    loss = multiprocessing.get_context("spawn").RawValue("d", 0.0)
    topology, relay_process = Topology(f"{PREFIX}{os.getpid()}-{next(_runs)}", loss), None
    sweep_stale()
    try:
        build(topology, network)
        if network.rtt_s > 0:
            hold = max(0.0, network.rtt_s / 2 - RELAY_LATENCY_S)
            relay_process, _ = _spawn(relay, topology.namespace("hub"), hold, loss)
        yield topology
    finally:
        if relay_process is not None:
            relay_process.kill()
            relay_process.join()
        if failed := teardown(topology):
            print(f"netns: could not delete {failed}: run `ip netns del` on them", file=sys.stderr)


class ShapedParties(LocalParties):
    """mpc.session.local.LocalParties with every party in its own namespace behind the router."""

    def __init__(self, topology: Topology, network: Network, logs: Path) -> None:
        super().__init__(topology.address("server"), CONTROL_PORT, logs)
        self.topology, self.network = topology, network

    def program(self, party: str, module: str, *args: str) -> list[str]:
        namespace = self.topology.namespace(party)
        gloo = f"GLOO_SOCKET_IFNAME={PARTY_IF}"  # else gloo binds the address of the hostname
        return [
            "ip",
            "netns",
            "exec",
            namespace,
            "env",
            gloo,
            *super().program(party, module, *args),
        ]


@contextlib.contextmanager
def shaped_parties(
    network: Network | str,
    checkpoint: str | None = None,
    dealer: str = "ttp",
    timeout_s: float = 60,
    server_args: tuple[str, ...] = (),
    logs: str | None = None,
) -> Iterator[ShapedParties]:
    """Dealer (ttp) and server running in their namespaces until the block ends: the programs and
    flags of mpc.session.local.local_parties, plus `--measure-dir LOGS/measure` on the server."""
    network = parse_network(network) if isinstance(network, str) else network
    folder = Path(logs or tempfile.mkdtemp(prefix="aero-pi-netns-"))
    (folder / "measure").mkdir(parents=True, exist_ok=True)
    with shaped_network(network) as topology:
        parties = ShapedParties(topology, network, folder)
        server_args = ("--measure-dir", str(folder / "measure"), *server_args)
        flags = party_flags(
            checkpoint,
            dealer,
            (parties.host, CONTROL_PORT),
            (topology.address("dealer"), DEALER_PORT),
            timeout_s,
            server_args,
        )
        try:
            start_parties(parties, dealer, flags)
            yield parties
        finally:
            parties.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m bench.netns", description=__doc__.split("\n")[0])
    parser.add_argument("--network", default="wan", help="lan, wan, none, RATE,RTT (50mbit,20ms)")
    parser.add_argument("--check", action="store_true", help="only build, measure, tear down")
    parser.add_argument(
        "--hold", type=float, default=0.0, help="with --check: keep the links up this long (s)"
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint")
    weights.add_argument("--random-arch", metavar="ARCH")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--dealer", choices=("ttp", "tfp"), default="ttp")
    parser.add_argument("--seq-len", type=int, default=8, help="prompt length (fixed token ids)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds any wait may last")
    args = parser.parse_args(argv)
    if not (args.check or args.checkpoint or args.random_arch):
        parser.error("give --checkpoint or --random-arch (or --check)")
    net = parse_network(args.network)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM tears down like Ctrl-C
    # Ctrl-C tears down even when started with SIGINT ignored (inherited from a parent)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rate = f"{net.rate_bit_s / 1e6:g} Mbit/s" if net.rate_bit_s else "uncapped"
    print(f"netns: {net.name}: {rate}, RTT {net.rtt_s * 1e3:g} ms", flush=True)
    if args.check:
        with shaped_network(net) as topology:
            found = measure_link(topology, net)
            time.sleep(args.hold)  # tests interrupt a run whose links are still up
        print(
            f"netns: TCP RTT median {found['rtt_median_s'] * 1e3:.3f} ms (min "
            f"{min(found['rtts_s']) * 1e3:.3f}, p90 {found['rtt_p90_s'] * 1e3:.3f}); "
            f"{found['bytes'] / 1e6:.1f} MB in {found['seconds']:.2f} s: "
            f"{found['throughput_bit_s'] / 1e6:.1f} Mbit/s"
        )
        return 0
    random = (
        ("--random-arch", args.random_arch, "--preset", args.preset) if args.random_arch else ()
    )
    with shaped_parties(net, args.checkpoint, args.dealer, args.timeout, random) as parties:
        prompt = parties.logs / "prompt.json"
        prompt.write_text(json.dumps([(7 * i + 3) % 64 for i in range(args.seq_len)]))
        records = parties.client("--tokens", str(prompt), "--timeout", str(args.timeout))
        records = {"client": records, "server": parties.server_record(1)}
    for party, record in records.items():
        total = {
            k: sum(s[k] for s in record["steps"]) for k in ("bytes", "rounds", "comm_s", "wall_s")
        }
        print(
            f"netns: {party} {total['bytes'] / 1e6:.2f} MB, {total['rounds']:.0f} rounds, "
            f"comm {total['comm_s']:.2f} s, wall {total['wall_s']:.2f} s"
        )
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
