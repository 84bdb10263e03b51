"""The control channel between server, client and dealer: framed JSON messages and the handshake.

Before any MPC work the server tells the client the PUBLIC facts of the model (architecture,
tokenizer, approximation settings, LayerNorm calibration constants, dealer mode) and a fingerprint
of them; the client recomputes the fingerprint and states what it wants (prompt length, tokens to
generate). Secret data never travels on this channel: weights and prompts only exist as secret
shares on the MPC channel.

Frame: 4-byte big-endian length, then that many bytes of UTF-8 JSON holding an object with "type".
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from models.errors import UserError

CONTROL_VERSION = 2  # 2: one public-model description for every backend (mpc.session.public_model)
MAX_FRAME_BYTES = 64 << 20  # the largest legitimate message is a 50K-vocabulary tokenizer (~3 MB)
MAX_ERROR_CHARS = 200  # a peer's error text is shown as one line of at most this many characters
DEFAULT_MAX_CONCURRENT = 2  # sessions a server (or dealer) runs at once unless told otherwise
BUSY = "busy"  # the "code" of an error message that means "full now, try again later"


class ControlError(UserError):
    """A peer that sent something malformed or unexpected on the control channel, or speaks
    another version of it."""


class PeerError(UserError):
    """A peer that cannot be reached, stopped answering, or went away."""


class ServerBusy(PeerError):
    """The peer runs as many sessions as it may; the same request may succeed later."""


def one_line(text: object, limit: int = MAX_ERROR_CHARS) -> str:
    """Text from a peer (or about a peer's value) as one short line: a hostile peer must not be
    able to flood a log or forge extra lines of it."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def short_repr(value: object) -> str:
    return one_line(repr(value), 60)


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    body = json.dumps(message, sort_keys=True).encode()
    try:
        sock.sendall(struct.pack(">I", len(body)) + body)
    except OSError as error:
        raise PeerError(f"peer went away while sending ({error.strerror or error})") from None


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    chunks, remaining = [], size
    while remaining:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(min(remaining, 1 << 20))
        except TimeoutError:
            raise PeerError("peer sent nothing before the timeout") from None
        except OSError as error:
            raise PeerError(f"peer connection failed ({error.strerror or error})") from None
        if not chunk:
            raise PeerError("peer closed the connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket, timeout_s: float, expect: str | None = None) -> dict:
    """One message; an "error" message from the peer becomes a ControlError with its text."""
    deadline = time.monotonic() + timeout_s
    (size,) = struct.unpack(">I", _recv_exact(sock, 4, deadline))
    if size > MAX_FRAME_BYTES:
        raise ControlError(f"peer announced a {size}-byte message (limit {MAX_FRAME_BYTES})")
    try:
        message = json.loads(_recv_exact(sock, size, deadline).decode())
    except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting, 5000-digit numbers
        raise ControlError("peer sent a message that is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ControlError("peer sent a message without a type")
    if message["type"] == "error":
        reason = one_line(message.get("message", "no reason given"))
        if message.get("code") == BUSY:
            raise ServerBusy(reason)
        raise ControlError(f"peer refused: {reason}")
    if expect is not None and message["type"] != expect:
        raise ControlError(f"expected a {expect!r} message, got {short_repr(message['type'])}")
    return message


def send_error(sock: socket.socket, text: str, code: str | None = None) -> None:
    """Tell the peer why we stop, if it still listens (it may be the reason we stop)."""
    message = {"type": "error", "message": one_line(text)}
    if code is not None:
        message["code"] = code
    try:
        send_message(sock, message)
    except PeerError:
        pass


def connect(host: str, port: int, timeout_s: float, what: str) -> socket.socket:
    """Connect, retrying refused connections until the timeout (the peer may still be starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock = socket.create_connection(
                (host, port), timeout=max(0.1, deadline - time.monotonic())
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as error:
            if time.monotonic() >= deadline:
                reason = error.strerror or str(error) or type(error).__name__
                raise PeerError(f"cannot reach the {what} at {host}:{port} ({reason})") from None
            time.sleep(0.2)


def listen(host: str, port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UserError(f"{what} cannot listen on {host}:{port} ({error.strerror})") from None
    sock.listen(16)
    return sock


ACCEPT_POLL_S = 0.2  # how often an accept loop looks whether it is finished


def accept_until(
    listener: socket.socket,
    role: str,
    finished: Callable[[], bool],
    handle: Callable[[socket.socket, str], threading.Thread | None],
) -> None:
    """Accept connections until finished(); each goes to handle(conn, peer), which answers it or
    starts (and returns) a thread for it. Then close the listener and wait for those threads."""
    listener.settimeout(ACCEPT_POLL_S)
    running: list[threading.Thread] = []
    while not finished():
        try:
            conn, (peer, *_) = listener.accept()
        except TimeoutError:
            continue
        except OSError as error:  # e.g. out of file descriptors: wait for sessions to end
            print(f"{role}: cannot accept a connection ({one_line(error)})", flush=True)
            time.sleep(1.0)
            continue
        thread = handle(conn, peer)
        if thread is not None:
            running = [t for t in running if t.is_alive()] + [thread]
    listener.close()
    for thread in running:
        thread.join()
