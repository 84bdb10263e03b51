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
import json
import math
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.environment import environment_record
from bench.schema import NETWORKS, TOTAL, ResultRow, measured_rows
from models.atomic import atomic_write_json, atomic_write_text
from models.checkpoint import Checkpoint, load_checkpoint, random_checkpoint
from models.cli import add_config_args, config_from_args, run_main
from models.config import expand_arch_names
from models.errors import UserError
from mpc.approx import add_approx_arguments, approx_from_arguments, profile_name
from mpc.cost.walk import predict_costs
from mpc.session.local import local_parties


class Target:
    """One architecture to measure: its weights and the server flags that load them."""

    def __init__(self, checkpoint: Checkpoint, server_args: list[str], weights: str) -> None:
        self.checkpoint, self.server_args, self.weights = checkpoint, server_args, weights
        self.config = checkpoint.config


def targets_from_args(args: argparse.Namespace) -> list[Target]:
    if args.checkpoint:
        return [
            Target(load_checkpoint(p), ["--checkpoint", p], Path(p).name) for p in args.checkpoint
        ]
    targets = []
    for arch in expand_arch_names(args.arch):
        cfg = config_from_args(args, arch)
        flags = ["--random-arch", arch, "--preset", args.preset]
        flags += [item for pair in args.set for item in ("--set", pair)]
        targets.append(Target(random_checkpoint(cfg), flags, "random"))
    return targets


def prompt_tokens(target: Target, length: int, repeat: int) -> list[int]:
    generator = torch.Generator().manual_seed(1000 * length + repeat)
    return torch.randint(0, target.config.vocab_size, (length,), generator=generator).tolist()


def rows_of_party(record: dict, party: str, base: dict, repeat: int) -> list[ResultRow]:
    step = record["steps"][0]
    return measured_rows(step["ops"], step, party, base, repeat)


def add_predictions(rows: list[ResultRow], target: Target, approx, dealer: str) -> None:
    cache: dict = {}
    for row in rows:
        key = (row.party, row.seq_len)
        if key not in cache:
            cache[key] = predict_costs(target.config, approx, row.seq_len, dealer, row.party)
        predicted = cache[key]
        if row.category == TOTAL:
            row.predicted_bytes = sum(b for b, _ in predicted.values())
            row.predicted_rounds = sum(r for _, r in predicted.values())
        else:
            row.predicted_bytes, row.predicted_rounds = predicted.get(
                (row.layer, row.category), (0.0, 0.0)
            )


def add_accuracy(rows: list[ResultRow], target: Target, tokens: list[int], logits: list) -> None:
    model = target.checkpoint.build_model()
    with torch.no_grad():
        expected = model(torch.tensor([tokens]))[0, -1]
    revealed = torch.tensor(logits[0])[-1]
    for row in rows:
        if row.party == "client" and row.category == TOTAL:
            row.max_abs_logit_error = float((revealed - expected).abs().max())
            row.top1_match = float(int(revealed.argmax()) == int(expected.argmax()))


def parties_on(network: str, **kwargs):
    """The parties on loopback, or each in its own network namespace behind a shaped link."""
    if network == "loopback":
        return local_parties(None, **kwargs)
    from bench.netns import shaped_parties

    return shaped_parties(network, None, **kwargs)


def measure_target(
    args, target: Target, seq_len: int, run_id: str, network: str, profile: str = "stock"
) -> list[ResultRow]:
    """All repeats of one architecture at one sequence length on one network under one protocol
    profile, in one server's lifetime."""
    approx = approx_from_arguments(args, profile)
    base = dict(
        run_id=run_id,
        arch=target.config.arch,
        preset=args.preset,
        weights=target.weights,
        backend="crypten",
        protocol=profile_name(approx),
        dealer=args.dealer,
        network=network,
        seq_len=seq_len,
    )
    rows: list[ResultRow] = []
    with tempfile.TemporaryDirectory(prefix="aero-pi-bench-") as scratch:
        server_args = (
            *target.server_args,
            "--measure-dir",
            scratch,
            "--threads",
            str(args.threads),
            *approx_flags(args, profile),
        )
        with parties_on(
            network,
            dealer=args.dealer,
            timeout_s=args.timeout,
            server_args=server_args,
            logs=scratch,
        ) as parties:
            for repeat in range(args.repeats):
                tokens = prompt_tokens(target, seq_len, repeat)
                prompt = Path(scratch) / "prompt.json"
                prompt.write_text(json.dumps(tokens))
                started = time.perf_counter()
                client = parties.client(
                    "--tokens",
                    str(prompt),
                    "--timeout",
                    str(args.timeout),
                    "--threads",
                    str(args.threads),
                    timeout_s=4 * args.timeout,  # each of the query's waits may take `timeout`
                )
                server = wait_for_json(Path(scratch) / f"server-{repeat + 1}.json", args.timeout)
                fresh = rows_of_party(client, "client", base, repeat)
                fresh += rows_of_party(server, "server", base, repeat)
                report_mask_setup(server, target)
                add_accuracy(fresh, target, tokens, client["logits"])
                rows += fresh
                report_progress(target, seq_len, repeat, args.repeats, fresh, started)
    add_predictions(rows, target, approx, args.dealer)
    return [row.project() for row in rows]


