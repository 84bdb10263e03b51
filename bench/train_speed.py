"""Training throughput (tokens/s) of each architecture on this machine.

    python -m bench.train_speed --arch baseline aero --preset small

Times full optimizer steps (forward, entropy penalty where the variant has one, backward, clip,
AdamW) on random token windows after a few warm-up steps; prints one line per architecture.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from models.cli import parse_overrides, run_main
from models.config import PRESETS, expand_arch_names, resolve_config
from models.gpt import GPT
from models.train import TrainSettings, build_optimizer, training_loss


def tokens_per_second(
    arch: str, preset: str, steps: int, batch_size: int, overrides: dict
) -> float:
    cfg = resolve_config(arch, preset, **overrides)
    torch.manual_seed(0)
    model = GPT(cfg).train()
    optimizer = build_optimizer(model, TrainSettings())
    x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size))
    y = torch.randint(0, cfg.vocab_size, (batch_size, cfg.block_size))
    warmup = 3
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        loss, _ = training_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return steps * x.numel() / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__)
    parser.add_argument("--arch", nargs="+", default=["baseline", "aero"])
    parser.add_argument("--preset", default="small", choices=tuple(PRESETS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=TrainSettings().batch_size)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    print(
        f"training throughput, preset {args.preset}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} torch threads"
    )
    rates = {}
    for arch in expand_arch_names(args.arch):
        rates[arch] = tokens_per_second(arch, args.preset, args.steps, args.batch_size, overrides)
        print(f"  {arch:22s} {rates[arch]:10.0f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
