"""Reproduce AERO end to end at one token budget: train every variant, analyze attention entropy,
measure secure inference of each trained model, cost the paper's exact shapes, write the tables.

    python bench/reproduce.py --budget small     # 2 CPU cores (sizes in BUDGETS, README)
    python bench/reproduce.py --budget paper     # the GPT-2-small recipe (needs an accelerator)

Stages, each resumable (a variant whose record exists is skipped; records are written atomically):
  train     every variant, same seed and token budget (`models.train`); divergence recorded
  entropy   per-head entropies, the four-bin head distribution (`models.analyze`)
  mpc       bytes, rounds, seconds of one secure query per trained model, stock and optimized
            protocol (`bench/run.py`, real server, client and dealer processes)
  accuracy  MPC vs plaintext logits, top-1 agreement, PPL under MPC (`mpc.accuracy`)
  shapes    the paper's exact shapes (12L T=128 / 256, 18L T=128, random weights): exact bytes
            and rounds from `mpc.costmodel` (equal to measurements, tests prove it) beside the
            committed measurements; `--measure-paper-shapes` measures them too (hours on 2 cores)
  table     Table-4-layout CSV and markdown, findings with the paper's numbers, figures
Checkpoints and per-variant records go to --work (default runs/reproduce-BUDGET, not committed);
the curated CSV, markdown and PNG files to --out (default results/reproduce-BUDGET).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from bench.environment import environment_record
from bench.reproduction.budgets import BUDGETS, Budget
from models.atomic import atomic_write_json, atomic_write_text
from models.checkpoint import git_revision, load_checkpoint
from models.cli import UserError, run_main
from models.config import expand_arch_names

STAGES = ("train", "entropy", "mpc", "accuracy", "shapes", "table")


def slug(arch: str) -> str:
    """A file-name form of a variant name: 'EReg(SM(t)+ScFuFFN)' -> 'ereg-sm-t-scfuffn'."""
    return re.sub(r"[^a-z0-9]+", "-", arch.lower()).strip("-")


@dataclass
class Run:
    """One reproduction: its budget, seed, folders and the variants it covers."""

    name: str
    budget: Budget
    seed: int
    out: Path
    work: Path
    data_dir: str
    corpus: str | None
    variants: list[str]
    device: str = "cpu"
    precision: str = "fp32"

    def checkpoint(self, arch: str) -> Path:
        return self.work / "checkpoints" / f"{slug(arch)}.pt"

    def record(self, stage: str, arch: str, suffix: str = ".json") -> Path:
        return self.work / stage / f"{slug(arch)}{suffix}"


# ---------------------------------------------------------------- stages


def train_variant(run: Run, arch: str) -> dict:
    """Train one variant (or finish an interrupted run) and return its training record."""
    from models.train import main as train_main

    path, budget = run.checkpoint(arch), run.budget
    done = path.exists() and _finished(load_checkpoint(path).meta, budget.steps)
    if not done:
        argv = ["--arch", arch, "--preset", budget.preset, "--steps", str(budget.steps)]
        argv += ["--batch-size", str(budget.batch_size), "--seed", str(run.seed)]
        argv += ["--eval-interval", str(budget.eval_interval)]
        argv += ["--eval-batches", str(budget.eval_batches), "--data-dir", run.data_dir]
        argv += ["--out", str(path), "--resume", "--grad-accum", str(budget.grad_accum)]
        argv += ["--device", run.device, "--precision", run.precision]
        argv += ["--max-files", str(budget.max_files)] if budget.max_files else []
        argv += ["--corpus", run.corpus] if run.corpus else []
        code = train_main(argv)
        if code not in (0, 3):  # 3: diverged, a result like any other
            raise UserError(f"training {arch} failed with exit code {code}")
    checkpoint = load_checkpoint(path)
    return training_record(arch, checkpoint, run)


def _finished(meta: dict, steps: int) -> bool:
    return meta.get("status") == "diverged" or (
        meta.get("status") == "finished" and meta.get("step", 0) >= steps
    )


def training_record(arch: str, checkpoint, run: Run) -> dict:
    meta, cfg = checkpoint.meta, checkpoint.config
    diverged = meta["status"] == "diverged"
    params = sum(t.numel() for k, t in checkpoint.model_state.items() if "entropy_reg" not in k)
    return {
        "arch": arch,
        "preset": run.budget.preset,
        "seed": run.seed,
        "status": meta["status"],
        "steps": meta["step"],
        "batch_size": run.budget.batch_size,
        "seq_len": meta["seq_len"],
        "token_budget": run.budget.token_budget(meta["seq_len"]),
        "tokens_seen": meta["tokens_seen"],
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "params": params,
        "eval_loss": math.nan if diverged else meta.get("eval_loss", math.nan),
        "eval_ppl": math.nan if diverged else meta.get("eval_ppl", math.nan),
        "last_eval_ppl_before_divergence": meta.get("eval_ppl", math.nan) if diverged else math.nan,
        "diverged_at_step": meta.get("diverged_at_step", math.nan),
        "train_seconds": meta.get("train_seconds", math.nan),
        "tokens_per_second": meta.get("tokens_per_second", math.nan),
        "git_revision": meta.get("git_revision", "unknown"),
    }


def analyze_variant(run: Run, arch: str) -> dict:
    from models.analyze import analyze_checkpoint

    folder = run.record("entropy", arch, "")
    analyze_checkpoint(
        str(run.checkpoint(arch)),
        folder,
        run.data_dir,
        run.budget.entropy_batches,
        run.budget.entropy_batch_size,
    )
    return {"folder": str(folder)}


def measure_variant(run: Run, arch: str) -> dict:
    """One secure query per protocol profile on the trained weights (bench/run.py's machinery)."""
    from bench.run import main as bench_main

    folder = run.record("mpc", arch, "")
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted measurement starts over
    argv = ["--checkpoint", str(run.checkpoint(arch)), "--preset", run.budget.preset]
    argv += ["--protocol", *run.budget.protocols, "--out", str(folder), "--no-plots"]
    argv += ["--timeout", str(run.budget.timeout_s)]
    argv += ["--seq-len", str(run.budget.cost_seq_len)] if run.budget.cost_seq_len else []
    if bench_main(argv) != 0:
        raise UserError(f"the MPC benchmark of {arch} failed")
    return {"results": str(folder / "results.csv")}


def accuracy_of_variant(run: Run, arch: str) -> dict:
    from mpc.accuracy import accuracy_report

    reports = []
    for profile in run.budget.accuracy_protocols:
        report = accuracy_report(
            str(run.checkpoint(arch)),
            run.budget.accuracy_prompts,
            run.budget.accuracy_length,
            run.data_dir,
            server_args=("--protocol", profile),
        )
        reports.append({"protocol": profile, **report})
    return {"reports": reports}


PER_VARIANT = {
    "train": train_variant,
    "entropy": analyze_variant,
    "mpc": measure_variant,
    "accuracy": accuracy_of_variant,
}


def run_stage(run: Run, stage: str, failures: list[str], archs: list[str]) -> None:
    """One per-variant stage over `archs`, skipping those already recorded. A failure is
    recorded and reported at the end; the other variants go on."""
    for arch in archs:
        done = run.record(stage, arch)
        if done.exists():
            continue
        if stage != "train" and not _usable(run, arch):
            print(f"[{stage}] {arch}: skipped (no finite trained weights)", flush=True)
            continue
        started = time.perf_counter()
        print(f"[{stage}] {arch} ...", flush=True)
        try:
            record = PER_VARIANT[stage](run, arch)
        except Exception as error:  # one variant's failure must not lose the others' hours
            failures.append(f"{stage} {arch}: {type(error).__name__}: {error}")
            print(f"[{stage}] {arch}: FAILED: {error}", flush=True)
            continue
        record["stage_seconds"] = time.perf_counter() - started
        atomic_write_json(done, record)
        print(f"[{stage}] {arch}: done in {record['stage_seconds']:.0f} s", flush=True)


def _usable(run: Run, arch: str) -> bool:
    """Trained weights exist and are finite (a diverged run keeps its last finite step)."""
    path = run.checkpoint(arch)
    if not path.exists() or not run.record("train", arch).exists():
        return False
    state = load_checkpoint(path).model_state
    return all(bool(t.isfinite().all()) for t in state.values() if t.is_floating_point())


# ---------------------------------------------------------------- collection


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
    frames["accuracy"] = pd.DataFrame(accuracy)
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


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/reproduce.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="small")
    parser.add_argument("--out", help="curated results (default results/reproduce-BUDGET)")
    parser.add_argument("--work", help="checkpoints and records (default runs/reproduce-BUDGET)")
    parser.add_argument("--seed", type=int, default=1337, help="training seed of every variant")
    parser.add_argument("--variants", nargs="+", help="a subset (default: the budget's)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--data-dir", default="data", help="cache for tokenized corpora")
    parser.add_argument("--corpus", help="folder or .jsonl(.gz) (default: Python stdlib)")
    parser.add_argument(
        "--device", default="cpu", help="training device: cpu, cuda, mps or auto (MPC: the CPU)"
    )
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per step (default: budget's)")
    parser.add_argument(
        "--by-variant",
        action="store_true",
        help="run every stage of one variant before the next (default: each stage for all)",
    )
    parser.add_argument(
        "--noise-against",
        nargs="+",
        metavar="LABEL=DIR",
        default=[],
        help="compare this run's table4.csv with other runs' (noise.csv, noise.md in --out)",
    )
    parser.add_argument(
        "--measure-paper-shapes",
        action="store_true",
        help="also measure the paper's shapes with real parties (default: the budget's choice)",
    )
    return parser.parse_args(argv)


def make_run(args: argparse.Namespace) -> Run:
    budget = BUDGETS[args.budget]
    if args.measure_paper_shapes:
        budget = Budget(**{**asdict(budget), "measure_paper_shapes": True})
    if args.grad_accum:
        budget = Budget(**{**asdict(budget), "grad_accum": args.grad_accum})
    variants = expand_arch_names(args.variants) if args.variants else list(budget.variants)
    return Run(
        name=args.budget,
        budget=budget,
        seed=args.seed,
        out=Path(args.out or f"results/reproduce-{args.budget}"),
        work=Path(args.work or f"runs/reproduce-{args.budget}"),
        data_dir=args.data_dir,
        corpus=args.corpus,
        variants=variants,
        device=args.device,
        precision=args.precision,
    )


RECIPE_KEYS = ("preset", "steps", "batch_size", "seed", "max_files", "corpus")


def refuse_other_recipe(path: Path, setting: dict) -> None:
    """A work folder resumes only the same training recipe: continuing a checkpoint under other
    steps would silently change its learning-rate schedule."""
    if not path.exists():
        return
    earlier = json.loads(path.read_text())
    changed = [k for k in RECIPE_KEYS if k in earlier and earlier[k] != setting[k]]
    if changed:
        what = ", ".join(f"{k} {earlier[k]} -> {setting[k]}" for k in changed)
        raise UserError(f"{path.parent} holds a run of another recipe ({what}); use another --work")


def main(argv: list[str] | None = None) -> int:
    from bench.reproduction.shapes import paper_shapes

    args = parse_args(argv)
    run = make_run(args)
    run.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    setting = {"budget": run.name, **asdict(run.budget), "seed": run.seed}
    setting |= {"device": run.device, "precision": run.precision}
    setting |= {"variants": run.variants, "corpus": run.corpus or "python stdlib"}
    refuse_other_recipe(run.work / "budget.json", setting)
    atomic_write_json(run.work / "budget.json", setting)
    print(f"reproduction '{run.name}': {len(run.variants)} variants -> {run.out}", flush=True)
    failures: list[str] = []
    stages = [s for s in ("train", "entropy", "mpc", "accuracy") if s in args.stages]
    # --by-variant: every stage of one variant before the next (complete rows if interrupted)
    batches = [[arch] for arch in run.variants] if args.by_variant else [run.variants]
    for archs in batches:
        for stage in stages:
            run_stage(run, stage, failures, archs)
    shapes_csv = run.work / "paper_shapes.csv"
    if "shapes" in args.stages and not shapes_csv.exists():
        shapes = paper_shapes(run.budget.measure_paper_shapes, run.work / "paper-shapes")
        atomic_write_text(shapes_csv, shapes.to_csv(index=False))
    if "table" in args.stages:
        shapes = pd.read_csv(shapes_csv) if shapes_csv.exists() else pd.DataFrame()
        write_outputs(run, collect(run), shapes)
        setting |= {"git_revision": git_revision(), "env": environment_record(1)}
        setting["driver_seconds_this_call"] = round(time.perf_counter() - started, 1)
        atomic_write_json(run.out / "budget.json", setting)
    if args.noise_against:
        write_noise(run.out, args.noise_against)
    for line in failures:
        print(f"FAILED: {line}", file=sys.stderr)
    print(f"reproduction '{run.name}' done in {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if failures else 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
