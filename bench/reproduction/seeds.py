"""A reproduction at several seeds (the stress budget): every seed's records read back into one
set of frames with a `seed` column, the per-run collapse outcomes, the findings with their mean
and spread over the seeds, and the figures, all in the run's output folder."""

from __future__ import annotations

import pandas as pd

from bench.reproduction.collect import collect
from bench.reproduction.stress import findings_markdown, run_outcome, stress_findings
from bench.reproduction.workspace import Run
from models.atomic import atomic_write_text
from models.checkpoint import load_checkpoint


def seed_frames(runs: list[Run]) -> dict[str, pd.DataFrame]:
    """Every frame of `collect` over the seeds' runs, with a `seed` column; plus `collapse` (one
    row per variant and seed) and `final_heads` (each head's entropy at its last evaluation)."""
    parts: dict[str, list[pd.DataFrame]] = {}
    outcomes, heads = [], []
    for run in runs:
        for name, frame in collect(run).items():
            if not frame.empty:
                parts.setdefault(name, []).append(frame.assign(seed=run.seed))
        for arch in run.variants:
            if not run.record("train", arch).exists():
                continue
            checkpoint = load_checkpoint(run.checkpoint(arch))
            meta = checkpoint.meta
            outcomes.append(run_outcome(arch, run.seed, meta, checkpoint.config.vocab_size))
            heads += _final_heads(arch, run.seed, meta)
    frames = {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
    frames["collapse"] = pd.DataFrame(outcomes)
    frames["final_heads"] = pd.DataFrame(heads)
    return frames


def _final_heads(arch: str, seed: int, meta: dict) -> list[dict]:
    history = [p for p in meta.get("history", []) if "entropy_fraction_by_head" in p]
    if not history:
        return []
    last = history[-1]
    return [
        {"arch": arch, "seed": seed, "step": last["step"], "layer": layer, "head": head,
         "entropy_fraction_of_log_t": value}
        for layer, row in enumerate(last["entropy_fraction_by_head"])
        for head, value in enumerate(row)
    ]  # fmt: skip


def write_seed_outputs(run: Run, runs: list[Run]) -> None:
    """The CSV frames, findings (CSV and markdown) and figures of a several-seed run."""
    from bench.reproduction.figures import seed_figures

    frames = seed_frames(runs)
    run.out.mkdir(parents=True, exist_ok=True)
    outcomes = frames["collapse"]
    if not outcomes.empty:
        frames["findings"] = stress_findings(outcomes)
        atomic_write_text(run.out / "findings.md", findings_markdown(frames["findings"], outcomes))
    for name, frame in frames.items():
        if not frame.empty:
            atomic_write_text(run.out / f"{name}.csv", frame.to_csv(index=False))
    seed_figures(frames, run.out)
