"""Accuracy of secure inference for any checkpoint: MPC logits against plaintext logits.

    python -m mpc.accuracy --checkpoint runs/aero-small.pt --prompts 4 --length 64

Runs real two-party sessions (server, dealer and client processes on 127.0.0.1) on held-out
validation windows with every position's logits revealed to the client, and reports max and mean
absolute logit error, top-1 agreement over all positions, and perplexity under MPC next to the
plaintext perplexity of the same windows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

from models.atomic import atomic_write_text
from models.checkpoint import load_checkpoint
from models.cli import run_main
from models.data import data_of_checkpoint
from mpc.approx import PROFILES
from mpc.session.local import local_parties


def held_out_windows(meta: dict, vocab: int, data_dir: str, count: int, length: int):
    """(count, length + 1) validation token windows, fixed by a seed (inputs plus targets)."""
    data = data_of_checkpoint(meta, vocab, data_dir)
    generator = torch.Generator().manual_seed(2024)
    inputs, targets = data.batch("val", count, length, generator)
    return torch.cat([inputs, targets[:, -1:]], dim=1)


def compare(mpc: torch.Tensor, plain: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Error figures for (N, T, V) logits under MPC and in plaintext."""
    error = (mpc - plain).abs()
    ce = torch.nn.functional.cross_entropy
    return {
        "max_abs_logit_error": float(error.max()),
        "mean_abs_logit_error": float(error.mean()),
        "top1_agreement": float((mpc.argmax(-1) == plain.argmax(-1)).float().mean()),
        "ppl_mpc": math.exp(float(ce(mpc.flatten(0, 1), targets.flatten()))),
        "ppl_plaintext": math.exp(float(ce(plain.flatten(0, 1), targets.flatten()))),
        "positions": int(targets.numel()),
    }


def accuracy_report(
    checkpoint_path: str,
    prompts: int,
    length: int | None,
    data_dir: str,
    dealer: str = "ttp",
    server_args: tuple[str, ...] = (),
) -> dict:
    checkpoint = load_checkpoint(checkpoint_path)
    cfg = checkpoint.config
    length = min(length or cfg.block_size, cfg.block_size)
    windows = held_out_windows(checkpoint.meta, cfg.vocab_size, data_dir, prompts, length)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    model = checkpoint.build_model()
    with torch.no_grad():
        plain = model(inputs)
    revealed = []
    with (
        tempfile.TemporaryDirectory() as scratch,
        local_parties(
            checkpoint_path, dealer=dealer, server_args=server_args, logs=scratch
        ) as parties,
    ):
        for row in inputs.tolist():
            tokens = Path(scratch) / "prompt.json"
            tokens.write_text(json.dumps(row))
            record = parties.client("--tokens", str(tokens), "--all-positions")
            revealed.append(torch.tensor(record["logits"][0]))
    report = compare(torch.stack(revealed), plain, targets)
    setting = {"arch": cfg.arch, "prompts": prompts, "length": length, "dealer": dealer}
    return {**setting, "server_args": list(server_args), **report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mpc.accuracy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--length", type=int, help="prompt length (default: the context)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--dealer", choices=("ttp", "tfp"), default="ttp")
    parser.add_argument(
        "--protocol",
        nargs="+",
        choices=list(PROFILES),
        default=["stock"],
        help="protocol profiles to measure, one after another on the same prompts",
    )
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    reports = []
    for profile in args.protocol:
        report = accuracy_report(
            args.checkpoint,
            args.prompts,
            args.length,
            args.data_dir,
            args.dealer,
            server_args=("--protocol", profile),
        )
        reports.append({"protocol": profile, **report})
        print(
            f"{report['arch']} ({profile} protocol): {report['prompts']} prompts x "
            f"{report['length']} tokens, dealer {report['dealer']}: max |err| "
            f"{report['max_abs_logit_error']:.4f}, mean |err| "
            f"{report['mean_abs_logit_error']:.5f}, top-1 agreement "
            f"{100 * report['top1_agreement']:.2f}%, PPL {report['ppl_mpc']:.3f} "
            f"(MPC) vs {report['ppl_plaintext']:.3f} (plaintext)",
            flush=True,
        )
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(reports, indent=1))
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
