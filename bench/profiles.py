"""Stock versus optimized protocol, side by side (the speed issue's one table).

Per architecture (and every other setting but the protocol): the client's GB, rounds, measured
seconds, projected WAN minutes and accuracy under each profile, and each profile's reduction
against the STOCK BASELINE of the same setting (the issue's targets: optimized baseline >= 2x
fewer bytes; optimized aero >= 4x fewer bytes and >= 2x less projected WAN latency).
"""

from __future__ import annotations

import pandas as pd

from bench.report import BASELINE, SETTING, markdown_table, num, summary_table, times

OTHER = [key for key in SETTING if key != "protocol"]


def protocol_comparison(df: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """One row per (setting without protocol, arch, protocol) with the reductions against the
    stock baseline; empty when the frame holds no stock row."""
    table = summary_table(df)
    stock = table[table.protocol == "stock"]
    base = stock[stock.arch == baseline].set_index(OTHER)
    if base.empty:
        return table.iloc[0:0]
    joined = table.join(base[["comm_gb", "projected_wan_s"]], on=OTHER, rsuffix="_stock_base")
    joined["bytes_vs_stock_baseline_x"] = joined.comm_gb_stock_base / joined.comm_gb
    joined["wan_vs_stock_baseline_x"] = joined.projected_wan_s_stock_base / joined.projected_wan_s
    order = {"stock": 0, "optimized": 1}
    joined["protocol_order"] = joined.protocol.map(order).fillna(2)
    joined = joined.sort_values([*OTHER, "arch", "protocol_order"], kind="stable")
    return joined.drop(columns="protocol_order")


def profile_markdown(df: pd.DataFrame, baseline: str = BASELINE) -> str:
    """The comparison as a markdown table ('' when there is only one protocol)."""
    if df.protocol.nunique() < 2:
        return ""
    table = protocol_comparison(df, baseline)
    headers = ["arch", "protocol", "GB", "rounds", "loopback s", "WAN min (proj.)",
               "max logit err", "top-1", "GB vs stock base", "WAN vs stock base"]  # fmt: skip
    rows = [
        [
            row.arch,
            row.protocol,
            num(row.comm_gb),
            num(row.rounds),
            num(row.wall_s),
            num(row.projected_wan_min),
            f"{row.max_abs_logit_error:.2e}",
            f"{100 * row.top1_match:.0f} %",
            times(row.bytes_vs_stock_baseline_x),
            times(row.wan_vs_stock_baseline_x),
        ]
        for row in table.itertuples()
    ]
    return "\n".join(
        [
            "## Stock versus optimized protocol",
            "",
            "Client's count per query; WAN = 100 Mbit/s, 80 ms, projected. Reductions are "
            f"against the stock {baseline} of the same setting (x = times fewer).",
            "",
            markdown_table(headers, rows, numeric_from=2),
        ]
    )
