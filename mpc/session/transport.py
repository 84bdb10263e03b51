"""One TCP connection between the two parties, carrying every opening and reveal of a session.

CrypTen talks through gloo, and gloo spends about two network round trips on each communication
round: a two-rank all_reduce runs as a reduce-scatter then an all-gather, and a send waits for the
receiver's ready-to-receive (measured here: 2.03-2.06 RTT per round on a shaped link). An opening
between two parties needs neither: each party sends its share and receives the other's. Over
this channel both parties write at once (a sender thread) while reading, so a round costs half a
round trip plus the transfer, the floor for an exchange in which both parties speak.

`install_pair_channel` swaps the channel in for CrypTen's party-to-party `all_reduce`, `send` and
`recv` of one session, through CrypTen's own logging decorator: bytes and rounds are logged
exactly as before, and the cost model is unchanged. Everything else (the dealer's group, object
broadcasts at start-up) stays on gloo. What travels is what gloo carried: shares and masked
openings, nothing else.

Frames: 8-byte little-endian payload length, then the tensor's raw bytes. The receiver knows the
shape and dtype it expects (its own tensor's); a length that differs means the parties diverged.
"""

from __future__ import annotations

import queue
import socket
import threading
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed import ReduceOp

from models.errors import UserError
from mpc.roles import SERVER, peer_of

SOCKET_BUFFER = 8 << 20  # >= the bandwidth-delay product of 1 Gbit/s x 50 ms
HEADER = 8


class ChannelError(UserError):
    """The peer closed the channel, stopped answering, or sent a frame of the wrong size."""


class PairChannel:
    """A full-duplex byte pipe to the other party: `send` queues a frame for the sender thread,
    `recv_into` fills a tensor with the next frame."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.settimeout(timeout_s)
        self.sock = sock
        self.outbox: queue.Queue = queue.Queue()
        self.failure: BaseException | None = None
        self.sender = threading.Thread(target=self._send_loop, daemon=True)
        self.sender.start()

    def _send_loop(self) -> None:
        while (frame := self.outbox.get()) is not None:
            try:
                self.sock.sendall(frame)
            except OSError as error:
                self.failure = error
                return
            finally:
                self.outbox.task_done()

    def send(self, tensor: torch.Tensor) -> None:
        """Queue the tensor's bytes (copied: the caller may reuse its buffer) for the peer."""
        payload = tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        self.outbox.put(len(payload).to_bytes(HEADER, "little") + payload)

    def flush(self) -> None:
        """Wait until every queued frame left this process."""
        self.outbox.join()
        if self.failure is not None:
            raise ChannelError(f"the peer went away ({self.failure})")

    def recv_into(self, out: torch.Tensor) -> torch.Tensor:
        """Fill the contiguous tensor `out` with the peer's next frame."""
        view = memoryview(out.view(-1).view(torch.uint8).numpy()).cast("B")
        length = int.from_bytes(self._read(HEADER, bytearray(HEADER)), "little")
        if length != len(view):
            raise ChannelError(f"the peer sent {length} bytes where {len(view)} were expected")
        self._read(length, view)
        return out

    def _read(self, size: int, into) -> Any:
        view, got = memoryview(into), 0
        while got < size:
            try:
                count = self.sock.recv_into(view[got:], size - got)
            except TimeoutError:
                raise ChannelError("the peer stopped answering (timeout)") from None
            except OSError as error:
                raise ChannelError(f"the peer went away ({error.strerror or error})") from None
            if count == 0:
                raise ChannelError("the peer went away (connection closed)")
            got += count
        return into

    def exchange(self, tensor: torch.Tensor) -> torch.Tensor:
        """Send ours and receive theirs at once: one network latency, not a round trip."""
        self.send(tensor)
        theirs = self.recv_into(torch.empty_like(tensor, memory_format=torch.contiguous_format))
        self.flush()
        return theirs

    def close(self) -> None:
        self.outbox.put(None)
        self.sender.join(timeout=5)
        self.sock.close()


def open_pair_channel(comm: Any, rank: int, host: str, timeout_s: float) -> PairChannel:
    """The server listens on an ephemeral port of the rendezvous address and tells the client
    over CrypTen's (gloo) broadcast; the client connects."""
    if rank == SERVER:
        with socket.create_server((host, 0)) as listener:
            listener.settimeout(timeout_s)
            comm.broadcast_obj(listener.getsockname()[1], SERVER)
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                raise ChannelError("the client did not open the pair channel in time") from None
    else:
        port = comm.broadcast_obj(None, SERVER)
        try:
            sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as error:
            raise ChannelError(f"cannot open the pair channel to {host}:{port} ({error})") from None
    return PairChannel(sock, timeout_s)


@dataclass(frozen=True)
class Mixed:
    """An opening of two kinds at once (the pair channel only): the first `xor` elements are
    XOR shares, the rest additive shares. gloo's collectives take one operation per call."""

    xor: int


def _combine(mine: torch.Tensor, theirs: torch.Tensor, op: Any) -> torch.Tensor:
    if isinstance(op, Mixed):
        head = mine[: op.xor] ^ theirs[: op.xor]
        return torch.cat([head, mine[op.xor :] + theirs[op.xor :]])
    if op == ReduceOp.SUM:
        return mine + theirs  # int64 wraps around: arithmetic modulo 2^64
    if op == ReduceOp.BXOR:
        return mine ^ theirs
    raise ValueError(f"the pair channel reduces by SUM or BXOR, not {op}")


def install_pair_channel(crypten: Any, channel: PairChannel, rank: int) -> None:
    """Route this session's party-to-party all_reduce, send and recv through `channel`, logged
    by CrypTen's own decorator (the function names are what it counts by)."""
    from crypten.communicator.communicator import _logging

    comm, peer = crypten.communicator.get(), peer_of(rank)

    @_logging
    def all_reduce(self, input, op=ReduceOp.SUM, batched=False):
        parts = list(input) if batched else [input]
        flat = torch.cat([p.reshape(-1) for p in parts]) if batched else input
        opened = _combine(flat, channel.exchange(flat), op)
        if not batched:
            return opened
        chunks = opened.split([p.numel() for p in parts])
        return [chunk.view_as(p) for chunk, p in zip(chunks, parts, strict=True)]

    @_logging
    def send(self, tensor, dst):
        if dst != peer:
            raise ValueError(f"the pair channel reaches rank {peer}, not {dst}")
        channel.send(tensor)
        channel.flush()

    @_logging
    def recv(self, tensor, src=None):
        if src not in (None, peer):
            raise ValueError(f"the pair channel hears rank {peer}, not {src}")
        return channel.recv_into(torch.empty_like(tensor, memory_format=torch.contiguous_format))

    for function in (all_reduce, send, recv):
        setattr(comm, function.__name__, types.MethodType(function, comm))
