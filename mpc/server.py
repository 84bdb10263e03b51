"""The server: holds the model's weights and answers secure-inference queries from many clients.

    python -m mpc.server --checkpoint runs/aero.pt --port 7000 --dealer-address 127.0.0.1:7100

Per query: the handshake on the control port (public model description and fingerprint), then a
fresh MPC party process (rank 0) that secret-shares the weights and runs the forward pass with the
client (rank 1) and, in `ttp` mode, a dealer process (rank 2) started by `python -m mpc.dealer`.
Each client is served in its own thread with its own party process and MPC port; at most
`--max-concurrent` at once, and a client beyond that gets a one-line "server busy" answer at once.
A failed session (bad input, a silent or vanished peer) ends as one log line; the server goes on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import sys
import tempfile
import threading
from pathlib import Path

from models.atomic import atomic_write_json
from models.checkpoint import load_checkpoint, random_checkpoint, save_checkpoint
from models.cli import add_config_args, config_from_args, run_main
from models.errors import UserError
from mpc.approx import add_approx_arguments, approx_from_arguments
from mpc.optimized.weight_masks import MaskSecret
from mpc.session.control import (
    BUSY,
    CONTROL_VERSION,
    DEFAULT_MAX_CONCURRENT,
    ControlError,
    ServerBusy,
    accept_until,
    connect,
    listen,
    one_line,
    recv_message,
    send_error,
    send_message,
    short_repr,
)
from mpc.session.party import SessionSpec, run_party
from mpc.session.public_model import PublicModel
from mpc.session.secure_model import SERVER, describe_model

REQUEST_FIELDS = {"type", "version", "fingerprint", "prompt_length", "new_tokens", "all_positions"}


def validate_request(request: dict, public: PublicModel) -> tuple[int, int, bool]:
    """(prompt length, tokens to generate, all positions) of a well-formed request."""
    block_size = public.config["block_size"]
    if request.get("version") != CONTROL_VERSION:
        raise ControlError(
            f"protocol version {short_repr(request.get('version'))}, "
            f"server speaks {CONTROL_VERSION}"
        )
    if unknown := sorted(set(request) - REQUEST_FIELDS):
        raise ControlError(f"unknown request field(s) {short_repr(unknown)}")
    if request.get("fingerprint") != public.fingerprint():
        raise ControlError("model fingerprint mismatch between server and client")
    length, new_tokens = request.get("prompt_length"), request.get("new_tokens", 1)
    all_positions = request.get("all_positions", False)
    for name, value in (("prompt_length", length), ("new_tokens", new_tokens)):
        if type(value) is not int or value < 1:
            raise ControlError(f"{name} must be a positive integer, got {short_repr(value)}")
    if not isinstance(all_positions, bool):
        raise ControlError("all_positions must be true or false")
    if length + new_tokens - 1 > block_size:
        raise ControlError(
            f"prompt of {length} tokens plus {new_tokens - 1} generated exceeds "
            f"the context of {block_size}"
        )
    return length, new_tokens, all_positions


def _server_party(
    spec: SessionSpec, checkpoint_path: str, results, mask_secret: MaskSecret | None = None
) -> None:
    """Child process: one session as rank 0; reports ("ok", steps) or ("error", line) on the pipe
    `results`. The first step also carries the session's weight-mask set-up cost."""
    try:
        state = load_checkpoint(checkpoint_path).model_state
        outcome = run_party(spec, SERVER, None, state, mask_secret=mask_secret)
        if outcome.steps:
            outcome.steps[0]["mask_setup"] = outcome.setup
            outcome.steps[0]["offline"] = outcome.offline
        results.send(("ok", outcome.steps))
    except UserError as error:
        results.send(("error", str(error)))
    except Exception as error:  # report, never hang the parent
        results.send(("error", f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"))


def wait_for_result(process, results) -> tuple[str, object]:
    """The child's (status, payload); a child that died without reporting is an error too.
    Every wait inside the child ends with its session timeout, so this one ends too."""
    try:
        return results.recv()
    except EOFError:  # the parent closed its writing end: EOF means the child is gone
        process.join(5)
        return "error", f"the MPC party process died (exit code {process.exitcode})"


def stop_process(process) -> None:
    process.join(5)
    if process.is_alive():  # reported but stuck in teardown: it holds the session's MPC port
        process.kill()
        process.join()


class PortPool:
    """The MPC rendezvous ports of concurrent sessions: one per session, `size` at most, so the
    pool is also the session limit. The lowest free port first: a server answering one client at
    a time always uses `--mpc-port`, the one port a firewall (or compose file) must open then."""

    def __init__(self, base: int, size: int) -> None:
        self.size = size
        self.free = set(range(base, base + size))
        self.lock = threading.Lock()

    def take(self) -> int | None:
        with self.lock:
            if not self.free:
                return None
            port = min(self.free)
            self.free.remove(port)
            return port

    def give_back(self, port: int) -> None:
        with self.lock:
            self.free.add(port)


class Server:
    def __init__(self, args: argparse.Namespace, public: PublicModel) -> None:
        self.args, self.public = args, public
        self.fingerprint = public.fingerprint()
        self.mask_secret = MaskSecret.fresh()  # weight masks of this loaded model (optimized)
        self.context = multiprocessing.get_context("spawn")
        self.ports = PortPool(args.mpc_port, args.max_concurrent)
        self.lock = threading.Lock()  # guards the counter below
        self.queries = 0  # answered queries; also numbers the --measure-dir records

    def book_dealer(self, port: int) -> None:
        host, _, dealer_port = self.args.dealer_address.rpartition(":")
        sock = connect(host, int(dealer_port), self.args.timeout, "dealer")
        with sock:
            my_host = sock.getsockname()[0]  # an address of ours the dealer can reach
            send_message(
                sock,
                {
                    "type": "session",
                    "version": CONTROL_VERSION,
                    "host": my_host,
                    "port": port,
                    "timeout_s": self.args.timeout,
                },
            )
            recv_message(sock, self.args.timeout, expect="ok")

    def handshake(self, conn: socket.socket, port: int) -> SessionSpec:
        """Hello, request, dealer booking, accept; any refusal is also sent to the client."""
        args, public = self.args, self.public
        try:
            send_message(
                conn,
                {
                    "type": "hello",
                    "version": CONTROL_VERSION,
                    "public": public.to_dict(),
                    "fingerprint": self.fingerprint,
                    "trust": public.trust,
                },
            )
            request = recv_message(conn, args.timeout, expect="request")
            length, new_tokens, all_positions = validate_request(request, public)
            if public.dealer == "ttp":
                self.book_dealer(port)
        except UserError as error:  # a busy dealer makes a busy server: the client may retry
            send_error(conn, str(error), BUSY if isinstance(error, ServerBusy) else None)
            raise
        send_message(conn, {"type": "accept", "mpc_port": port})
        return SessionSpec(
            args.host,
            port,
            public.dealer,
            args.timeout,
            public,
            length,
            new_tokens,
            all_positions,
            args.threads,
        )

    def run_party_process(self, spec: SessionSpec) -> list[dict]:
        """Rank 0 of one session in a fresh process: fresh randomness, nothing kept from the last
        session; the per-forward cost records it reports."""
        results, writer = self.context.Pipe(duplex=False)
        party = self.context.Process(
            target=_server_party,
            args=(spec, self.args.checkpoint, writer, self.mask_secret),
            daemon=True,
        )
        party.start()
        writer.close()  # the child now holds the only writing end
        try:
            status, payload = wait_for_result(party, results)
        finally:
            results.close()
            stop_process(party)
        if status != "ok":
            raise UserError(payload)
        return payload

    def handle(self, conn: socket.socket, port: int) -> tuple[int, str]:
        """One query on its control connection and MPC `port`: its number and a summary."""
        spec = self.handshake(conn, port)
        steps = self.run_party_process(spec)
        with self.lock:
            self.queries += 1
            number = self.queries
        if self.args.measure_dir:
            record = {
                "party": "server",
                "query": number,
                "arch": self.public.config["arch"],
                "dealer": self.public.dealer,
                "approx": self.public.settings,
                "steps": steps,
            }
            atomic_write_json(Path(self.args.measure_dir) / f"server-{number}.json", record)
        total = sum(step["bytes"] for step in steps)
        wall = sum(step["wall_s"] for step in steps)
        return number, (
            f"{spec.prompt_length}-token prompt, {spec.new_tokens} token(s), "
            f"{total / 1e6:.1f} MB, {wall:.2f} s"
        )

    def session(self, conn: socket.socket, peer: str, port: int) -> None:
        """Thread body: one client from connect to close. Whatever the client does, it ends here
        as one log line, and the server goes on."""
        with conn:
            conn.settimeout(self.args.timeout)  # sends to a peer that never reads end too
            try:
                number, summary = self.handle(conn, port)
            except UserError as error:
                print(f"server: query from {peer} failed: {one_line(error)}", flush=True)
                return
            except Exception as error:  # a bug must cost one session, not the server
                text = one_line(f"{type(error).__name__}: {error}")
                print(f"server: query from {peer} failed unexpectedly: {text}", flush=True)
                return
            finally:
                # Before the close: a client that saw the end of its session finds the slot free.
                self.ports.give_back(port)
        print(f"server: query {number} from {peer}: {summary}", flush=True)

    def refuse_busy(self, conn: socket.socket, peer: str) -> None:
        with conn:
            conn.settimeout(1.0)
            limit = self.ports.size
            send_error(conn, f"server busy: {limit} sessions running; try again later", BUSY)
        print(f"server: refused {peer}: {limit} sessions running", flush=True)

    def finished(self) -> bool:
        with self.lock:
            return self.args.max_queries is not None and self.queries >= self.args.max_queries

    def serve(self) -> int:
        listener = listen(self.args.host, self.args.port, "server")
        last_port = self.args.mpc_port + self.args.max_concurrent - 1
        print(
            f"server: {self.public.config['arch']} (fingerprint {self.fingerprint[:12]}) "
            f"on {self.args.host}:{self.args.port}, MPC ports {self.args.mpc_port}-{last_port}, "
            f"at most {self.args.max_concurrent} sessions at once, dealer {self.public.dealer}: "
            f"{self.public.trust}",
            flush=True,
        )

        def start_session(conn: socket.socket, peer: str) -> threading.Thread | None:
            port = self.ports.take()
            if port is None:
                self.refuse_busy(conn, peer)
                return None
            thread = threading.Thread(target=self.session, args=(conn, peer, port), daemon=True)
            thread.start()
            return thread

        # --max-queries reached: the sessions in flight finish before serve returns
        accept_until(listener, "server", self.finished, start_session)
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the --random-arch weights")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=7000, help="control port")
    parser.add_argument(
        "--mpc-port",
        type=int,
        help="first MPC rendezvous port; sessions use MPC-PORT .. MPC-PORT + MAX_CONCURRENT - 1 "
        "(default: port + 1)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=DEFAULT_MAX_CONCURRENT,
        help="sessions served at once; further clients get a 'server busy' answer "
        f"(default {DEFAULT_MAX_CONCURRENT})",
    )
    parser.add_argument("--dealer", choices=("ttp", "tfp"), default="ttp")
    parser.add_argument("--dealer-address", default="127.0.0.1:7100", help="HOST:PORT (ttp)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds any wait may last (handshake, dealer booking, rendezvous, each collective)",
    )
    parser.add_argument(
        "--max-queries",
        type=int,
        help="exit after this many answered queries (and the sessions then in flight)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the party")
    parser.add_argument("--measure-dir", help="write each query's per-operation costs here")
    add_approx_arguments(parser)
    args = parser.parse_args(argv)
    args.mpc_port = args.mpc_port or args.port + 1
    if args.max_concurrent < 1:
        parser.error("--max-concurrent must be at least 1")
    if not 0 < args.timeout <= 3600:
        parser.error("--timeout must lie in (0, 3600] seconds (the dealer's limit)")
    if args.mpc_port + args.max_concurrent > 65536:
        parser.error("the MPC ports run past 65535: lower --mpc-port or --max-concurrent")
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
            save_checkpoint(args.checkpoint, random_checkpoint(cfg, args.seed))
            print(
                f"server: serving RANDOM weights of {cfg.arch} ({args.preset}): costs are "
                "real, outputs are meaningless",
                flush=True,
            )
        if not Path(args.checkpoint).is_file():
            raise UserError(f"no checkpoint at {args.checkpoint}")
        label = f"random seed {args.seed}" if args.random_arch else ""
        public = describe_model(args.checkpoint, approx_from_arguments(args), args.dealer, label)
        return Server(args, public).serve()


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
