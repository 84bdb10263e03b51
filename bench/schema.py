"""The one row type of every benchmark CSV, the network presets, and the latency projection.

One tidy row per (run, architecture, backend, protocol, dealer, network, sequence length, party,
layer, category, repeat). Units are in the column names. Rows with category "total" hold the whole
query of that party (and the figures only a whole query has: kernel byte count, peak memory,
accuracy); the other categories are its exclusive parts and add up to it. Layer -1 is for parts
outside the transformer blocks (embedding, final LayerNorm, LM head, input sharing, reveal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

NETWORKS = {  # name: (bandwidth in bit/s, round-trip time in s)
    "lan": (1e9, 0.5e-3),
    "wan": (100e6, 80e-3),  # the paper's setting: 100 Mbit/s, 80 ms
}
TOTAL = "total"
# Network round trips one communication round costs, by transport, measured on the shaped links
# of bench/netns.py (`rtt_per_round` on the total rows of such a run): gloo's collectives wait for
# the peer's ready-to-receive (2.03-2.06 RTT); the pair channel sends both ways at once (0.52:
# half a round trip, the floor for an exchange). SPU's brpc: not measured, 1 assumed (its
# `rounds` count messages, an upper bound on rounds).
RTT_PER_ROUND = {"gloo": 2.05, "pair_channel": 0.52, "brpc": 1.0}


def transfer_seconds(bytes_: float, bandwidth_bit_s: float) -> float:
    """`bytes_` is one party's logged traffic (both directions); on a full-duplex link each
    direction carries about half of it, so the transfer takes bytes / 2 / (bandwidth / 8)."""
    return (bytes_ / 2) * 8 / bandwidth_bit_s


def projected_seconds(
    compute_s: float, bytes_: float, rounds: float, network: str, transport: str = "gloo"
) -> float:
    """compute + transfer + rounds x RTT x the transport's measured round trips per round: a
    projection, not a measurement."""
    bandwidth, rtt = NETWORKS[network]
    per_round = RTT_PER_ROUND.get(transport, 1.0)
    return compute_s + transfer_seconds(bytes_, bandwidth) + rounds * rtt * per_round


@dataclass
class ResultRow:
    run_id: str
    arch: str
    preset: str
    weights: str  # "random" or the checkpoint's file name
    backend: str  # "crypten", "spu-semi2k", "spu-cheetah"
    # CrypTen: the profile, "stock" (CrypTen as shipped), "optimized" or "custom"; SPU: its
    # settings label
    protocol: str
    dealer: str  # "ttp" or "tfp" (insecure)
    network: str  # where it was measured: "loopback", or a shaped link
    seq_len: int
    party: str  # "server" or "client"
    layer: int
    category: str
    repeat: int
    bytes: float
    rounds: float
    comm_s: float
    wall_s: float
    cpu_s: float
    calls: int
    predicted_bytes: float = math.nan  # analytic cost model
    predicted_rounds: float = math.nan
    projected_lan_s: float = math.nan  # (wall - comm) + bytes / bandwidth + rounds x RTT
    projected_wan_s: float = math.nan
    os_bytes: float = math.nan  # kernel TCP payload counters (total rows only)
    # total rows: the query's peak resident memory; SPU's category rows: the peak while that
    # category's stages ran (sampled)
    peak_rss_mb: float = math.nan
    max_abs_logit_error: float = math.nan  # client total rows, against plaintext
    top1_match: float = math.nan  # client total rows: 1 if the MPC argmax equals plaintext's
    # server total rows, offline_dealer: the dealer's material fetched before the prompt was
    # shared (bytes rank 0 logged; seconds of the rehearsal that planned it plus the transfer)
    offline_bytes: float = math.nan
    offline_s: float = math.nan
    transport: str = ""  # how the parties' rounds travel: gloo, pair_channel (CrypTen), brpc (SPU)
    # total rows of a shaped-network run: (comm_s - transfer time) / (rounds x RTT), measured
    rtt_per_round: float = math.nan

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def project(self) -> ResultRow:
        compute = max(0.0, self.wall_s - self.comm_s)
        transport = self.transport or "gloo"
        self.projected_lan_s = projected_seconds(compute, self.bytes, self.rounds, "lan", transport)
        self.projected_wan_s = projected_seconds(compute, self.bytes, self.rounds, "wan", transport)
        return self


COUNTERS = ("bytes", "rounds", "comm_s", "wall_s", "cpu_s")


def measured_rows(ops: list[dict], total: dict, party: str, base: dict, repeat: int) -> list:
    """One party's measured query as rows: one per (layer, category) op record, then a TOTAL row
    from `total` (the whole query's counters plus os_bytes and peak_rss_mb). Any backend."""
    rows = [
        ResultRow(
            **base,
            party=party,
            layer=op["layer"],
            category=op["category"],
            repeat=repeat,
            calls=op["calls"],
            peak_rss_mb=op.get("peak_rss_mb", math.nan),
            **{k: op[k] for k in COUNTERS},
        )
        for op in ops
    ]
    whole = ResultRow(
        **base,
        party=party,
        layer=-1,
        category=TOTAL,
        repeat=repeat,
        calls=1,
        os_bytes=total["os_bytes"],
        peak_rss_mb=total["peak_rss_mb"],
        **{k: total[k] for k in COUNTERS},
    )
    return [*rows, whole]
