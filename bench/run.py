"""Benchmark genuine two-party secure inference, per operation, per layer and per party.

    python bench/run.py --arch all --preset tiny
    python bench/run.py --arch baseline sm+ln+r aero --preset gpt2
    python bench/run.py --checkpoint runs/demo-baseline.pt runs/demo-aero.pt --repeats 3
    python bench/run.py --arch baseline aero --preset small --seq-len 32 64 128 256

For each architecture (and sequence length) the server, the dealer and the client run as separate
processes over TCP; each party records bytes, rounds, communication, wall and CPU seconds for each
operation category of each layer. Without a checkpoint the weights are random (the costs do not
depend on weight values; accuracy is then measured on random weights). Writes a new folder under
results/ with results.csv, config.json, env.json, summary.md and plots.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from bench.backends import BACKENDS, SHAPED_NETWORK_BACKENDS, measure
from bench.environment import environment_record
from bench.harness import Target, flag_mismatches, write_results
from bench.schema import NETWORKS, ResultRow
from models.atomic import atomic_write_json
from models.checkpoint import load_checkpoint, random_checkpoint
from models.cli import add_config_args, config_from_args, run_main
from models.config import expand_arch_names
from models.errors import UserError
from mpc.approx import add_approx_arguments, approx_from_arguments


def targets_from_args(args: argparse.Namespace) -> list[Target]:
    if args.checkpoint:
        return [Target(load_checkpoint(p), Path(p).name, Path(p)) for p in args.checkpoint]
    return [
        Target(random_checkpoint(config_from_args(args, arch)), "random")
        for arch in expand_arch_names(args.arch)
    ]


def check_networks(networks: list[str], backends: list[str]) -> None:
    """Shaped links need network namespaces (root), and a backend that can run on them: refuse
    before any work otherwise."""
    shaped = [n for n in networks if n != "loopback"]
    loopback_only = [b for b in backends if b not in SHAPED_NETWORK_BACKENDS]
    if shaped and loopback_only:
        raise UserError(
            f"--backend {loopback_only[0]} runs on loopback only, not --network {shaped[0]}: "
            "measure it in a separate run"
        )
    if shaped:
        from bench.netns import parse_network, unavailable

        for network in shaped:
            parse_network(network)
        reason = unavailable()
        if reason:
            raise UserError(f"--network {shaped[0]} needs network namespaces: {reason}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n")[0])
    add_config_args(parser, arch_required=False, many_archs=True)
    parser.set_defaults(preset="tiny")
    parser.add_argument("--checkpoint", nargs="+", help="trained checkpoints (instead of --arch)")
    parser.add_argument("--seq-len", type=int, nargs="+", help="prompt lengths (default: context)")
    parser.add_argument("--dealer", choices=("ttp", "tfp"), default="ttp")
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=tuple(BACKENDS),
        default=["crypten"],
        help="MPC backends (SPU ones need the spu extra and run on loopback only)",
    )
    parser.add_argument(
        "--spu-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="an SPU setting (mpc.spu.settings.SpuSettings), e.g. --spu-set vocab_slice=4096",
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--network",
        nargs="+",
        default=["loopback"],
        help="where the parties run: loopback, and/or lan, wan, RATE,RTT (e.g. 50mbit,20ms): "
        "each party in its own network namespace behind a shaped link (needs root)",
    )
    parser.add_argument("--out", help="results folder (default results/DATE-PRESET)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds any wait may last")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per party")
    parser.add_argument("--no-plots", action="store_true")
    add_approx_arguments(parser, many_protocols=True)
    args = parser.parse_args(argv)
    if bool(args.arch) == bool(args.checkpoint):
        parser.error("give either --arch or --checkpoint")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    targets = targets_from_args(args)  # validates names and checkpoints before any work
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    folder = Path(args.out or f"results/{run_id}-{args.preset}")
    if (folder / "results.csv").exists():
        raise UserError(f"{folder} already holds results; choose another --out")
    for target in targets:
        for seq_len in args.seq_len or [target.config.block_size]:
            if not 1 <= seq_len <= target.config.block_size:
                raise UserError(
                    f"--seq-len {seq_len} outside [1, {target.config.block_size}] "
                    f"for {target.config.arch}"
                )
    check_networks(args.network, args.backend)
    approx = approx_from_arguments(args)
    config = {
        "run_id": run_id,
        "argv": sys.argv[1:],
        "approx": approx.to_dict(),
        "protocols": {
            name: approx_from_arguments(args, name).to_dict() for name in args.protocol or ["stock"]
        },
        "spu_settings": {  # as each SPU server ran (vocabulary slice, budget, forms, ...)
            b: [s.settings.to_dict() for s in BACKENDS[b].settings(args)]
            for b in args.backend
            if b != "crypten"
        },
        "networks_projected": NETWORKS,
        "architectures": {t.config.arch: t.config.to_dict() for t in targets},
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "env.json", environment_record(args.threads))
    # The dealer flag is CrypTen's; each SPU protocol has its own (settings.dealer, in the rows).
    dealer = f"crypten dealer {args.dealer}, " if "crypten" in args.backend else ""
    print(
        f"benchmark {run_id}: {len(targets)} architecture(s), {dealer}"
        f"{args.repeats} repeat(s) -> {folder}",
        flush=True,
    )
    rows: list[ResultRow] = []
    for network in args.network:
        for target in targets:
            for seq_len in args.seq_len or [target.config.block_size]:
                rows += measure(args, target, seq_len, run_id, network)
            write_results(folder, rows, config, draw=False)  # progress survives an interruption
    write_results(folder, rows, config, draw=not args.no_plots)
    for line in flag_mismatches(rows):
        print(f"MODEL MISMATCH > 1 %: {line}")
    if not args.no_plots:
        print((folder / "summary.md").read_text())
    elif len(args.protocol or []) > 1:
        import pandas as pd

        from bench.profiles import profile_markdown

        print(profile_markdown(pd.DataFrame([vars(row) for row in rows])))
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
