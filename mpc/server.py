"""The server: holds the model's weights and answers secure-inference queries, one after another.

    python -m mpc.server --checkpoint runs/aero.pt --port 7000 --dealer-address 127.0.0.1:7100

Per query: the handshake on the control port (public model description and fingerprint), then a
fresh MPC party process (rank 0) that secret-shares the weights and runs the forward pass with the
client (rank 1) and, in `ttp` mode, a dealer process (rank 2) started by `python -m mpc.dealer`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import sys
import tempfile
from pathlib import Path

import torch

from models.atomic import atomic_write_json
from models.checkpoint import load_checkpoint, random_checkpoint, save_checkpoint
from models.cli import UserError, add_config_args, config_from_args, run_main
from mpc.approx import ApproxConfig, add_approx_arguments, approx_from_arguments
from mpc.party import SessionSpec, run_party
from mpc.protocol import (
    PROTOCOL_VERSION,
    TRUST_LABELS,
    ProtocolError,
    PublicModel,
    connect,
    listen,
    recv_message,
    send_message,
)
from mpc.secure_model import SERVER, calibrate_layernorms, calibration_tokens, inference_model


def describe_model(checkpoint_path: str, approx: ApproxConfig, dealer: str) -> PublicModel:
    """The public description of a checkpoint, with LayerNorm scales calibrated on public text."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = inference_model(checkpoint.config, checkpoint.model_state)
    scales: list[float] = []
    cfg = checkpoint.config
    if cfg.norm == "layernorm":
        if checkpoint.tokenizer_json:
            tokens = calibration_tokens(checkpoint.tokenizer_json, cfg.block_size)
        else:  # random weights have no tokenizer; random ids exercise them just as well
            tokens = torch.randint(
                0, cfg.vocab_size, (4, cfg.block_size), generator=torch.Generator().manual_seed(0)
            )
        scales = calibrate_layernorms(model, tokens)
    return PublicModel(
        config=checkpoint.config.to_dict(),
        approx=approx.to_dict(),
        tokenizer_json=checkpoint.tokenizer_json,
        layernorm_var_scales=scales,
        dealer=dealer,
    )


def validate_request(request: dict, public: PublicModel) -> tuple[int, int, bool]:
    """(prompt length, tokens to generate, all positions) of a well-formed request."""
    block_size = public.config["block_size"]
    if request.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {request.get('version')!r}, server speaks {PROTOCOL_VERSION}"
        )
    if request.get("fingerprint") != public.fingerprint():
        raise ProtocolError("model fingerprint mismatch between server and client")
    length, new_tokens = request.get("prompt_length"), request.get("new_tokens", 1)
    all_positions = request.get("all_positions", False)
    for name, value in (("prompt_length", length), ("new_tokens", new_tokens)):
        if type(value) is not int or value < 1:
            raise ProtocolError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(all_positions, bool):
        raise ProtocolError("all_positions must be true or false")
    if length + new_tokens - 1 > block_size:
        raise ProtocolError(
            f"prompt of {length} tokens plus {new_tokens - 1} generated exceeds "
            f"the context of {block_size}"
        )
    return length, new_tokens, all_positions


