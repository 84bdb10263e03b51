"""What keeps a session's failures short and bounded: every wait ends after the session timeout,
a vanished peer is one clear line, and gloo's native noise stays out of the user's terminal.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
import threading
from datetime import timedelta

from models.cli import UserError
from mpc.session.control import PeerError
from mpc.session.transport import ChannelError

WATCHDOG_GRACE_S = 5.0
_user_stderr: int | None = None  # the real stderr while native_stderr_to_file holds fd 2


@contextlib.contextmanager
def native_stderr_to_file(prefix: str):
    """gloo's C++ transport writes its connection retries straight to fd 2, several lines each,
    but a client's failure must read as one line. During the session fd 2 goes to a temporary
    file; it is kept only if the session fails with something in it, and its path is added to
    the error (a UserError's message)."""
    global _user_stderr
    handle, path = tempfile.mkstemp(prefix=prefix, suffix=".log")
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(handle, 2)
    os.close(handle)
    _user_stderr, failed = saved, True
    try:
        yield path
        failed = False
    except UserError as error:
        sys.stderr.flush()
        if os.path.getsize(path):
            error.args = (f"{error} (transport log: {path})",)
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        _user_stderr = None
        if not failed or not os.path.getsize(path):
            os.unlink(path)


PEER_EXIT_CODE = 2  # what `models.cli.run_main` returns for a PeerError


def start_watchdog(seconds: float, doing: str) -> threading.Timer:
    """gloo retries its pair connections to a peer that vanished mid-rendezvous several times
    before its own timeout applies (seen: > 2.5x the timeout). A start-up that outlives
    `seconds` (+ grace) ends this process with one line instead; cancel the timer when done."""

    def expire() -> None:
        line = (
            f"error: MPC session failed while {doing}: no progress for {seconds:.0f} s "
            "(the peer went away)\n"
        )
        os.write(_user_stderr if _user_stderr is not None else 2, line.encode())
        os._exit(PEER_EXIT_CODE)

    timer = threading.Timer(seconds + WATCHDOG_GRACE_S, expire)
    timer.daemon = True
    timer.start()
    return timer


@contextlib.contextmanager
def watchdog(seconds: float, doing: str):
    timer = start_watchdog(seconds, doing)
    try:
        yield
    finally:
        timer.cancel()


@contextlib.contextmanager
def distributed_timeout(seconds: float):
    """CrypTen creates its process groups with torch's 30-minute default; every wait of a session
    (rendezvous and each collective) must instead end after `seconds`."""
    import torch.distributed as dist

    originals = dist.init_process_group, dist.new_group
    timeout = timedelta(seconds=seconds)
    dist.init_process_group = functools.partial(originals[0], timeout=timeout)
    dist.new_group = functools.partial(originals[1], timeout=timeout)
    try:
        yield
    finally:
        dist.init_process_group, dist.new_group = originals


@contextlib.contextmanager
def translate_peer_errors(doing: str):
    """gloo reports a vanished or silent peer as RuntimeError, the pair channel as ChannelError;
    make either one clear PeerError."""
    try:
        yield
    except ChannelError as error:
        raise PeerError(f"MPC session failed while {doing}: {error}") from None
    except RuntimeError as error:
        text = " ".join(str(error).split())
        if "imed out" in text or "timeout" in text.lower():
            reason = "the peer stopped answering (timeout)"
        elif "closed" in text.lower() or "reset" in text.lower() or "Broken pipe" in text:
            reason = "the peer went away"
        elif "ddress already in use" in text:
            reason = "the MPC port is in use"
        else:
            reason = text[:160]
        raise PeerError(f"MPC session failed while {doing}: {reason}") from None
