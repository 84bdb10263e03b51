"""The dealer: a third process that makes the Beaver triples (CrypTen's trusted third party, TTP).

    python -m mpc.dealer --host 127.0.0.1 --port 7100

The server books it for each session over its control port; the dealer then joins that session's
MPC group as rank 2 in a fresh process. It never holds weights or prompts: only random triples,
which it hands out as shares (neither party alone learns a whole triple). It must not collude with
either party: that is the trust model of a `ttp` run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys

from models.cli import UserError, run_main
from mpc.party import run_dealer
from mpc.protocol import PROTOCOL_VERSION, ProtocolError, listen, recv_message, send_message


def validate_booking(message: dict) -> tuple[str, int, float]:
    if message.get("version") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {message.get('version')!r}, dealer speaks {PROTOCOL_VERSION}"
        )
    host, port, timeout = message.get("host"), message.get("port"), message.get("timeout_s")
    if not isinstance(host, str) or type(port) is not int or not 0 < port < 65536:
        raise ProtocolError("session booking needs a host and a port")
    if not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        raise ProtocolError("session booking needs a timeout in (0, 3600] seconds")
    return host, port, float(timeout)


def _dealer_session(host: str, port: int, timeout: float, threads: int) -> None:
    try:
        run_dealer(host, port, timeout, threads)
    except UserError as error:
        print(f"dealer: session {host}:{port} failed: {error}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mpc.dealer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=7100)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a booking may take")
    parser.add_argument("--max-sessions", type=int, help="exit after dealing this many sessions")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    listener = listen(args.host, args.port, "dealer")
    print(f"dealer: listening on {args.host}:{args.port}", flush=True)
    running: list = []
    dealt = 0
    while args.max_sessions is None or dealt < args.max_sessions:
        conn, address = listener.accept()
        with conn:
            try:
                host, port, timeout = validate_booking(recv_message(conn, args.timeout, "session"))
                send_message(conn, {"type": "ok"})
            except UserError as error:
                print(f"dealer: booking from {address[0]} refused: {error}", flush=True)
                continue
        process = context.Process(target=_dealer_session, args=(host, port, timeout, args.threads))
        process.start()
        dealt += 1
        running = [p for p in running if p.is_alive()] + [process]  # is_alive reaps the rest
        print(f"dealer: session {dealt} for {host}:{port}", flush=True)
    for process in running:
        process.join()
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
