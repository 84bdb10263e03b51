"""The SPU server: holds the weights, serves secure forward passes to clients.

    python -m mpc.server --backend spu-cheetah --checkpoint runs/demo-aero.pt --port 7200
    python -m mpc.spu.server --backend spu-semi2k --random-arch aero --preset small --port 7200

Per query: a client connects to the control port and asks for a prompt length, giving the address
of its own link endpoint; the server answers with the public model description (architecture,
tokenizer, SPU settings) and its fingerprint; then both open a brpc link (the server listens on
--link-port, default port + 1), compile the same stages, check they compiled the same program, and
run them. The weights never leave the server (colocated private shares); the logits are revealed to
the client only. With --measure-dir, each query's costs go to server-N.json there.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

from models.atomic import atomic_write_json
from models.checkpoint import load_checkpoint, random_checkpoint
from models.cli import add_config_args, config_from_args, run_main
from models.errors import UserError
from mpc.session.control import (
    ControlError,
    PeerError,
    accept_until,
    listen,
    one_line,
    recv_message,
    send_message,
)
from mpc.session.public_model import PublicModel
from mpc.spu import BACKENDS
from mpc.spu.settings import SpuSettings, add_settings_arguments, settings_from_arguments


def describe(args: argparse.Namespace, settings: SpuSettings):
    """(public description, plain weights) of the model this server serves."""
    from mpc.spu.jax_model import export_weights

    if args.checkpoint:
        checkpoint, label = load_checkpoint(args.checkpoint), Path(args.checkpoint).name
    else:
        checkpoint, label = random_checkpoint(config_from_args(args, args.random_arch)), "random"
    public = PublicModel(
        backend=settings.backend,
        config=checkpoint.config.to_dict(),
        settings=settings.to_dict(),
        tokenizer_json=checkpoint.tokenizer_json,
        dealer=settings.dealer,
        weights=label,
    )
    return public, export_weights(checkpoint.config, checkpoint.model_state)


def serve_query(conn: socket.socket, args, public: dict, weights: dict, log: Path) -> dict:
    from models.config import ModelConfig
    from mpc.roles import SERVER
    from mpc.spu.jax_model import TOKENS, build_stages
    from mpc.spu.session import SecureForward, open_link, run_query

    cfg = ModelConfig.from_dict(public.config)
    request = recv_message(conn, args.timeout, expect="request")
    seq_len = request.get("seq_len")
    if not isinstance(seq_len, int) or not 1 <= seq_len <= cfg.block_size:
        raise ControlError(f"prompt length {one_line(seq_len)} not in [1, {cfg.block_size}]")
    link_address = f"{args.host}:{args.link_port or args.port + 1}"
    send_message(
        conn,
        {
            "type": "hello",
            "public": public.to_dict(),
            "fingerprint": public.fingerprint(),
            "link": link_address,
        },
    )
    conn.close()
    link = open_link(SERVER, [link_address, str(request["link"])], args.timeout)
    try:
        settings = SpuSettings.from_dict(public.settings)
        forward = SecureForward(SERVER, link, settings, log)
        shapes = {n: w.shape for n, w in weights.items()}
        shapes[TOKENS] = (seq_len, cfg.vocab_size)
        return run_query(forward, build_stages(cfg, seq_len, settings), weights, shapes)
    finally:
        link.stop_link()


def serve(args: argparse.Namespace) -> int:
    from mpc.spu.session import route_logs

    settings = settings_from_arguments(args.backend, args)
    public, weights = describe(args, settings)
    folder = Path(args.measure_dir or tempfile.mkdtemp(prefix="aero-pi-spu-server-"))
    folder.mkdir(parents=True, exist_ok=True)
    route_logs(folder / "spu-server.log")
    listener = listen(args.host, args.port, "server")
    print(
        f"SPU server ({settings.backend}, {public.config['arch']}, weights "
        f"{public.weights}) on {args.host}:{args.port}; {public.trust}; "
        f"fingerprint {public.fingerprint()[:16]}",
        flush=True,
    )
    served = 0

    def answer(conn: socket.socket, peer: str) -> None:
        """One query at a time: the SPU link port is the server's one (no thread returned)."""
        nonlocal served
        served += 1
        try:
            record = serve_query(conn, args, public, weights, folder / "spu-server.log")
        except (UserError, RuntimeError) as error:
            print(f"query {served} from {peer} failed: {one_line(error)}", flush=True)
            return
        finally:
            conn.close()
        total = record["total"]
        print(f"query {served}: {total['bytes'] / 1e6:.1f} MB, {total['wall_s']:.1f} s", flush=True)
        if args.measure_dir:
            record = {**record, "public": public.to_dict()}
            atomic_write_json(folder / f"server-{served}.json", record)

    accept_until(
        listener, "SPU server", lambda: bool(args.queries) and served >= args.queries, answer
    )
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mpc.spu.server", description=__doc__)
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--checkpoint", help="trained checkpoint (or --random-arch)")
    parser.add_argument("--random-arch", help="serve random weights of this architecture")
    add_config_args(parser, arch_required=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7200, help="control port")
    parser.add_argument("--link-port", type=int, help="brpc link port (default port + 1)")
    parser.add_argument("--queries", type=int, default=0, help="stop after N queries (0: never)")
    parser.add_argument("--measure-dir", help="write each query's costs as server-N.json here")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds any wait may last")
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    if bool(args.checkpoint) == bool(args.random_arch):
        parser.error("give either --checkpoint or --random-arch")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import spu  # noqa: F401
    except ImportError:
        raise UserError('SPU is not installed: pip install -e ".[spu]" (see README)') from None
    try:
        return serve(args)
    except PeerError as error:
        raise UserError(str(error)) from None


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
