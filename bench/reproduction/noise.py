"""Run-to-run noise: the differences between two runs' table4.csv rows (noise.csv, noise.md)."""

from __future__ import annotations

import math

import pandas as pd

from bench.reproduction.markdown import PCT, rows_markdown

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
