"""Secure-inference cost at the paper's exact shapes (GPT-2 small width 768: 12 layers at T = 128
and 256, 18 layers at T = 128) for the rows of its Table 4, with random weights.

Bytes and rounds come from the exact analytic model (`mpc.cost.walk.predict_costs`, equal to
CrypTen's counters in every category: tests/test_costmodel.py); rows measured with real parties
(the committed GPT-2 results, or `measure=True`) sit beside them with source "measured", and each
measured row carries the model's relative miss. Latency without a measurement is the
communication-only WAN projection (bytes / bandwidth + rounds x RTT, no compute): a lower bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.report import GROUP_OF, summary_table
from bench.reproduction.paper import PAPER_SHAPES, TABLE4_VARIANTS
from bench.reproduction.stages import run_benchmark
from bench.schema import NETWORKS, TOTAL
from models.config import resolve_config
from mpc.approx import ApproxConfig, with_profile
from mpc.cost.walk import predict_costs

PROTOCOLS = ("stock", "optimized")
DEALER = "ttp"
REPO = Path(__file__).resolve().parents[2]
COMMITTED_MEASUREMENTS = (  # relative to REPO; those present are read
    "results/gpt2-t128-crypten-ttp/results.csv",
    "results/gpt2-t128-protocols/results.csv",
    "results/gpt2-t256-optimized/results.csv",  # 12L T=256, baseline and aero
    "results/gpt2-18l-t128-optimized/results.csv",  # 18L T=128, baseline and aero
)
GROUP_COLUMNS = {  # display group of bench.report -> column of this table
    "Softmax": "softmax_gb",
    "GELU": "gelu_gb",
    "ReLU": "relu_gb",
    "LayerNorm": "layernorm_gb",
    "Linear": "linear_gb",
    "Embedding+LM head": "embedding_head_gb",
    "Scaling": "scaling_gb",
}


def shape_config(arch: str, shape: str):
    layers, length, pruned = PAPER_SHAPES[shape]
    prune = pruned if arch == "SM+ScFuFFN+Prune" else None
    return resolve_config(arch, "gpt2", n_layer=layers, block_size=length, pruned_ffn_layers=prune)


def comm_only_wan_s(bytes_: float, rounds: float) -> float:
    """bytes / 2 per direction over 100 Mbit/s plus rounds x 80 ms: no compute (a lower bound)."""
    bandwidth, rtt = NETWORKS["wan"]
    return bytes_ / 2 * 8 / bandwidth + rounds * rtt


def modelled_row(arch: str, shape: str, protocol: str) -> dict:
    cfg = shape_config(arch, shape)
    approx = with_profile(ApproxConfig(), protocol)
    length = cfg.block_size
    client = predict_costs(cfg, approx, length, DEALER, "client")
    server = predict_costs(cfg, approx, length, DEALER, "server")
    total = sum(b for b, _ in client.values())
    rounds = sum(r for _, r in client.values())
    row = {
        "shape": shape,
        "n_layer": cfg.n_layer,
        "seq_len": length,
        "arch": arch,
        "protocol": protocol,
        "source": "cost model",
        "comm_gb": total / 1e9,
        "dealer_gb": (sum(b for b, _ in server.values()) - total) / 1e9,
        "rounds": rounds,
        "comm_only_wan_min": comm_only_wan_s(total, rounds) / 60,
    }
    for column in GROUP_COLUMNS.values():
        row[column] = 0.0
    for (_, category), (bytes_, _) in client.items():
        column = GROUP_COLUMNS.get(GROUP_OF.get(category, ""))
        if column:
            row[column] += bytes_ / 1e9
    return row


def measured_rows(frame: pd.DataFrame, source: str, protocols: dict | None = None) -> list[dict]:
    """Client totals and group bytes of a bench results frame at one of the paper's shapes, each
    beside what today's cost model gives under the settings it was measured with (`protocols`:
    the run's profile name -> ApproxConfig dict, from its config.json; a profile's knobs change
    as the project adds optimizations, so a committed run keeps its own)."""
    rows = []
    table = summary_table(frame)
    clients = frame[(frame.party == "client") & (frame.category != TOTAL)]
    for entry in table.itertuples():
        layers = int(frame[frame.arch == entry.arch].layer.max()) + 1
        shape = next(
            (n for n, (ly, t, _) in PAPER_SHAPES.items() if ly == layers and t == entry.seq_len),
            None,
        )
        if shape is None or entry.arch not in TABLE4_VARIANTS or entry.dealer != DEALER:
            continue
        mine = clients[(clients.arch == entry.arch) & (clients.protocol == entry.protocol)]
        mine = mine[mine.seq_len == entry.seq_len]
        repeats = max(1, mine.repeat.nunique())
        row = {
            "shape": shape,
            "n_layer": layers,
            "seq_len": entry.seq_len,
            "arch": entry.arch,
            "protocol": entry.protocol,
            "source": f"measured: {source}",
            "comm_gb": entry.comm_gb,
            "dealer_gb": entry.dealer_gb,
            "rounds": entry.rounds,
            "comm_only_wan_min": comm_only_wan_s(entry.comm_gb * 1e9, entry.rounds) / 60,
            "measured_wall_s": entry.wall_s,
            "projected_wan_min": entry.projected_wan_min,
            "max_cost_model_error": entry.max_prediction_error,
        }
        recorded = (protocols or {}).get(entry.protocol)
        approx = ApproxConfig.from_dict(recorded) if recorded else None
        approx = approx or with_profile(ApproxConfig(), entry.protocol)
        cfg = shape_config(entry.arch, shape)
        predicted = predict_costs(cfg, approx, entry.seq_len, DEALER, "client")
        row["model_comm_gb"] = sum(b for b, _ in predicted.values()) / 1e9
        row["model_rounds"] = sum(r for _, r in predicted.values())
        for group, column in GROUP_COLUMNS.items():
            part = mine[mine.category.map(GROUP_OF) == group].bytes.sum()
            row[column] = part / repeats / 1e9
        rows.append(row)
    return rows


def measure_shapes(folder: Path) -> list[pd.DataFrame]:
    """Real parties, random weights, both profiles: one bench run per (shape, architecture)."""
    frames = []
    for shape, (layers, length, pruned) in PAPER_SHAPES.items():
        for arch in TABLE4_VARIANTS:
            out = folder / f"{shape.replace(' ', '-').replace('=', '')}-{arch}"
            if not (out / "summary.done").exists():
                sets = [f"n_layer={layers}", f"block_size={length}"]
                sets += [f"pruned_ffn_layers={pruned}"] if arch == "SM+ScFuFFN+Prune" else []
                argv = ["--arch", arch, "--preset", "gpt2", "--out", str(out), "--no-plots"]
                argv += ["--protocol", *PROTOCOLS, *(f"--set={s}" for s in sets)]
                if out.exists():
                    for stale in out.iterdir():
                        stale.unlink()
                if run_benchmark(argv) != 0:
                    raise RuntimeError(f"measuring {arch} at {shape} failed")
                (out / "summary.done").write_text("ok\n")
            frames.append(pd.read_csv(out / "results.csv"))
    return frames


def paper_shapes(measure: bool, folder: Path) -> pd.DataFrame:
    """Cost-model rows for every (shape, Table-4 variant, protocol), then measured rows."""
    rows = [
        modelled_row(arch, shape, protocol)
        for shape in PAPER_SHAPES
        for arch in TABLE4_VARIANTS
        for protocol in PROTOCOLS
    ]
    for name in COMMITTED_MEASUREMENTS:
        if (REPO / name).exists():
            config = json.loads((REPO / name).with_name("config.json").read_text())
            rows += measured_rows(pd.read_csv(REPO / name), name, config.get("protocols"))
    if measure:
        for frame in measure_shapes(folder):
            rows += measured_rows(frame, "this run")
    return pd.DataFrame(rows)
