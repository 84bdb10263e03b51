"""The reproduction's tables: Table 4's layout per trained model, the paper's shapes, findings.

Every number in the markdown is a formatted cell of a CSV row written next to it (tests check
this): `table4.csv` (one row per variant and protocol profile), `paper_shapes.csv`,
`head_distribution.csv` and `findings.csv` (each claim of the paper: our number, the paper's,
a verdict). The paper's numbers come from bench/reproduction/paper.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from bench.report import BASELINE, markdown_table, num, summary_table, times
from bench.reproduction.paper import (
    ATTENTION_T2D,
    ATTENTION_TD2,
    PAPER_COST,
    PAPER_HEADS,
    PAPER_PPL,
    TABLE4_SHAPE,
)
from models.config import resolve_config


@dataclass
class Tables:
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    markdown: dict[str, str] = field(default_factory=dict)


def op_counts(arch: str, preset: str, length: int) -> dict:
    """Nonlinear operations and FLOPs of one forward over `length` tokens (the paper's formulas:
    FFN 16 T d^2 per layer, fused 2 T d^2, attention 8 T d^2 + 3 T^2 d). LayerNorms include
    the final one (the paper's Table 4 counts 2 per layer)."""
    cfg = resolve_config(arch, preset)
    d, layers = cfg.n_embd, cfg.n_layer
    ffn_layers = sum(cfg.has_ffn(layer) for layer in range(layers))
    per_ffn = 2 * length * d * d if cfg.ffn_form == "fused" else 4 * length * d * cfg.ffn_hidden
    has_act = cfg.ffn_act in ("gelu", "relu")
    norm = cfg.norm == "layernorm"
    attention = ATTENTION_TD2 * length * d * d + ATTENTION_T2D * length**2 * d  # one layer's
    return {
        "softmax_ops": layers * cfg.n_head,
        "layernorm_ops": (layers + ffn_layers + 1) if norm else 0,
        "activation": cfg.ffn_act if has_act else "-",
        "activation_ops": ffn_layers if has_act else 0,
        "ffn_mflops": ffn_layers * per_ffn / 1e6,
        "attn_mflops": layers * attention / 1e6,
    }


def table4(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (variant, protocol): PPL, op counts, FLOPs, measured MPC cost and accuracy."""
    training, mpc = frames["training"], frames["mpc_results"]
    if training.empty:
        return pd.DataFrame()
    cost = summary_table(mpc) if not mpc.empty else pd.DataFrame(columns=["arch", "protocol"])
    rows = []
    protocols = sorted(set(cost.protocol), key=["stock", "optimized"].index) or ["-"]
    # one T for every row's op counts: the measured prompt length (else the training window)
    length = int(cost.seq_len.max()) if len(cost) else int(training.seq_len.max())
    for record in training.itertuples():
        for protocol in protocols:
            measured = cost[(cost.arch == record.arch) & (cost.protocol == protocol)]
            row = {"arch": record.arch, "protocol": protocol, "status": record.status}
            row |= {"eval_ppl": record.eval_ppl, "diverged_at_step": record.diverged_at_step}
            row |= {"paper_ppl": PAPER_PPL.get(record.arch, math.nan), "cost_seq_len": length}
            row |= op_counts(record.arch, record.preset, length)
            row |= _accuracy(frames["accuracy"], record.arch, protocol)
            row |= _cost(measured)
            paper = PAPER_COST[TABLE4_SHAPE].get(record.arch, (math.nan,) * 3)
            row |= {"paper_comm_gb": paper[1], "paper_latency_min": paper[2]}
            rows.append(row)
    table = pd.DataFrame(rows)
    base = PAPER_COST[TABLE4_SHAPE][BASELINE]
    table["paper_comm_saving_x"] = base[1] / table.paper_comm_gb
    table["paper_latency_saving_x"] = base[2] / table.paper_latency_min
    return table


def _accuracy(accuracy: pd.DataFrame, arch: str, protocol: str) -> dict:
    names = ["ppl_mpc", "ppl_plaintext_windows", "top1_agreement", "mpc_max_abs_logit_error"]
    if accuracy.empty:
        return dict.fromkeys(names, math.nan)
    hit = accuracy[(accuracy.arch == arch) & (accuracy.protocol == protocol)]
    if hit.empty:
        return dict.fromkeys(names, math.nan)
    first = hit.iloc[0]
    values = [first.ppl_mpc, first.ppl_plaintext, first.top1_agreement, first.max_abs_error]
    return dict(zip(names, values, strict=True))


def _cost(measured: pd.DataFrame) -> dict:
    columns = {
        "comm_gb": "comm_gb", "dealer_gb": "dealer_gb", "rounds": "rounds",
        "measured_s": "wall_s", "projected_wan_min": "projected_wan_min",
        "comm_saving_x": "comm_saving_x", "wan_saving_x": "wan_saving_x",
        "cost_model_max_error": "max_prediction_error",
    }  # fmt: skip
    if measured.empty:
        return dict.fromkeys(columns, math.nan)
    first = measured.iloc[0]
    return {name: first[source] for name, source in columns.items()}


def shapes_with_paper(shapes: pd.DataFrame) -> pd.DataFrame:
    """The paper-shape costs with the paper's PPL, GB and minutes, and savings on both sides."""
    if shapes.empty:
        return shapes
    shapes = shapes.copy()
    pairs = zip(shapes["shape"], shapes.arch, strict=True)
    paper = pd.DataFrame([PAPER_COST[s].get(a, (math.nan,) * 3) for s, a in pairs])
    for index, column in enumerate(("paper_ppl", "paper_comm_gb", "paper_latency_min")):
        shapes[column] = paper[index].to_numpy()
    key = ["shape", "protocol", "source"]
    base = shapes[shapes.arch == BASELINE].set_index(key)
    for column, saving in (("comm_gb", "comm_saving_x"), ("comm_only_wan_min", "wan_saving_x")):
        shapes[saving] = shapes.join(base[column], on=key, rsuffix="_base")[f"{column}_base"]
        shapes[saving] /= shapes[column]
    for column, saving in (("paper_comm_gb", "paper_comm_saving_x"),
                           ("paper_latency_min", "paper_latency_saving_x")):  # fmt: skip
        paper_base = shapes["shape"].map({s: v[BASELINE] for s, v in PAPER_COST.items()})
        index = 1 if column == "paper_comm_gb" else 2
        shapes[saving] = paper_base.map(lambda v, i=index: v[i]) / shapes[column]
    return shapes


def head_distribution(entropy: pd.DataFrame) -> pd.DataFrame:
    if entropy.empty:
        return pd.DataFrame()
    table = entropy[["arch", "bin", "fraction_of_heads", "largest_entropy_nats"]].copy()
    position = table.groupby("arch").cumcount()
    table["paper_fraction_of_heads"] = [
        PAPER_HEADS[a][i] / 100 if a in PAPER_HEADS else math.nan
        for a, i in zip(table.arch, position, strict=True)
    ]
    return table


# ---------------------------------------------------------------- markdown

PPL = lambda x: "-" if pd.isna(x) else f"{x:.3f}"  # noqa: E731
PCT = lambda x: "-" if pd.isna(x) else f"{100 * x:.1f} %"  # noqa: E731
ERR = lambda x: "-" if pd.isna(x) else f"{x:.2e}"  # noqa: E731
INT = lambda x: "-" if pd.isna(x) else f"{x:,.0f}"  # noqa: E731
TABLE4_COLUMNS = [  # (header, column, formatter): the markdown is these cells of table4.csv
    ("status", "status", str), ("PPL", "eval_ppl", PPL), ("paper PPL", "paper_ppl", PPL),
    ("MPC windows: PPL plain", "ppl_plaintext_windows", PPL),
    ("PPL under MPC", "ppl_mpc", PPL), ("top-1 vs plain", "top1_agreement", PCT),
    ("softmax (L x H)", "softmax_ops", INT), ("LayerNorm", "layernorm_ops", INT),
    ("act.", "activation", str), ("act. layers", "activation_ops", INT),
    ("FFN MFLOPs", "ffn_mflops", num), ("attn MFLOPs", "attn_mflops", num),
    ("GB", "comm_gb", num), ("rounds", "rounds", INT), ("measured s", "measured_s", num),
    ("WAN min (proj.)", "projected_wan_min", num), ("comm saving", "comm_saving_x", times),
    ("WAN saving", "wan_saving_x", times), ("paper GB", "paper_comm_gb", num),
    ("paper min", "paper_latency_min", num), ("paper comm saving", "paper_comm_saving_x", times),
]  # fmt: skip
SHAPE_COLUMNS = [
    ("source", "source", str), ("GB", "comm_gb", num), ("dealer GB", "dealer_gb", num),
    ("rounds", "rounds", INT), ("softmax GB", "softmax_gb", num), ("GELU GB", "gelu_gb", num),
    ("WAN min, comm only", "comm_only_wan_min", num),
    ("WAN min (proj., measured)", "projected_wan_min", num),
    ("comm saving", "comm_saving_x", times), ("paper GB", "paper_comm_gb", num),
    ("paper min", "paper_latency_min", num), ("paper comm saving", "paper_comm_saving_x", times),
    ("paper lat. saving", "paper_latency_saving_x", times),
]  # fmt: skip
FINDING_COLUMNS = [
    ("finding", "finding", str), ("ours", "ours", str), ("paper", "paper", str),
    ("verdict", "verdict", str),
]  # fmt: skip


def rows_markdown(
    table: pd.DataFrame, columns: list, first: list[str], numeric_from: int | None = None
) -> str:
    headers = first + [header for header, _, _ in columns]
    rows = [
        [str(row[k]) for k in first] + [fmt(row[column]) for _, column, fmt in columns]
        for _, row in table.iterrows()
    ]
    return markdown_table(headers, rows, len(first) if numeric_from is None else numeric_from)


def table4_markdown(table: pd.DataFrame, name: str) -> str:
    if table.empty:
        return f"# Reproduction '{name}': no trained variant yet\n"
    lines = [
        f"# AERO reproduced at budget '{name}': Table 4 layout",
        "",
        "One row per trained variant (same seed, same token budget). PPL: validation perplexity",
        "(diverged runs: '-', see status). 'MPC windows': the same model in plaintext and under",
        "MPC on the accuracy prompts (all positions; short windows, so a higher PPL than the",
        "validation PPL). Op counts and FLOPs for one forward over the MPC",
        f"prompt length T = {int(table.cost_seq_len.iloc[0])}. Cost: one secure query (client",
        "count, CrypTen two-party, trusted dealer, loopback); WAN minutes projected (100 Mbit/s,",
        "80 ms). Savings are against SM+LN+G under the same protocol. Paper columns: GPT-2 12L,",
        "T = 128, SecretFlow over WAN. All cells are table4.csv rows.",
    ]
    for protocol, part in table.groupby("protocol", sort=False):
        lines += ["", f"## Protocol: {protocol}", "", rows_markdown(part, TABLE4_COLUMNS, ["arch"])]
    return "\n".join(lines) + "\n"


def shapes_markdown(shapes: pd.DataFrame) -> str:
    lines = [
        "# Secure-inference cost at the paper's shapes (random weights)",
        "",
        "Client bytes per query (both directions), CrypTen two-party with a trusted dealer.",
        "'cost model' rows are exact analytic counts (equal to measurements in every category);",
        "'measured' rows come from real parties. 'WAN min, comm only' = bytes / 100 Mbit/s +",
        "rounds x 80 ms, no compute (a lower bound); the measured rows also give the projection",
        "with measured compute. All cells are paper_shapes.csv rows.",
    ]
    if shapes.empty:
        return "\n".join(lines) + "\n"
    for (shape, protocol), part in shapes.groupby(["shape", "protocol"], sort=False):
        lines += ["", f"## {shape}, {protocol} protocol", ""]
        lines.append(rows_markdown(part, SHAPE_COLUMNS, ["arch"]))
    return "\n".join(lines) + "\n"


def findings_markdown(findings: pd.DataFrame) -> str:
    return (
        "\n".join(
            [
                "# Findings of the paper, checked at this budget",
                "",
                "Each row of findings.csv (ours and paper as text; numeric columns in the CSV).",
                "",
                rows_markdown(findings, FINDING_COLUMNS, ["key"], numeric_from=99),
            ]
        )
        + "\n"
    )


def assemble(frames: dict[str, pd.DataFrame], shapes: pd.DataFrame, name: str) -> Tables:
    from bench.reproduction.findings import findings

    tables = Tables()
    tables.frames["table4"] = table4(frames)
    tables.frames["paper_shapes"] = shapes_with_paper(shapes)
    tables.frames["head_distribution"] = head_distribution(frames["entropy_distribution"])
    tables.frames["findings"] = findings(frames, tables.frames)
    tables.markdown["table4"] = table4_markdown(tables.frames["table4"], name)
    tables.markdown["paper_shapes"] = shapes_markdown(tables.frames["paper_shapes"])
    tables.markdown["findings"] = findings_markdown(tables.frames["findings"])
    return tables


TRAINING_NOISE = ("eval_ppl",)  # one value per variant
MPC_NOISE = ("ppl_mpc", "top1_agreement", "comm_gb", "rounds", "measured_s")  # per protocol


def noise_table(first: pd.DataFrame, second: pd.DataFrame, label: str) -> pd.DataFrame:
    """Run-to-run differences between two runs' table4.csv rows: per variant for the training
    metrics, per (variant, protocol) for the MPC ones where both runs measured that protocol."""
    rows = []
    for metrics, key in ((TRAINING_NOISE, ["arch"]), (MPC_NOISE, ["arch", "protocol"])):
        a, b = (frame.drop_duplicates(key) for frame in (first, second))
        joined = a.merge(b, on=key, suffixes=("_first", "_second"))
        for entry in joined.to_dict("records"):
            for metric in metrics:
                x, y = entry[f"{metric}_first"], entry[f"{metric}_second"]
                rows.append(
                    {"comparison": label, "arch": entry["arch"],
                     "protocol": entry.get("protocol", "-") if len(key) > 1 else "-",
                     "metric": metric, "first": x, "second": y,
                     "relative_difference": (y - x) / x if x else math.nan}
                )  # fmt: skip
    return pd.DataFrame(rows).dropna(subset=["relative_difference"])


def noise_markdown(noise: pd.DataFrame) -> str:
    """The largest |relative difference| per metric and comparison, over variants."""
    noise = noise.assign(magnitude=noise.relative_difference.abs())
    grouped = noise.dropna(subset=["magnitude"]).groupby(["comparison", "metric"])
    worst = noise.loc[grouped.magnitude.idxmax()]
    worst = worst.assign(mean_magnitude=grouped.magnitude.mean().to_numpy(),
                         variants=grouped.arch.nunique().to_numpy())  # fmt: skip
    columns = [("metric", "metric", str), ("variants", "variants", str),
               ("mean relative difference (abs.)", "mean_magnitude", PCT),
               ("largest", "magnitude", PCT), ("where", "arch", str),
               ("protocol", "protocol", str)]  # fmt: skip
    return "\n".join(
        ["# Run-to-run noise (all rows: noise.csv)", "",
         rows_markdown(worst, columns, ["comparison"], numeric_from=99), ""]
    )  # fmt: skip
