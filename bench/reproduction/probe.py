"""The stress probe: which training regime makes softmax-only models collapse at CPU scale.

    python -m bench.reproduction.probe --arch SM SM+LN+G --layers 8 12 --lr 1e-3 3e-3 \
        --steps 300 --out results/reproduce-stress/probe.csv

Every combination of the listed settings is one short training run (`models.train`, one
thread); each appends one row to the CSV (a row already there is skipped): the settings, the
outcome judged as the stress budget judges it (`bench.reproduction.stress.run_outcome`:
diverged, blown up, collapsed at some evaluation, the last evaluation's head bins and collapsed
fractions), the last evaluation's loss, PPL and per-layer mean attention entropy (a fraction
of log T). A diverged run reports its last evaluation before the non-finite loss.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import pandas as pd

from bench.reproduction.stress import run_outcome
from bench.reproduction.workspace import slug
from models.atomic import atomic_write_text
from models.checkpoint import load_checkpoint
from models.cli import run_main
from models.config import canonical_arch
from models.train import perplexity

SETTINGS = ("arch", "n_layer", "n_embd", "n_head", "seq_len", "lr", "warmup_frac", "steps",
            "batch_size", "seed")  # fmt: skip


def outcome(setting: dict, checkpoint) -> dict:
    """The row's outcome columns: `stress.run_outcome` (final and worst-ever collapse, blow-up,
    divergence) plus tokens, the last evaluation's loss and per-layer entropies, seconds."""
    meta = checkpoint.meta
    history = meta.get("history", [])
    last = history[-1] if history else {}
    row = run_outcome(setting["arch"], setting["seed"], meta, checkpoint.config.vocab_size)
    row |= {"tokens_seen": meta["tokens_seen"], "last_eval_loss": last.get("eval_loss", math.nan)}
    row["last_eval_ppl"] = perplexity(last["eval_loss"]) if last else math.nan
    layers = last.get("entropy_fraction_by_layer", [])
    row["entropy_by_layer"] = ";".join(f"{v:.3f}" for v in layers)
    return row | {"train_seconds": round(meta.get("train_seconds", math.nan), 1)}


def probe(setting: dict, work: Path, data_dir: str) -> dict:
    """Train one setting (one thread) and return its CSV row."""
    from models.train import main as train_main

    name = "-".join(f"{k}{setting[k]}" for k in SETTINGS if k != "arch")
    out = work / f"{slug(setting['arch'])}-{name}.pt"
    argv = ["--arch", setting["arch"], "--preset", "small", "--threads", "1", "--resume"]
    for field in ("n_layer", "n_embd", "n_head"):
        argv += ["--set", f"{field}={setting[field]}"]
    argv += ["--set", f"block_size={setting['seq_len']}", "--lr", str(setting["lr"])]
    argv += ["--warmup-frac", str(setting["warmup_frac"]), "--steps", str(setting["steps"])]
    argv += ["--batch-size", str(setting["batch_size"]), "--seed", str(setting["seed"])]
    argv += ["--eval-interval", str(max(1, setting["steps"] // 10)), "--eval-batches", "4"]
    argv += ["--data-dir", data_dir, "--out", str(out)]
    ended = out.exists() and load_checkpoint(out).meta["status"] in ("finished", "diverged")
    if not ended:  # an ended run is only scored again (a diverged one must not train on)
        train_main(argv)
    return {**outcome(setting, load_checkpoint(out)), **setting}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reproduction.probe")
    parser.add_argument("--arch", nargs="+", default=["SM", "SM+LN+G"])
    parser.add_argument("--layers", nargs="+", type=int, default=[12])
    parser.add_argument("--width", nargs="+", type=int, default=[128])
    parser.add_argument("--heads", nargs="+", type=int, default=[4])
    parser.add_argument("--seq-len", nargs="+", type=int, default=[128])
    parser.add_argument("--lr", nargs="+", type=float, default=[1e-3])
    parser.add_argument("--warmup-frac", nargs="+", type=float, default=[0.05])
    parser.add_argument("--steps", nargs="+", type=int, default=[300])
    parser.add_argument("--batch-size", nargs="+", type=int, default=[16])
    parser.add_argument("--seed", nargs="+", type=int, default=[1337])
    parser.add_argument("--out", default="results/reproduce-stress/probe.csv")
    parser.add_argument("--work", default="runs/stress-probe", help="checkpoints")
    parser.add_argument("--data-dir", default="data")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    grid = itertools.product(
        [canonical_arch(a) for a in args.arch], args.layers, args.width, args.heads,
        args.seq_len, args.lr, args.warmup_frac, args.steps, args.batch_size, args.seed,
    )  # fmt: skip
    out = Path(args.out)
    rows = pd.read_csv(out).to_dict("records") if out.exists() else []
    done = {tuple(str(row[k]) for k in SETTINGS) for row in rows}
    for values in grid:
        setting = dict(zip(SETTINGS, values, strict=True))
        if tuple(str(v) for v in values) in done:
            continue
        print(f"probe: {setting}", flush=True)
        rows.append(probe(setting, Path(args.work), args.data_dir))
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, pd.DataFrame(rows).to_csv(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
