"""The markdown views of the reproduction's tables. Every number in them is a formatted cell of
the CSV row written next to it (`*_COLUMNS` below: header, CSV column, formatter; tests check it).
"""

from __future__ import annotations

import pandas as pd

from bench.report import markdown_table, num, times

PPL = lambda x: "-" if pd.isna(x) else f"{x:.3f}"  # noqa: E731
PCT = lambda x: "-" if pd.isna(x) else f"{100 * x:.1f} %"  # noqa: E731
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
