"""The stages' per-variant records read back as tidy frames, one per output CSV."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.reproduction.stages import PER_VARIANT
from bench.reproduction.workspace import Run
from models.checkpoint import load_checkpoint


def collect(run: Run) -> dict[str, pd.DataFrame]:
    """The per-variant records of every stage as tidy frames (absent stages give empty frames)."""
    training = [_read_json(run.record("train", a)) for a in run.variants]
    frames = {"training": pd.DataFrame([r for r in training if r])}
    frames["entropy_trajectory"] = entropy_trajectory(run)
    heads, distribution = [], []
    for arch in run.variants:
        folder = run.record("entropy", arch, "")
        if run.record("entropy", arch).exists():
            heads.append(pd.read_csv(folder / "entropy_heads.csv"))
            distribution.append(pd.read_csv(folder / "entropy_distribution.csv"))
    frames["entropy_heads"] = pd.concat(heads, ignore_index=True) if heads else pd.DataFrame()
    frames["entropy_layers"] = (  # per-layer means of the heads' rows (README's layer table)
        frames["entropy_heads"]
        .groupby(["arch", "layer"], sort=False)[["entropy_nats", "entropy_over_log_t"]]
        .mean()
        .reset_index()
        if heads
        else pd.DataFrame()
    )
    frames["entropy_distribution"] = (
        pd.concat(distribution, ignore_index=True) if distribution else pd.DataFrame()
    )
    mpc = [
        pd.read_csv(run.record("mpc", a, "") / "results.csv")
        for a in run.variants
        if run.record("mpc", a).exists()
    ]
    frames["mpc_results"] = pd.concat(mpc, ignore_index=True) if mpc else pd.DataFrame()
    accuracy = [
        report
        for arch in run.variants
        for report in (_read_json(run.record("accuracy", arch)) or {}).get("reports", [])
    ]
    # records written before the accuracy vocabulary was unified name the errors without "logit"
    renamed = {"max_abs_error": "max_abs_logit_error", "mean_abs_error": "mean_abs_logit_error"}
    frames["accuracy"] = pd.DataFrame(accuracy).rename(columns=renamed)
    frames["stage_seconds"] = pd.DataFrame(
        [
            {"arch": arch, "stage": stage, "seconds": record["stage_seconds"]}
            for stage in PER_VARIANT
            for arch in run.variants
            if (record := _read_json(run.record(stage, arch)))
        ]
    )
    return frames


def entropy_trajectory(run: Run) -> pd.DataFrame:
    """Per evaluation of every variant's training: tokens seen, eval loss and each layer's mean
    head entropy as a fraction of log T (uniform causal attention: about 0.80)."""
    rows = []
    for arch in run.variants:
        if not run.record("train", arch).exists():
            continue
        for point in load_checkpoint(run.checkpoint(arch)).meta.get("history", []):
            for layer, fraction in enumerate(point["entropy_fraction_by_layer"]):
                rows.append(
                    {
                        "arch": arch,
                        "step": point["step"],
                        "tokens": point["tokens"],
                        "eval_loss": point["eval_loss"],
                        "layer": layer,
                        "entropy_fraction_of_log_t": fraction,
                    }
                )
    return pd.DataFrame(rows)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None
