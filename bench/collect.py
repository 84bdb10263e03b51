"""Turn the per-query cost records of a server and a client into a benchmark results folder.

    python -m bench.collect results/docker/baseline-tiny --preset tiny --network docker

Reads client-N.json (written by `mpc.client --json-out`) and server-N.json (`mpc.server
--measure-dir`) pairs, from FOLDER or its `client/` and `server/` subfolders, and writes
results.csv, config.json, summary.md and plots beside them, the
same rows `bench/run.py` writes: this is how a run whose parties live in separate containers or
hosts becomes the same tidy CSV.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.backends import crypten_record
from bench.harness import Target, add_accuracy, add_predictions, query_rows, write_results
from bench.schema import NETWORKS, ResultRow
from models.checkpoint import random_checkpoint
from models.cli import run_main
from models.config import PRESETS, ModelConfig
from models.errors import UserError
from mpc.approx import ApproxConfig, profile_name
from mpc.session.local import wait_for_json


def record_folders(folder: Path) -> tuple[Path, Path]:
    """(client records, server records): the `client/` and `server/` subfolders where each party
    wrote into a folder of its own (docker/compose.yaml: the server's container must never read
    the client's prompt and logits), else `folder` itself."""
    return tuple(folder / party if (folder / party).is_dir() else folder
                 for party in ("client", "server"))  # fmt: skip


def query_pairs(folder: Path, wait_s: float) -> list[tuple[int, dict, dict]]:
    """(query number, client record, server record); the server may write its record a moment
    after the client finished, so a missing one is awaited up to `wait_s` seconds."""
    pairs = []
    client_folder, server_folder = record_folders(folder)
    for client_path in sorted(client_folder.glob("client-*.json")):
        number = int(client_path.stem.split("-")[1])
        server_path = server_folder / f"server-{number}.json"
        try:
            client = json.loads(client_path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{client_path} is not valid JSON") from None
        pairs.append((number, client, wait_for_json(server_path, wait_s, "the server")))
    if not pairs:
        raise UserError(f"no client-N.json records in {client_folder}")
    return pairs


def random_seed(label: str) -> int:
    """The seed of a server's random weights from its description's label ("random seed N")."""
    return int(label.rpartition(" ")[2]) if label.startswith("random seed ") else 0


def collect(
    folder: Path, preset: str, network: str, random_weights: bool, wait_s: float = 60
) -> list[ResultRow]:
    rows: list[ResultRow] = []
    for number, client, server in query_pairs(folder, wait_s):
        cfg = ModelConfig.from_dict(client["config"])
        approx = ApproxConfig.from_dict(client["approx"])
        weights = "random" if random_weights else "checkpoint"
        base = dict(
            run_id=folder.name,
            arch=cfg.arch,
            preset=preset,
            weights=weights,
            backend="crypten",
            protocol=profile_name(approx),
            dealer=client["dealer"],
            network=network,
            seq_len=len(client["prompt_ids"]),
        )
        fresh = query_rows(crypten_record(client), crypten_record(server), base, number - 1)
        seed = random_seed(client.get("weights", ""))
        target = Target(random_checkpoint(cfg, seed), weights)  # the server's random weights
        if random_weights:
            add_accuracy(fresh, target, client["prompt_ids"], client["logits"][0][-1])
        add_predictions(fresh, target, approx, client["dealer"])
        rows += [row.project() for row in fresh]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.collect", description=__doc__.split("\n")[0]
    )
    parser.add_argument("folder", help="folder of client-N.json and server-N.json records")
    parser.add_argument("--preset", default="tiny", choices=tuple(PRESETS))
    parser.add_argument("--network", default="docker", help="label of where the parties ran")
    parser.add_argument(
        "--trained",
        action="store_true",
        help="the server held a trained checkpoint (no accuracy check here)",
    )
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    rows = collect(folder, args.preset, args.network, random_weights=not args.trained)
    config = {
        "run_id": folder.name,
        "argv": sys.argv[1:],
        "networks_projected": NETWORKS,
        "source": "collected from per-query records",
    }
    write_results(folder, rows, config, draw=not args.no_plots)
    print(f"collected {len(rows)} rows from {folder} into {folder / 'results.csv'}")
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
