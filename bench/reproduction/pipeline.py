"""A whole reproduction in order: the per-variant stages, the paper's shapes, then the tables,
figures and budget.json in the output folder (and, if asked, the run-to-run noise).

Checkpoints and per-variant records go to the run's work folder; the curated CSV, markdown and
PNG files to its output folder. Every stage resumes: a second call redoes nothing.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from bench.environment import environment_record
from bench.reproduction.collect import collect
from bench.reproduction.stages import PER_VARIANT, run_stage
from bench.reproduction.workspace import Run
from models.atomic import atomic_write_json, atomic_write_text
from models.checkpoint import git_revision
from models.errors import UserError

STAGES = (*PER_VARIANT, "shapes", "table")  # train, entropy, mpc, accuracy, shapes, table
RECIPE_KEYS = (
    "preset", "steps", "batch_size", "seed", "seeds", "max_files", "corpus", "lr", "warmup_frac",
    "overrides",
)  # fmt: skip


def reproduce(run: Run, stages: list[str], by_variant: bool, noise_against: list[str]) -> int:
    """Run `stages` of `run` (each variant's stages before the next one's if `by_variant`), then
    compare with the runs of `noise_against` (LABEL=DIR). 1 if any variant's stage failed."""
    run.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    setting = recipe(run)
    refuse_other_recipe(run.work / "budget.json", setting)
    atomic_write_json(run.work / "budget.json", setting)
    print(f"reproduction '{run.name}': {len(run.variants)} variants -> {run.out}", flush=True)
    failures: list[str] = []
    per_variant = [s for s in PER_VARIANT if s in stages]
    runs = seed_runs(run)  # one per seed of a several-seed budget
    tasks = len(runs) * len(run.variants) * len(per_variant)
    with tqdm(total=tasks, desc=f"reproduce {run.name}", unit="task", disable=None) as bar:
        for each in runs:
            # by_variant: every stage of one variant before the next (complete rows if stopped)
            batches = [[arch] for arch in run.variants] if by_variant else [run.variants]
            for archs in batches:
                for stage in per_variant:
                    run_stage(each, stage, failures, archs, bar)
    shapes_csv = run.work / "paper_shapes.csv"
    if "shapes" in stages and not shapes_csv.exists():
        write_paper_shapes(run, shapes_csv)
    if "table" in stages and run.budget.seeds:
        from bench.reproduction.seeds import write_seed_outputs

        write_seed_outputs(run, runs)
    elif "table" in stages:
        shapes = pd.read_csv(shapes_csv) if shapes_csv.exists() else pd.DataFrame()
        write_outputs(run, collect(run), shapes)
    if "table" in stages:
        setting |= {"git_revision": git_revision(), "env": environment_record(1)}
        setting["driver_seconds_this_call"] = round(time.perf_counter() - started, 1)
        atomic_write_json(run.out / "budget.json", setting)
    if noise_against:
        write_noise(run.out, noise_against)
    for line in failures:
        print(f"FAILED: {line}", file=sys.stderr)
    print(f"reproduction '{run.name}' done in {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if failures else 0


def seed_runs(run: Run) -> list[Run]:
    """The run itself, or one run per seed of the budget, each in its own work folder."""
    if not run.budget.seeds:
        return [run]
    return [replace(run, seed=seed, work=run.work / f"seed-{seed}") for seed in run.budget.seeds]


def recipe(run: Run) -> dict:
    """What the run is sized and seeded by: budget.json of the work and output folders."""
    setting = {"budget": run.name, **asdict(run.budget), "seed": run.seed}
    setting |= {"device": run.device, "precision": run.precision}
    setting |= {"variants": run.variants, "corpus": run.corpus or "python stdlib"}
    return setting


def refuse_other_recipe(path: Path, setting: dict) -> None:
    """A work folder resumes only the same training recipe: continuing a checkpoint under other
    steps would silently change its learning-rate schedule."""
    if not path.exists():
        return
    earlier = json.loads(path.read_text())
    setting = json.loads(json.dumps(setting))  # tuples as the lists JSON gives back
    changed = [k for k in RECIPE_KEYS if k in earlier and earlier[k] != setting[k]]
    if changed:
        what = ", ".join(f"{k} {earlier[k]} -> {setting[k]}" for k in changed)
        raise UserError(f"{path.parent} holds a run of another recipe ({what}); use another --work")


def write_paper_shapes(run: Run, path: Path) -> None:
    from bench.reproduction.shapes import paper_shapes

    shapes = paper_shapes(run.budget.measure_paper_shapes, run.work / "paper-shapes")
    atomic_write_text(path, shapes.to_csv(index=False))


def write_outputs(run: Run, frames: dict[str, pd.DataFrame], shapes: pd.DataFrame) -> None:
    from bench.reproduction.figures import draw_figures
    from bench.reproduction.tables import assemble

    run.out.mkdir(parents=True, exist_ok=True)
    tables = assemble(frames, shapes, run.name)
    for name, frame in {**frames, **tables.frames}.items():
        if not frame.empty:
            atomic_write_text(run.out / f"{name}.csv", frame.to_csv(index=False))
    for name, text in tables.markdown.items():
        atomic_write_text(run.out / f"{name}.md", text)
    draw_figures(frames, tables.frames, run.out)


def write_noise(out: Path, others: list[str]) -> None:
    from bench.reproduction.noise import noise_markdown, noise_table

    mine = pd.read_csv(out / "table4.csv")
    parts = []
    for entry in others:
        label, sep, folder = entry.partition("=")
        if not sep:
            raise UserError(f"--noise-against {entry!r}: expected LABEL=DIR")
        parts.append(noise_table(mine, pd.read_csv(Path(folder) / "table4.csv"), label))
    noise = pd.concat(parts, ignore_index=True)
    atomic_write_text(out / "noise.csv", noise.to_csv(index=False))
    atomic_write_text(out / "noise.md", noise_markdown(noise))
