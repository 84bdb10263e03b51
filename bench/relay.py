"""The hub's delaying relay (`bench.netns`): a process that holds every packet routed into a tun
device for RTT/2 and writes it back, the delay this kernel's missing netem would give; and, for
fault tests, drops a settable fraction of them (a lossy link).

Packets arrive as the kernel's TSO segments (up to 64 KiB, IFF_VNET_HDR), so one dropped
"packet" is a burst of up to ~44 wire frames: a harsher loss than the same rate of single frames.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import os
import random
import select
import signal
import struct
import time

TUN_IF = "delay"
WAKE_EARLY_S = 300e-6
TUNSETIFF, TUNSETOFFLOAD, CLONE_NEWNET = 0x400454CA, 0x400454D0, 0x40000000
TUN_FLAGS = 0x0001 | 0x1000 | 0x4000  # IFF_TUN | IFF_NO_PI | IFF_VNET_HDR
TUN_OFFLOADS = 0x01 | 0x02 | 0x04  # TUN_F_CSUM | TSO4 | TSO6


def enter_namespace(namespace: str) -> None:
    """Move this child process into a namespace; it ignores Ctrl-C and dies with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    with open(f"/run/netns/{namespace}") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace} failed")


def relay(namespace: str, hold_s: float, loss, ready) -> None:
    """Child process in the hub: hold every packet of the tun for `hold_s`, then re-inject it;
    drop each with probability `loss.value` (a shared double the parent may change any time)."""
    enter_namespace(namespace)
    ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK 1 ns, not 50 us
    with contextlib.suppress(OSError):  # real-time priority: a steady delay while parties compute
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", TUN_IF.encode(), TUN_FLAGS))
    fcntl.ioctl(tun, TUNSETOFFLOAD, TUN_OFFLOADS)
    ready.send("ready")
    held: collections.deque = collections.deque()  # (due, packet); one delay, so FIFO order
    while True:
        wait = max(0.0, held[0][0] - time.monotonic()) if held else None
        if wait is not None and wait > WAKE_EARLY_S:  # long sleeps overshoot by up to 0.3 ms:
            wait -= WAKE_EARLY_S  # wake early, then sleep the short rest (~30 us late)
        if select.select([tun], [], [], wait)[0]:
            due = time.monotonic() + hold_s
            with contextlib.suppress(BlockingIOError):
                for _ in range(256):
                    packet = os.read(tun, 1 << 18)  # virtio header + packet, as is
                    if not (loss.value and random.random() < loss.value):
                        held.append((due, packet))
        now = time.monotonic()
        while held and held[0][0] <= now:
            with contextlib.suppress(OSError):  # no route any more: dropped, as by a router
                os.write(tun, held.popleft()[1])
