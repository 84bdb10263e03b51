"""Tables and figures of a benchmark's results.csv; they read nothing but its rows (`ResultRow`).

`summary_table` / `summary_markdown`: one row per setting and architecture, averaged over repeats.
`category_table`: each operation group's bytes and latency and its share (the paper's Figure 1).
Figures of the same data: `bench.figures`.

Conventions. Communication between the parties is the CLIENT's logged bytes (each party logs both
directions); the server's count also holds its traffic with a ttp dealer, shown apart as
dealer GB = server - client. Per-category figures are the client's. A repeat is one
(run_id, repeat) pair; a part missing from a repeat counts as zero there. Savings are
baseline / architecture within the same setting (preset, backend, protocol, dealer, network, T).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pandas as pd

from bench.schema import TOTAL, ResultRow, projected_seconds
from models.config import ALIASES, VARIANTS
from models.errors import UserError

BASELINE = ALIASES["baseline"]
SETTING = ["preset", "backend", "protocol", "dealer", "network", "seq_len"]
PREDICTION_TOLERANCE = 0.01  # relative |measured - predicted| / predicted that gets flagged
GROUPS = {  # display group: (colour in every figure, its categories); bottom-up stacking order
    "Linear": ("#7f7f7f", ("qkv_proj", "out_proj", "ffn_linear", "attn_qk", "attn_av")),
    "Embedding+LM head": ("#8c564b", ("embedding", "lm_head")),
    "Softmax": ("#1f77b4", ("softmax",)),
    "LayerNorm": ("#2ca02c", ("layernorm",)),
    "GELU": ("#d62728", ("gelu",)),
    "ReLU": ("#ff7f0e", ("relu",)),
    "Scaling": ("#9467bd", ("scaling",)),
    "Other": ("#c7c7c7", ("input_share", "reveal", "other")),
}
GROUP_OF = {category: group for group, (_, members) in GROUPS.items() for category in members}
COLORS = {group: colour for group, (colour, _) in GROUPS.items()}
METRICS = {  # per-category quantity: (axis label, unit family)
    "bytes": ("client bytes per query", "bytes"),
    "wall_s": ("measured wall time per query", "seconds"),
    "projected_wan_s": ("projected WAN time per query (100 Mbit/s, 80 ms)", "seconds"),
}
_FIELDS = fields(ResultRow)
REQUIRED = [f.name for f in _FIELDS if f.default is MISSING]
OPTIONAL = [f.name for f in _FIELDS if f.default is not MISSING]
TEXT = [f.name for f in _FIELDS if f.type == "str"]
INTEGER = [f.name for f in _FIELDS if f.type == "int"]


class ResultsError(UserError):
    """A results CSV that is missing, unreadable or not in the `ResultRow` schema."""


def read_results(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such results file (python -m bench.run writes one)")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "empty"
        raise ResultsError(f"{path}: not a readable CSV ({reason})") from None
    return check_results(df, str(path))


def check_results(df: pd.DataFrame, source: str = "results") -> pd.DataFrame:
    """The rows typed by the schema; ResultsError names the first column or line that is wrong."""
    missing = [name for name in REQUIRED if name not in df.columns]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        names = ", ".join(missing[:3]) + more
        raise ResultsError(f"{source}: missing column(s) {names}; not a bench results.csv")
    if df.empty:
        raise ResultsError(f"{source}: no rows")
    df = df.copy()
    for name in ResultRow.columns():
        if name not in df.columns:
            df[name] = math.nan
        raw = df[name]
        if name in TEXT:
            bad = raw.isna() & (name in REQUIRED)  # an optional text column may be empty
            df[name] = raw.fillna("").astype(str)
        else:
            df[name] = pd.to_numeric(raw, errors="coerce")
            bad = df[name].isna() & (raw.notna() | (name in REQUIRED))
            if name in INTEGER:
                bad |= df[name].notna() & (df[name] != df[name].round())
        if bad.any():
            line = int(np.argmax(bad.to_numpy())) + 2  # 1-based, after the header
            raise ResultsError(f"{source}: line {line}: bad {name} value {raw.iloc[line - 2]!r}")
    df[INTEGER] = df[INTEGER].astype(int)
    for name, allowed in (("party", ("server", "client")), ("category", (*GROUP_OF, TOTAL))):
        unknown = sorted(set(df[name]) - set(allowed))
        if unknown:
            raise ResultsError(f"{source}: unknown {name} {unknown[0]!r}; known: {allowed}")
    if not (df.party == "client").any() or not (df.category == TOTAL).any():
        raise ResultsError(f"{source}: no client {TOTAL!r} rows; the summary needs them")
    return df


def prepared(df: pd.DataFrame) -> pd.DataFrame:
    """Projections filled in where the runner left them empty, plus a group and a repeat key."""
    df = check_results(df)
    compute = (df.wall_s - df.comm_s).clip(lower=0)
    for network in ("lan", "wan"):
        name = f"projected_{network}_s"
        df[name] = df[name].fillna(projected_seconds(compute, df.bytes, df.rounds, network))
    df["group"] = df.category.map(GROUP_OF).fillna(TOTAL)
    df["rep"] = df.run_id + "#" + df.repeat.astype(str)
    return df


def mean_over_repeats(rows: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    """Sum `values` within `keys` and each repeat, then average over the setting's repeats."""
    unit = [*SETTING, "arch", "party"]
    repeats = rows.groupby(unit)["rep"].nunique().rename("n_repeats").reset_index()
    sums = rows.groupby(keys, as_index=False)[values].sum(min_count=1).merge(repeats, on=unit)
    sums[values] = sums[values].div(sums.n_repeats, axis=0)
    return sums.drop(columns="n_repeats")


