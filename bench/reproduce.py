"""Reproduce AERO end to end at one token budget: train every variant, analyze attention entropy,
measure secure inference of each trained model, cost the paper's exact shapes, write the tables.

    python bench/reproduce.py --budget small     # 2 CPU cores (sizes: reproduction/budgets.py)
    python bench/reproduce.py --budget stress    # entropy collapse at CPU scale, 3 seeds (~1 h)
    python bench/reproduce.py --budget paper --device cuda --precision bf16
                                                 # the GPT-2-small recipe: with several GPUs each
                                                 # variant trains data-parallel (torchrun; printed)

Stages, each resumable (a variant whose record exists is skipped; records are written atomically):
  train     every variant, same seed and token budget (`models.train`); divergence recorded
  entropy   per-head entropies, the four-bin head distribution (`models.analyze`)
  mpc       bytes, rounds, seconds of one secure query per trained model, stock and optimized
            protocol (`bench/run.py`, real server, client and dealer processes)
  accuracy  MPC vs plaintext logits, top-1 agreement, PPL under MPC (`mpc.accuracy`)
  shapes    the paper's exact shapes (12L T=128 / 256, 18L T=128, random weights): exact bytes
            and rounds from `mpc.cost.walk` (equal to measurements, tests prove it) beside the
            committed measurements; `--measure-paper-shapes` measures them too (hours on 2 cores)
  table     Table-4-layout CSV and markdown, findings with the paper's numbers, figures (a
            budget with several seeds: findings with mean and spread over the seeds instead)
Checkpoints and per-variant records go to --work (default runs/reproduce-BUDGET, not committed);
the curated CSV, markdown and PNG files to --out (default results/reproduce-BUDGET).
This file is the command line; the machinery is the package bench/reproduction/.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from bench.reproduction.budgets import BUDGETS, Budget
from bench.reproduction.pipeline import STAGES, reproduce
from bench.reproduction.workspace import Run
from models.cli import run_main
from models.config import expand_arch_names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/reproduce.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--budget", choices=tuple(BUDGETS), default="small")
    parser.add_argument("--out", help="curated results (default results/reproduce-BUDGET)")
    parser.add_argument("--work", help="checkpoints and records (default runs/reproduce-BUDGET)")
    parser.add_argument("--seed", type=int, default=1337, help="training seed of every variant")
    parser.add_argument("--variants", nargs="+", help="a subset (default: the budget's)")
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, help="default: all the budget runs (see budgets)"
    )
    parser.add_argument("--data-dir", default="data", help="cache for tokenized corpora")
    parser.add_argument("--corpus", help="folder or .jsonl(.gz) (default: Python stdlib)")
    parser.add_argument(
        "--device", default="cpu", help="training device: cpu, cuda, mps or auto (MPC: the CPU)"
    )
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per step (default: budget's)")
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        help="training processes, data-parallel through torchrun (default: every CUDA device "
        "when training on CUDA, else 1)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="train at each (default: budget's)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: budget's; smoke runs)")
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
    if args.seeds:
        budget = Budget(**{**asdict(budget), "seeds": tuple(args.seeds)})
    if args.steps:
        interval = min(budget.eval_interval, args.steps)
        budget = Budget(**{**asdict(budget), "steps": args.steps, "eval_interval": interval})
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
        processes=args.nproc_per_node or training_processes(args.device),
    )


def training_processes(device: str) -> int:
    """One per CUDA device when training on CUDA (torchrun, `models.distributed`), else 1 (also
    for one named device, cuda:N)."""
    import torch

    if device in ("cuda", "auto") and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = make_run(args)
    stages = args.stages or [s for s in STAGES if s not in run.budget.skip_stages]
    return reproduce(run, stages, args.by_variant, args.noise_against)


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