def _server_party(spec: SessionSpec, checkpoint_path: str, results) -> None:
    """Child process: one session as rank 0."""
    try:
        state = load_checkpoint(checkpoint_path).model_state
        results.put(("ok", run_party(spec, SERVER, None, state).steps))
    except UserError as error:
        results.put(("error", str(error)))
    except Exception as error:  # report, never hang the parent
        results.put(("error", f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"))


def wait_for_result(process, results) -> tuple[str, object]:
    """The child's (status, payload); a child that died without reporting is an error too."""
    import queue

    while True:
        try:
            outcome = results.get(timeout=0.5)
            process.join()
            return outcome
        except queue.Empty:
            if not process.is_alive():
                try:  # a result sent just before exiting may still be in the pipe
                    return results.get(timeout=1.0)
                except queue.Empty:
                    return "error", f"the MPC party process died (exit code {process.exitcode})"


class Server:
    def __init__(self, args: argparse.Namespace, public: PublicModel) -> None:
        self.args, self.public = args, public
        self.context = multiprocessing.get_context("spawn")
        self.queries = 0

    def book_dealer(self, port: int) -> None:
        host, _, dealer_port = self.args.dealer_address.rpartition(":")
        sock = connect(host, int(dealer_port), self.args.timeout, "dealer")
        with sock:
            my_host = sock.getsockname()[0]  # an address of ours the dealer can reach
            send_message(
                sock,
                {
                    "type": "session",
                    "version": PROTOCOL_VERSION,
                    "host": my_host,
                    "port": port,
                    "timeout_s": self.args.timeout,
                },
            )
            recv_message(sock, self.args.timeout, expect="ok")

    def handle(self, conn: socket.socket) -> str:
        args, public = self.args, self.public
        send_message(
            conn,
            {
                "type": "hello",
                "version": PROTOCOL_VERSION,
                "public": public.to_dict(),
                "fingerprint": public.fingerprint(),
                "mpc_port": args.mpc_port,
                "trust": TRUST_LABELS[public.dealer],
            },
        )
        request = recv_message(conn, args.timeout, expect="request")
        try:
            length, new_tokens, all_positions = validate_request(request, public)
        except ProtocolError as error:
            send_message(conn, {"type": "error", "message": str(error)})
            raise
        if public.dealer == "ttp":
            self.book_dealer(args.mpc_port)
        send_message(conn, {"type": "accept", "mpc_port": args.mpc_port})
        spec = SessionSpec(
            args.host,
            args.mpc_port,
            public.dealer,
            args.timeout,
            public,
            length,
            new_tokens,
            all_positions,
            args.threads,
        )
        results = self.context.Queue()
        party = self.context.Process(target=_server_party, args=(spec, args.checkpoint, results))
        party.start()
        status, payload = wait_for_result(party, results)
        if status != "ok":
            raise UserError(payload)
        self.queries += 1
        if args.measure_dir:
            record = {
                "party": "server",
                "query": self.queries,
                "arch": public.config["arch"],
                "dealer": public.dealer,
                "approx": public.approx,
                "steps": payload,
            }
            atomic_write_json(Path(args.measure_dir) / f"server-{self.queries}.json", record)
        total = sum(step["bytes"] for step in payload)
        wall = sum(step["wall_s"] for step in payload)
        return f"{length}-token prompt, {new_tokens} token(s), {total / 1e6:.1f} MB, {wall:.2f} s"

    def serve(self) -> int:
        listener = listen(self.args.host, self.args.port, "server")
        print(
            f"server: {self.public.config['arch']} (fingerprint {self.public.fingerprint()[:12]}) "
            f"on {self.args.host}:{self.args.port}, dealer {self.public.dealer}: "
            f"{TRUST_LABELS[self.public.dealer]}",
            flush=True,
        )
        served = 0
        while self.args.max_queries is None or served < self.args.max_queries:
            conn, address = listener.accept()
            with conn:
                try:
                    summary = self.handle(conn)
                    served += 1
                    print(f"server: query {served} from {address[0]}: {summary}", flush=True)
                except UserError as error:
                    print(f"server: query from {address[0]} failed: {error}", flush=True)
        listener.close()
        return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mpc.server", description=__doc__.split("\n")[0]
    )
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="trained checkpoint to serve")
    weights.add_argument(
        "--random-arch",
        metavar="ARCH",
        help="serve random weights of ARCH (cost runs; no tokenizer)",
    )
    add_config_args(parser, arch_required=False)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=7000, help="control port")
    parser.add_argument("--mpc-port", type=int, help="MPC rendezvous port (default: port + 1)")
    parser.add_argument("--dealer", choices=("ttp", "tfp"), default="ttp")
    parser.add_argument("--dealer-address", default="127.0.0.1:7100", help="HOST:PORT (ttp)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds any wait may last")
    parser.add_argument("--max-queries", type=int, help="exit after this many answered queries")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the party")
    parser.add_argument("--measure-dir", help="write each query's per-operation costs here")
    add_approx_arguments(parser)
    args = parser.parse_args(argv)
    args.mpc_port = args.mpc_port or args.port + 1
    return args


def main(argv: list[str] | None = None) -> int:
    from mpc.spu import spu_dispatch  # --backend spu-semi2k|spu-cheetah: mpc.spu.server

    argv, spu_exit = spu_dispatch("server", argv)
    if spu_exit is not None:
        return spu_exit
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aero-pi-server-") as scratch:
        if args.random_arch:
            cfg = config_from_args(args, arch=args.random_arch)
            args.checkpoint = str(Path(scratch) / "random.pt")
            save_checkpoint(args.checkpoint, random_checkpoint(cfg))
            print(
                f"server: serving RANDOM weights of {cfg.arch} ({args.preset}): costs are "
                "real, outputs are meaningless",
                flush=True,
            )
        if not Path(args.checkpoint).is_file():
            raise UserError(f"no checkpoint at {args.checkpoint}")
        public = describe_model(args.checkpoint, approx_from_arguments(args), args.dealer)
        return Server(args, public).serve()


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
