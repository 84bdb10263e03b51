"""The benchmark's SPU backends: `bench/run.py --backend spu-semi2k spu-cheetah`.

For each architecture the SPU server (`mpc.spu.server`, holding the weights) and, per repeat, the
SPU client (`mpc.spu.client`, holding the prompt) run as separate OS processes over TCP (a brpc
link); each writes its per-(layer, category) costs, which become `ResultRow`s of the same schema
as CrypTen's. Differences, all labeled in the rows:
- bytes per stage come from SPU's profile log (send + recv of that party), cross-checked against
  the kernel's TCP counters on the total rows (`os_bytes`, which also hold brpc's framing);
- `rounds` holds SPU's "send actions", the messages this party sent: an upper bound on rounds
  (SPU pipelines many messages per round), so WAN projections of SPU rows are pessimistic;
- `comm_s` is 0: SPU does not report communication time apart, so projections count the loopback
  wall time as compute;
- `protocol` holds the settings that change costs (fraction bits, exp mode, GELU and softmax
  forms, denominator rewrite); `dealer` is "tfp" for SEMI2K (INSECURE: the server makes the
  triples) and "none" for the dealer-free CHEETAH.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.schema import TOTAL, ResultRow, measured_rows
from models.errors import UserError
from mpc.session.local import free_port
from mpc.spu.settings import settings_for_backend, settings_label


def spu_available() -> str | None:
    """None if SPU imports here, else what to do."""
    try:
        import spu  # noqa: F401
    except ImportError:
        return 'SPU is not installed: pip install -e ".[spu]" (see README, "SecretFlow SPU")'
    return None


def party_rows(record: dict, party: str, base: dict, repeat: int) -> list[ResultRow]:
    total = {**record["total"], **{k: record[k] for k in ("os_bytes", "peak_rss_mb")}}
    return measured_rows(record["ops"], total, party, base, repeat)


def _start_server(target, backend: str, port: int, repeats: int, folder: Path, timeout: float):
    command = [
        sys.executable,
        "-m",
        "mpc.spu.server",
        "--backend",
        backend,
        *target.server_args,
        "--port",
        str(port),
        "--queries",
        str(repeats),
        "--measure-dir",
        str(folder),
        "--timeout",
        str(timeout),
    ]
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _run_client(backend: str, port: int, prompt: Path, folder: Path, timeout: float) -> dict:
    out = folder / "client.json"
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "mpc.spu.client",
        "--backend",
        backend,
        "--port",
        str(port),
        "--tokens",
        str(prompt),
        "--json-out",
        str(out),
        "--timeout",
        str(timeout),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=2 * timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"the SPU client did not finish within {2 * timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        server = (folder / "server.log").read_text()[-2000:]
        raise UserError(f"SPU client failed: {last}\n--- server log ---\n{server}")
    return json.loads(out.read_text())


def _wait_for(path: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise UserError(f"the SPU server wrote no measurements to {path}")
        time.sleep(0.1)
    return json.loads(path.read_text())


def measure_spu_target(args, target, seq_len: int, run_id: str, backend: str) -> list[ResultRow]:
    """All repeats of one architecture at one T under one SPU protocol, one server lifetime."""
    from bench.run import add_accuracy, prompt_tokens

    reason = spu_available()
    if reason:
        raise UserError(reason)
    settings = settings_for_backend(backend)
    base = dict(
        run_id=run_id,
        arch=target.config.arch,
        preset=args.preset,
        weights=target.weights,
        backend=backend,
        protocol=settings_label(settings),
        dealer=settings.dealer,
        network="loopback",
        seq_len=seq_len,
    )
    rows: list[ResultRow] = []
    with tempfile.TemporaryDirectory(prefix="aero-pi-spu-bench-") as scratch:
        folder, port = Path(scratch), free_port()
        server = _start_server(target, backend, port, args.repeats, folder, args.timeout)
        try:
            for repeat in range(args.repeats):
                tokens = prompt_tokens(target, seq_len, repeat)
                prompt = folder / "prompt.json"
                prompt.write_text(json.dumps(tokens))
                started = time.perf_counter()
                client = _run_client(backend, port, prompt, folder, args.timeout)
                server_record = _wait_for(folder / f"server-{repeat + 1}.json", args.timeout)
                fresh = party_rows(client, "client", base, repeat)
                fresh += party_rows(server_record, "server", base, repeat)
                add_accuracy(fresh, target, tokens, [[client["logits"]]])
                rows += fresh
                _report(target, backend, seq_len, repeat, args.repeats, fresh, started)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return [row.project() for row in rows]


def _report(target, backend, seq_len, repeat, repeats, rows, started) -> None:
    client = next(r for r in rows if r.party == "client" and r.category == TOTAL)
    print(
        f"  {target.config.arch:22s} {backend:11s} T={seq_len:<4d} repeat {repeat + 1}/{repeats}: "
        f"{client.bytes / 1e9:.3f} GB (kernel {client.os_bytes / 1e9:.3f}), {client.rounds:.0f} "
        f"messages, {client.wall_s:.1f} s (query {time.perf_counter() - started:.1f} s), "
        f"max |logit err| {client.max_abs_logit_error:.2e}",
        flush=True,
    )


def extrapolate_blocks(frame, layers: int):
    """Whole-model estimate from a run of fewer blocks: measured parts outside the blocks
    (embedding, final LayerNorm, LM head, input sharing, reveal) + `layers` x the mean block.
    Client rows, means over repeats; one row per (backend, arch, seq_len). An estimate: it assumes
    every block costs the same (true of bytes and messages, which depend only on shapes)."""
    import pandas as pd

    parts = frame[(frame.party == "client") & (frame.category != TOTAL)]
    out = []
    for (backend, arch, seq_len), rows in parts.groupby(["backend", "arch", "seq_len"]):
        repeats = rows.repeat.nunique()
        blocks = rows[rows.layer >= 0]
        measured = blocks.layer.nunique()
        record = {"backend": backend, "arch": arch, "seq_len": seq_len, "blocks_measured": measured}
        for metric in ("bytes", "rounds", "wall_s"):
            outside = rows[rows.layer < 0][metric].sum() / repeats
            block = blocks[metric].sum() / repeats / max(measured, 1)
            record[f"outside_{metric}"] = outside
            record[f"block_{metric}"] = block
            record[f"model_{metric}"] = outside + layers * block
        out.append(record)
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    """python -m bench.spu_runner RESULTS.csv --layers 12: the block extrapolation as markdown."""
    import argparse

    from bench.report import read_results

    parser = argparse.ArgumentParser(prog="python -m bench.spu_runner", description=main.__doc__)
    parser.add_argument("results")
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args(argv)
    table = extrapolate_blocks(read_results(args.results), args.layers)
    print(
        f"| backend | arch | blocks measured | outside blocks GB | per block GB | "
        f"{args.layers} blocks + outside GB | per block s | {args.layers} blocks + outside s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in table.itertuples():
        print(
            f"| {r.backend} | {r.arch} | {r.blocks_measured} | {r.outside_bytes / 1e9:.3f} | "
            f"{r.block_bytes / 1e9:.3f} | {r.model_bytes / 1e9:.2f} | {r.block_wall_s:.1f} | "
            f"{r.model_wall_s:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