def _arch_order(arch: pd.Series) -> pd.Series:
    rank = {name: i for i, name in enumerate(VARIANTS)}
    return arch.map(lambda name: (rank.get(name, len(rank)), name))


def sorted_table(table: pd.DataFrame) -> pd.DataFrame:
    ordered = table.assign(_arch=_arch_order(table.arch)).sort_values([*SETTING, "_arch"])
    return ordered.drop(columns="_arch").reset_index(drop=True)


def _relative_error(measured: pd.Series, predicted: pd.Series) -> pd.Series:
    """|measured - predicted| / predicted; 0 when both are 0, inf when only the prediction is."""
    error = (measured - predicted).abs() / predicted
    return error.where(predicted != 0, np.where(measured == 0, 0.0, np.inf))


def _prediction_errors(d: pd.DataFrame) -> pd.DataFrame:
    """Largest relative gap between measured and predicted bytes/rounds over (party, category)."""
    keys = [*SETTING, "arch", "party", "category"]
    values = ["bytes", "rounds", "predicted_bytes", "predicted_rounds"]
    per = mean_over_repeats(d, keys, values)
    parts = []
    for measure in ("bytes", "rounds"):
        error = _relative_error(per[measure], per[f"predicted_{measure}"])
        label = per.party + " " + per.category + " " + measure
        parts.append(per[[*SETTING, "arch"]].assign(error=error, label=label))
    errors = pd.concat(parts, ignore_index=True).dropna(subset=["error"])
    worst = errors.loc[errors.groupby([*SETTING, "arch"])["error"].idxmax()]
    return worst.rename(columns={"error": "max_prediction_error", "label": "worst_prediction"})


