"""Measure what one vocabulary slice's embedding product costs in memory, to size the slices:

    python -m mpc.spu.vocab_memory --protocol cheetah --words 1024 4096 --seq-len 128 --width 768

For each slice size, a server and a client process (brpc link on loopback) run the embedding of a
T-token prompt over a `words`-word table of width C under SPU, the same stage the SPU forward runs
per slice (`mpc.spu.jax_model`), and report each party's resident memory before the product
(the floor) and its sampled peak during it. The fit, bytes per operand element (T x S + S x C)
above the floor, is what `mpc.spu.vocab` uses; its constants were measured with this program.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from models.cli import run_main
from models.errors import UserError
from mpc.spu.settings import PROTOCOLS


def one_party(args: argparse.Namespace) -> None:
    import numpy as np
    import psutil

    from mpc.roles import SERVER
    from mpc.spu.jax_model import TOKENS, embedding_stages, one_hot
    from mpc.spu.session import SecureForward, open_link, route_logs, run_query
    from mpc.spu.settings import SpuSettings

    folder = Path(args.folder)
    route_logs(folder / f"spu-{args.rank}.log")
    settings = SpuSettings(protocol=args.protocol[0])
    stages = embedding_stages([(0, args.words[0])])
    T, S, C = args.seq_len, args.words[0], args.width
    generator = np.random.default_rng(args.rank)
    own = (
        {
            "wte.weight": generator.normal(0, 0.02, (S, C)).astype(np.float32),
            "wpe.weight": generator.normal(0, 0.02, (T, C)).astype(np.float32),
        }
        if args.rank == SERVER
        else {TOKENS: one_hot(list(generator.integers(0, S, T)), S)}
    )
    shapes = {"wte.weight": (S, C), "wpe.weight": (T, C), TOKENS: (T, S)}
    addresses = [f"127.0.0.1:{port}" for port in args.link_ports]
    link = open_link(args.rank, addresses, args.timeout)
    try:
        forward = SecureForward(args.rank, link, settings, folder / f"spu-{args.rank}.log")
        floor = psutil.Process().memory_info().rss / 2**20
        record = run_query(forward, stages, own, shapes)
    finally:
        link.stop_link()
    (op,) = [op for op in record["ops"] if op["category"] == "embedding"]
    result = {"floor_mb": floor, "peak_mb": op["peak_rss_mb"], "bytes": op["bytes"],
              "seconds": op["wall_s"]}  # fmt: skip
    (folder / f"party-{args.rank}.json").write_text(json.dumps(result))


def measure(args: argparse.Namespace, protocol: str, words: int) -> list[dict]:
    from mpc.session.local import free_port

    with tempfile.TemporaryDirectory(prefix="aero-pi-vocab-memory-") as folder:
        ports = [str(free_port(span=1)), str(free_port(span=1))]
        common = [
            sys.executable, "-m", "mpc.spu.vocab_memory", "--protocol", protocol,
            "--words", str(words), "--seq-len", str(args.seq_len), "--width", str(args.width),
            "--folder", folder, "--link-ports", *ports, "--timeout", str(args.timeout),
        ]  # fmt: skip
        parties = [subprocess.Popen([*common, "--rank", str(r)]) for r in (0, 1)]
        codes = [p.wait(timeout=4 * args.timeout) for p in parties]
        if any(codes):
            raise UserError(f"a party failed (exit codes {codes}); see its output above")
        return [json.loads((Path(folder) / f"party-{r}.json").read_text()) for r in (0, 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpc.spu.vocab_memory", description=__doc__)
    parser.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=["cheetah"])
    parser.add_argument("--words", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--link-ports", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank is not None:
        one_party(args)
        return 0
    print("protocol,words,party,floor_mb,peak_mb,bytes_per_element,link_bytes,seconds")
    for protocol in args.protocol:
        for words in args.words:
            elements = args.seq_len * words + words * args.width
            for party, r in zip(("server", "client"), measure(args, protocol, words), strict=True):
                per = (r["peak_mb"] - r["floor_mb"]) * 2**20 / elements
                print(
                    f"{protocol},{words},{party},{r['floor_mb']:.0f},{r['peak_mb']:.0f},"
                    f"{per:.0f},{r['bytes']:.0f},{r['seconds']:.1f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
