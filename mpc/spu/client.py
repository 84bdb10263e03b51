"""The SPU client: holds the prompt, learns the next-token logits and nothing else.

    python -m mpc.client --backend spu-cheetah --tokens prompt.json --port 7200
    python -m mpc.spu.client --backend spu-semi2k --tokens prompt.json --port 7200

It connects to the server's control port, receives the public model description, checks its
fingerprint (and, if given, --expect-fingerprint / --expect-arch), then joins the brpc link as
party 1 (listening on --link-host:--link-port, a free port by default), shares its one-hot prompt
(private to it until SPU's first joint op) and receives the last position's logits. Prints the
greedy next token; --json-out writes the whole record (logits, per-category costs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.atomic import atomic_write_json
from models.cli import run_main
from models.config import ModelConfig
from models.errors import UserError
from mpc.client import read_token_file, validate_tokens
from mpc.session.control import PeerError, connect, recv_message, send_message
from mpc.session.local import free_port
from mpc.session.public_model import accept_description, check_model_size
from mpc.spu import BACKENDS, SpuError


def query(args: argparse.Namespace) -> dict:
    from mpc.roles import CLIENT
    from mpc.session.secure_model import inference_model
    from mpc.spu.jax_model import TOKENS, build_stages, one_hot
    from mpc.spu.session import SecureForward, open_link, route_logs, run_query
    from mpc.spu.settings import SpuSettings

    link_port = args.link_port or free_port(args.link_host, span=1)
    with connect(args.host, args.port, args.timeout, "SPU server") as sock:
        # The prompt's length is public (as in the paper); its tokens never leave this process.
        send_message(
            sock,
            {
                "type": "request",
                "seq_len": len(read_token_file(args.tokens)),
                "link": f"{args.link_host}:{link_port}",
            },
        )
        hello = recv_message(sock, args.timeout, expect="hello")
    public = accept_description(
        hello.get("public"),
        hello.get("fingerprint"),
        args.backend,
        args.expect_fingerprint,
        args.expect_arch,
    )
    cfg = ModelConfig.from_dict(public.config)
    check_model_size(cfg)  # before the JAX skeleton is built from it
    settings = SpuSettings.from_dict(public.settings)
    ids = validate_tokens(read_token_file(args.tokens), cfg, 1)
    print(
        f"client: {public.backend} {cfg.arch} ({public.weights} weights); {public.trust}",
        flush=True,
    )
    log = Path(args.log_dir or Path(args.json_out or ".").parent) / "spu-client.log"
    route_logs(log)
    shapes = {n: tuple(t.shape) for n, t in inference_model(cfg).state_dict().items()}
    shapes = {n.removeprefix("transformer."): s for n, s in shapes.items()}
    shapes[TOKENS] = (len(ids), cfg.vocab_size)
    link = open_link(CLIENT, [hello["link"], f"{args.link_host}:{link_port}"], args.timeout)
    try:
        forward = SecureForward(CLIENT, link, settings, log)
        stages = build_stages(cfg, len(ids), settings)
        record = run_query(forward, stages, {TOKENS: one_hot(ids, cfg.vocab_size)}, shapes)
    finally:
        link.stop_link()
    next_id = max(range(len(record["logits"])), key=record["logits"].__getitem__)
    return {
        **record,
        "public": public.to_dict(),
        "fingerprint": public.fingerprint(),
        "prompt_ids": ids,
        "next_id": next_id,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mpc.spu.client", description=__doc__)
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--tokens", required=True, help="file of token ids (JSON list)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7200)
    parser.add_argument("--link-host", default="127.0.0.1", help="this client's link address")
    parser.add_argument("--link-port", type=int, help="this client's link port (default: free)")
    parser.add_argument("--expect-fingerprint")
    parser.add_argument("--expect-arch")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds any wait may last")
    parser.add_argument("--json-out", help="write the record (logits, costs) here")
    parser.add_argument("--log-dir", help="folder for SPU's log (default: beside --json-out)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        record = query(args)
    except (PeerError, SpuError) as error:
        raise UserError(str(error)) from None
    total = record["total"]
    print(
        f"client: next token id {record['next_id']}; {total['bytes'] / 1e6:.1f} MB, "
        f"{total['wall_s']:.1f} s",
        flush=True,
    )
    if args.json_out:
        atomic_write_json(Path(args.json_out), record)
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