def summary_table(df: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """One row per (setting, arch): communication, rounds, time, savings, memory, accuracy and the
    cost model's worst miss. Means over repeats, except peak memory and logit error (maxima)."""
    d = prepared(df)
    totals = d[d.category == TOTAL]
    key = [*SETTING, "arch"]
    sums = mean_over_repeats(
        totals,
        [*key, "party"],
        ["bytes", "rounds", "wall_s", "projected_lan_s", "projected_wan_s", "os_bytes",
         "offline_bytes", "offline_s", "rtt_per_round"],
    )  # fmt: skip
    client = sums[sums.party == "client"].set_index(key)
    server = sums[sums.party == "server"].set_index(key).reindex(client.index)
    out = pd.DataFrame(index=client.index)
    out["repeats"] = totals[totals.party == "client"].groupby(key)["rep"].nunique()
    out["comm_gb"] = client.bytes / 1e9
    out["dealer_gb"] = (server.bytes - client.bytes).clip(lower=0) / 1e9
    out["rounds"] = client.rounds
    out["wall_s"] = client.wall_s
    out["projected_lan_s"] = client.projected_lan_s
    out["projected_wan_s"] = client.projected_wan_s
    out["projected_wan_min"] = client.projected_wan_s / 60
    out["os_gb"] = client.os_bytes / 1e9
    out["rtt_per_round"] = client.rtt_per_round
    out["offline_gb"] = server.offline_bytes / 1e9
    out["offline_s"] = server.offline_s
    settings = out.index.droplevel("arch")
    has_base = baseline in out.index.get_level_values("arch")
    for name, column in (("comm", "comm_gb"), ("wall", "wall_s"), ("wan", "projected_wan_s")):
        base = out.xs(baseline, level="arch")[column].reindex(settings) if has_base else np.nan
        out[f"{name}_saving_x"] = np.asarray(base, dtype=float) / out[column]
    peaks = totals.groupby([*key, "party"])["peak_rss_mb"].max().unstack("party")
    for party in ("server", "client"):
        out[f"{party}_peak_rss_mb"] = peaks.get(party, pd.Series(dtype=float)).reindex(out.index)
    client_totals = totals[totals.party == "client"].groupby(key)
    out["max_abs_logit_error"] = client_totals["max_abs_logit_error"].max()
    out["top1_match"] = client_totals["top1_match"].mean()
    worst = _prediction_errors(d).set_index(key)
    out["max_prediction_error"] = worst["max_prediction_error"]
    out["worst_prediction"] = worst["worst_prediction"]
    out["prediction_flag"] = out.max_prediction_error > PREDICTION_TOLERANCE
    return sorted_table(out.reset_index())


def category_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, arch, group): the client's bytes, measured and projected-WAN seconds, and
    each as a share of the sum over groups (which equals the client's total)."""
    d = prepared(df)
    parts = d[(d.party == "client") & (d.category != TOTAL)]
    values = ["bytes", "wall_s", "projected_wan_s"]
    table = mean_over_repeats(parts, [*SETTING, "arch", "party", "group"], values)
    for value in values:
        whole = table.groupby([*SETTING, "arch"])[value].transform("sum")
        table[f"{value}_share"] = table[value] / whole
    table["group"] = pd.Categorical(table.group, categories=list(GROUPS), ordered=True)
    table = table.drop(columns="party").sort_values([*SETTING, "group"])
    return sorted_table(table)


# ---------------------------------------------------------------- markdown


def num(x: float) -> str:
    if pd.isna(x):
        return "-"
    if math.isinf(x):
        return "inf"
    size = abs(x)
    if size >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if size >= 10 else f"{x:.2f}" if size >= 1 else f"{x:.3g}"


def times(x: float) -> str:
    return "-" if pd.isna(x) else f"{x:.2f}x"


def _pct(x: float) -> str:
    return "-" if pd.isna(x) else f"{100 * x:.1f} %"


def markdown_table(headers: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """A GitHub table; columns from `numeric_from` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(headers))]
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


DESCRIBE = {"seq_len": "T={}", "backend": "{}", "protocol": "{} protocol",
            "dealer": "{} dealer", "network": "{}", "preset": "preset {}"}  # fmt: skip


def describe(values: dict) -> str:
    """A setting in words: 'T=128, crypten, stock protocol, ttp dealer, loopback, preset small'."""
    return ", ".join(DESCRIBE[k].format(values[k]) for k in DESCRIBE if k in values)


def panels(table: pd.DataFrame, keys: list[str]):
    """(title, rows) per distinct setting; titles name only what differs between panels."""
    constant = {k for k in keys if table[k].nunique() == 1}
    for values, part in table.groupby(keys, sort=False):
        yield describe({k: v for k, v in zip(keys, values, strict=True) if k not in constant}), part


SUMMARY_COST = [  # (header, column, formatter)
    ("repeats", "repeats", str),
    ("comm GB", "comm_gb", num),
    ("dealer GB", "dealer_gb", num),
    ("offline GB", "offline_gb", num),
    ("offline s", "offline_s", num),
    ("rounds", "rounds", lambda x: "-" if pd.isna(x) else f"{x:,.0f}"),
    ("measured s", "wall_s", num),
    ("RTT/round (meas.)", "rtt_per_round", num),
    ("LAN s (proj.)", "projected_lan_s", num),
    ("WAN s (proj.)", "projected_wan_s", num),
    ("WAN min (proj.)", "projected_wan_min", num),
    ("kernel GB", "os_gb", num),
]
SUMMARY_CHECKS = [
    ("comm saving", "comm_saving_x", times),
    ("measured saving", "wall_saving_x", times),
    ("WAN saving (proj.)", "wan_saving_x", times),
    ("server peak MB", "server_peak_rss_mb", num),
    ("client peak MB", "client_peak_rss_mb", num),
    ("max logit error", "max_abs_logit_error", num),
    ("top-1 match", "top1_match", _pct),
]


def _summary_rows(table: pd.DataFrame, varying: list[str], columns: list) -> str:
    present = [c for c in columns if table[c[1]].notna().any()]
    headers = [("T" if k == "seq_len" else k) for k in varying] + ["arch"]
    headers += [header for header, _, _ in present]
    rows = [
        [str(row[k]) for k in varying]
        + [str(row.arch)]
        + [fmt(row[column]) for _, column, fmt in present]
        for _, row in table.iterrows()
    ]
    return markdown_table(headers, rows, numeric_from=len(varying) + 1)


def _prediction_cell(row: pd.Series) -> str:
    if pd.isna(row.max_prediction_error) or row.max_prediction_error == 0:
        return "-" if pd.isna(row.max_prediction_error) else _pct(0.0)
    flag = " **> 1 %**" if row.prediction_flag else ""
    return f"{_pct(row.max_prediction_error)}{flag} ({row.worst_prediction})"


def _category_section(table: pd.DataFrame, value: str, title: str, unit: str, scale: float) -> str:
    """Arch x group cells 'amount (share)'; '-' where the arch has no such operation."""
    cells = table.assign(
        cell=[
            f"{num(v / scale)} ({_pct(share)})"
            for v, share in zip(table[value], table[f"{value}_share"], strict=True)
        ]
    ).pivot(index="arch", columns="group", values="cell")
    groups = [g for g in GROUPS if g in table.group[table[value] > 0].unique()]
    archs = list(dict.fromkeys(table.arch))
    rows = [[arch, *cells.loc[arch, groups].fillna("-")] for arch in archs]
    title = f"{title} ({unit}, share of the client's total):"
    return f"{title}\n\n{markdown_table(['arch', *groups], rows)}"


def summary_markdown(df: pd.DataFrame, baseline: str = BASELINE) -> str:
    table = summary_table(df, baseline)
    constant = {k: table[k].iloc[0] for k in SETTING if table[k].nunique() == 1}
    varying = [k for k in SETTING if k not in constant]
    checks = table.assign(prediction=table.apply(_prediction_cell, axis=1))
    lines = [
        "# Private-inference benchmark summary",
        "",
        f"Setting: {describe(constant)}. Means over repeats (maxima for peak memory and logit",
        "error). Communication is the client's count (both directions between the parties);",
        "dealer GB is the server's extra traffic during the query (server - client); offline GB",
        "and s are the dealer's material fetched before the prompt is shared (offline_dealer,",
        "with the rehearsal that planned it); kernel GB is the client's",
        "kernel TCP byte count, a check on CrypTen's. LAN and WAN times are projections",
        "(compute + bytes / bandwidth + rounds x RTT x the transport's measured round trips per",
        "round), not measurements; WAN is 100 Mbit/s, 80 ms. On a shaped link, RTT/round is",
        "measured: (communication s - transfer s) / (rounds x RTT).",
        "",
        "## Cost per query",
        "",
        _summary_rows(table, varying, SUMMARY_COST),
        "",
        f"## Savings versus {baseline}, memory, accuracy, cost model",
        "",
        f"Prediction: the largest |measured - predicted| / predicted over (party, category), "
        f"flagged above {PREDICTION_TOLERANCE:.0%}.",
        "",
        _summary_rows(checks, varying, [*SUMMARY_CHECKS, ("prediction", "prediction", str)]),
        "",
        "## Per operation group (the paper's Figure 1)",
    ]
    for title, part in panels(category_table(df), SETTING):
        lines += ["", f"### {title}"] if title else []
        lines += ["", _category_section(part, "bytes", "Communication", "GB", 1e9)]
        lines += ["", _category_section(part, "wall_s", "Measured latency", "s", 1)]
        lines += ["", _category_section(part, "projected_wan_s", "Projected WAN latency", "s", 1)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures
