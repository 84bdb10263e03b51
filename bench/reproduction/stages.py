"""The per-variant stages of a reproduction, each resumable: a variant whose record exists is
skipped, records are written atomically, and one variant's failure does not stop the others.

    train     every variant, same seed and token budget (`models.train`); divergence recorded
    entropy   per-head entropies, the four-bin head distribution (`models.analyze`)
    mpc       bytes, rounds, seconds of one secure query per trained model, stock and optimized
              protocol (`bench/run.py`, real server, client and dealer processes)
    accuracy  MPC vs plaintext logits, top-1 agreement, PPL under MPC (`mpc.accuracy`)
"""

from __future__ import annotations

import math
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.reproduction.workspace import Run
from models.atomic import atomic_write_json
from models.checkpoint import load_checkpoint
from models.errors import UserError


def run_benchmark(argv: list[str]) -> int:
    """`bench/run.py` with these arguments, in this process: the reproduction's one call into it
    (the trained models here, the paper's shapes in bench/reproduction/shapes.py)."""
    from bench.run import main as bench_main

    return bench_main(argv)


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
        argv += ["--lr", str(budget.lr), "--warmup-frac", str(budget.warmup_frac)]
        argv += [arg for change in budget.overrides for arg in ("--set", change)]
        argv += ["--max-files", str(budget.max_files)] if budget.max_files else []
        argv += ["--corpus", run.corpus] if run.corpus else []
        code = train_main(argv) if run.processes == 1 else train_with_torchrun(run, argv, path)
        if code not in (0, 3):  # 3: diverged, a result like any other
            raise UserError(f"training {arch} failed with exit code {code}")
    checkpoint = load_checkpoint(path)
    return training_record(arch, checkpoint, run)


def torchrun_command(processes: int, train_argv: list[str]) -> list[str]:
    """`models.train` data-parallel over `processes` local processes (`models.distributed`)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc_per_node", str(processes), "-m", "models.train", *train_argv]


def train_with_torchrun(run: Run, argv: list[str], checkpoint: Path) -> int:
    """Train through torchrun, printing the command; the outcome is read from the checkpoint
    (torchrun reports any rank's non-zero exit, a divergence's 3 included, as its own failure)."""
    command = torchrun_command(run.processes, argv)
    print(f"training with {run.processes} processes: {shlex.join(command)}", flush=True)
    code = subprocess.run(command, check=False).returncode
    status = load_checkpoint(checkpoint).meta.get("status") if checkpoint.exists() else None
    return {"finished": 0, "diverged": 3}.get(status, code or 1)


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
    folder = run.record("mpc", arch, "")
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted measurement starts over
    argv = ["--checkpoint", str(run.checkpoint(arch)), "--preset", run.budget.preset]
    argv += ["--protocol", *run.budget.protocols, "--out", str(folder), "--no-plots"]
    argv += ["--timeout", str(run.budget.timeout_s)]
    argv += ["--seq-len", str(run.budget.cost_seq_len)] if run.budget.cost_seq_len else []
    if run_benchmark(argv) != 0:
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


def run_stage(run: Run, stage: str, failures: list[str], archs: list[str], bar=None) -> None:
    """One per-variant stage over `archs`, skipping those already recorded. A failure is
    recorded and reported at the end; the other variants go on. `bar` (a tqdm progress bar)
    advances by one per variant, done or skipped."""
    for arch in archs:
        try:
            _stage_of_one(run, stage, failures, arch)
        finally:
            if bar is not None:
                bar.update(1)


def _stage_of_one(run: Run, stage: str, failures: list[str], arch: str) -> None:
    done = run.record(stage, arch)
    if done.exists():
        return
    if stage != "train" and not _usable(run, arch):
        print(f"[{stage}] {arch}: skipped (no finite trained weights)", flush=True)
        return
    started = time.perf_counter()
    print(f"[{stage}] {arch} (seed {run.seed}) ...", flush=True)
    try:
        record = PER_VARIANT[stage](run, arch)
    except Exception as error:  # one variant's failure must not lose the others' hours
        failures.append(f"{stage} {arch} seed {run.seed}: {type(error).__name__}: {error}")
        print(f"[{stage}] {arch}: FAILED: {error}", flush=True)
        return
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
