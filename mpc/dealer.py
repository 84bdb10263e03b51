"""The dealer: a third process that makes the Beaver triples (CrypTen's trusted third party, TTP).

    python -m mpc.dealer --host 127.0.0.1 --port 7100

The server books it for each session over its control port; the dealer then joins that session's
MPC group as rank 2 in a fresh process. It never holds weights or prompts: only random triples,
which it hands out as shares (neither party alone learns a whole triple). It must not collude with
either party: that is the trust model of a `ttp` run.

Each booking is read in its own thread (a silent peer on the port delays no one else), at most
`--max-concurrent` sessions run at once (a booking beyond gets a "dealer busy" answer), and a
session process that fails or times out ends as one log line.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sys
import threading

from models.cli import run_main
from models.errors import UserError
from mpc.optimized.mask_store import create_mask_store, sweep_mask_stores
from mpc.session.control import (
    BUSY,
    CONTROL_VERSION,
    ControlError,
    ServerBusy,
    accept_until,
    listen,
    one_line,
    recv_message,
    send_error,
    send_message,
    short_repr,
)
from mpc.session.party import run_dealer

DEFAULT_MAX_CONCURRENT = 8  # one dealer may serve several servers


def validate_booking(message: dict) -> tuple[str, int, float]:
    if message.get("version") != CONTROL_VERSION:
        raise ControlError(
            f"protocol version {short_repr(message.get('version'))}, "
            f"dealer speaks {CONTROL_VERSION}"
        )
    host, port, timeout = message.get("host"), message.get("port"), message.get("timeout_s")
    if not isinstance(host, str) or not 0 < len(host) <= 255 or not host.isprintable():
        raise ControlError("session booking needs a host and a port")
    if type(port) is not int or not 0 < port < 65536:
        raise ControlError("session booking needs a host and a port")
    if type(timeout) not in (int, float) or not 0 < timeout <= 3600:
        raise ControlError("session booking needs a timeout in (0, 3600] seconds")
    return host, port, float(timeout)


def _dealer_session(host: str, port: int, timeout: float, threads: int) -> None:
    try:
        run_dealer(host, port, timeout, threads)
    except UserError as error:
        print(f"dealer: session {host}:{port} failed: {one_line(error)}", flush=True)
    except Exception as error:  # one line, not a traceback wall, whatever CrypTen raises
        print(f"dealer: session {host}:{port} failed: {one_line(repr(error))}", flush=True)


class Dealer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.context = multiprocessing.get_context("spawn")
        self.lock = threading.Lock()  # guards the two fields below
        self.running: list = []  # session processes, reaped as they end
        self.dealt = 0

    def start_session(self, host: str, port: int, timeout: float) -> int:
        """Start one session's process unless the limit is reached; its number."""
        with self.lock:
            self.running = [p for p in self.running if p.is_alive()]  # is_alive reaps the dead
            if len(self.running) >= self.args.max_concurrent:
                raise ServerBusy(f"dealer busy: {len(self.running)} sessions running")
            process = self.context.Process(
                target=_dealer_session, args=(host, port, timeout, self.args.threads), daemon=True
            )
            process.start()
            self.running.append(process)
            self.dealt += 1
            return self.dealt

    def book(self, conn: socket.socket, peer: str) -> None:
        """Thread body: one booking, answered "ok" once its session process runs."""
        with conn:
            conn.settimeout(self.args.timeout)
            try:
                message = recv_message(conn, self.args.timeout, "session")
                host, port, timeout = validate_booking(message)
                number = self.start_session(host, port, timeout)
                send_message(conn, {"type": "ok"})
            except UserError as error:
                send_error(conn, str(error), BUSY if isinstance(error, ServerBusy) else None)
                print(f"dealer: booking from {peer} refused: {one_line(error)}", flush=True)
                return
        print(f"dealer: session {number} for {host}:{port}", flush=True)

    def finished(self) -> bool:
        with self.lock:
            return self.args.max_sessions is not None and self.dealt >= self.args.max_sessions

    def serve(self) -> int:
        listener = listen(self.args.host, self.args.port, "dealer")
        print(f"dealer: listening on {self.args.host}:{self.args.port}", flush=True)

        def book_in_thread(conn: socket.socket, peer: str) -> threading.Thread:
            thread = threading.Thread(target=self.book, args=(conn, peer), daemon=True)
            thread.start()
            return thread

        accept_until(listener, "dealer", self.finished, book_in_thread)
        for process in self.running:
            process.join()
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mpc.dealer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=7100)
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds a booking message may take"
    )
    parser.add_argument("--max-sessions", type=int, help="exit after dealing this many sessions")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=DEFAULT_MAX_CONCURRENT,
        help=f"sessions dealt at once; further bookings are refused (default "
        f"{DEFAULT_MAX_CONCURRENT})",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.max_concurrent < 1 or not args.timeout > 0:
        parser.error("--max-concurrent must be at least 1 and --timeout positive")
    sweep_mask_stores()  # weight masks left by dealers that died
    try:
        create_mask_store(os.getpid())  # private (0700 / 0600), in RAM where /dev/shm has room
        return Dealer(args).serve()
    finally:
        sweep_mask_stores(own_pid=os.getpid())


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