def measure_backends(args, target: Target, seq_len: int, run_id: str, network: str) -> list:
    """`measure_target` for CrypTen; SPU backends go to `bench.spu_runner` (loopback only)."""
    rows = []
    for backend in args.backend:
        if backend == "crypten":
            for profile in args.protocol or ["stock"]:
                rows += measure_target(args, target, seq_len, run_id, network, profile)
        elif network == "loopback":
            from bench.spu_runner import measure_spu_target

            rows += measure_spu_target(args, target, seq_len, run_id, backend)
    return rows


def approx_flags(args: argparse.Namespace, profile: str = "stock") -> list[str]:
    """The server flags of the approximations the user gave under protocol `profile`."""
    defaults = approx_from_arguments(argparse.Namespace())
    chosen = approx_from_arguments(args, profile)
    flags = []
    for name, value in chosen.to_dict().items():
        if value != getattr(defaults, name):
            flags += ["--" + name.replace("_", "-"), str(value)]
    return flags


def wait_for_json(path: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise UserError(f"the server wrote no measurements to {path}")
        time.sleep(0.1)
    return json.loads(path.read_text())


def report_mask_setup(server: dict, target: Target) -> None:
    """The one-off weight-mask upload of the optimized profile (first query of a loaded model):
    not part of any query's figures, so it is printed here and stated in README."""
    setup = server["steps"][0].get("mask_setup") or {}
    if setup.get("bytes"):
        print(
            f"  {target.config.arch:22s} weight masks: {setup['bytes'] / 1e6:.1f} MB sent to the "
            f"dealer once for this loaded model ({setup['wall_s']:.1f} s), not counted per query",
            flush=True,
        )


def report_progress(target, seq_len, repeat, repeats, rows, started) -> None:
    client = next(r for r in rows if r.party == "client" and r.category == TOTAL)
    print(
        f"  {target.config.arch:22s} T={seq_len:<4d} repeat {repeat + 1}/{repeats}: "
        f"{client.bytes / 1e9:.3f} GB, {client.rounds:.0f} rounds, {client.wall_s:.1f} s "
        f"(query {time.perf_counter() - started:.1f} s), max |logit err| "
        f"{client.max_abs_logit_error:.2e}",
        flush=True,
    )


def flag_mismatches(rows: list[ResultRow]) -> list[str]:
    """Categories whose measured bytes or rounds differ from the analytic model by > 1 %."""
    flagged = []
    for row in rows:
        for kind in ("bytes", "rounds"):
            measured, predicted = getattr(row, kind), getattr(row, f"predicted_{kind}")
            if math.isnan(predicted) or measured == predicted:
                continue
            if abs(measured - predicted) > 0.01 * max(predicted, 1e-9):
                flagged.append(
                    f"{row.arch} T={row.seq_len} {row.party} layer {row.layer} "
                    f"{row.category}: {kind} measured {measured:.0f}, predicted "
                    f"{predicted:.0f}"
                )
    return flagged


def write_results(folder: Path, rows: list[ResultRow], config: dict, draw: bool) -> None:
    """results.csv (atomically), config.json, env.json, summary.md and the plots."""
    import pandas as pd

    frame = pd.DataFrame([vars(row) for row in rows], columns=ResultRow.columns())
    atomic_write_text(folder / "results.csv", frame.to_csv(index=False))
    atomic_write_json(folder / "config.json", config)
    if draw:
        from bench.figures import draw_all
        from bench.profiles import profile_markdown
        from bench.report import summary_markdown

        comparison = profile_markdown(frame)
        summary = summary_markdown(frame) + (f"\n{comparison}\n" if comparison else "")
        atomic_write_text(folder / "summary.md", summary)
        draw_all(frame, folder / "plots")


def check_networks(networks: list[str]) -> None:
    """Shaped links need network namespaces (root): refuse before any work if unavailable."""
    shaped = [n for n in networks if n != "loopback"]
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
        choices=("crypten", "spu-semi2k", "spu-cheetah"),
        default=["crypten"],
        help="MPC backends (SPU ones need the spu extra and run on loopback only)",
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
    check_networks(args.network)
    approx = approx_from_arguments(args)
    config = {
        "run_id": run_id,
        "argv": sys.argv[1:],
        "approx": approx.to_dict(),
        "protocols": {
            name: approx_from_arguments(args, name).to_dict() for name in args.protocol or ["stock"]
        },
        "networks_projected": NETWORKS,
        "architectures": {t.config.arch: t.config.to_dict() for t in targets},
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "env.json", environment_record(args.threads))
    print(
        f"benchmark {run_id}: {len(targets)} architecture(s), dealer {args.dealer}, "
        f"{args.repeats} repeat(s) -> {folder}",
        flush=True,
    )
    rows: list[ResultRow] = []
    for network in args.network:
        for target in targets:
            for seq_len in args.seq_len or [target.config.block_size]:
                rows += measure_backends(args, target, seq_len, run_id, network)
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
