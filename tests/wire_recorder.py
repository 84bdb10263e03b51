"""What a process RECEIVES and what its buffers HOLD, recorded at the lowest level CrypTen uses.

`curious_recorder` records CrypTen's communicator calls and reasons about what they mean (for a
reduce to the other party it once assumed "we only sent our share"). This module makes no such
assumption: it wraps the `torch.distributed` functions themselves (send, recv, reduce,
all_reduce, broadcast, ...) and, for every call, keeps a copy of each tensor argument before the
call (what this process put in: its own data) and after it completed (what its memory holds: a
collective such as gloo's reduce works in place on both ranks, so a non-root buffer can end up
holding part of the sum). Asynchronous calls are recorded when their work is waited for. The
parties' own TCP channel (`mpc.session.transport`), which carries the optimized profile's
openings and reveals instead of gloo, is recorded frame by frame the same way.

Events: {"kind": "wire", "fn": name, "before": [tensors], "after": [tensors]}, appended to
`curious_recorder.EVENTS` so they travel in the same transcript.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist

WIRE_FUNCTIONS = (
    "send", "recv", "isend", "irecv", "reduce", "all_reduce", "broadcast", "all_gather",
    "gather", "scatter", "reduce_scatter", "all_to_all",
)  # fmt: skip


def _tensors(values: Any) -> list[torch.Tensor]:
    """Every tensor among `values`, looking one level into lists and tuples."""
    found: list[torch.Tensor] = []
    for value in values:
        if torch.is_tensor(value):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(item for item in value if torch.is_tensor(item))
    return found


class _RecordOnWait:
    """An asynchronous call's work handle that records the buffers once the call completed."""

    def __init__(self, work: Any, record) -> None:
        self._work, self._record = work, record

    def wait(self, *args, **kwargs):
        done = self._work.wait(*args, **kwargs)
        self._record()
        return done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._work, name)


def _wrap(name: str, events: list) -> None:
    original = getattr(dist, name)

    @functools.wraps(original)
    def recording(*args, **kwargs):
        buffers = _tensors([*args, *kwargs.values()])
        before = [b.detach().clone() for b in buffers]

        def record() -> None:
            after = [b.detach().clone() for b in buffers]
            events.append({"kind": "wire", "fn": name, "before": before, "after": after})

        result = original(*args, **kwargs)
        if result is not None and hasattr(result, "wait"):
            return _RecordOnWait(result, record)
        record()
        return result

    setattr(dist, name, recording)


def _wrap_pair_channel(events: list) -> None:
    """The parties' own TCP channel (`mpc.session.transport.PairChannel`): every frame this
    process sent (its own data) and every frame it received, as the buffer it landed in."""
    from mpc.session.transport import PairChannel

    send, recv_into = PairChannel.send, PairChannel.recv_into

    @functools.wraps(send)
    def sending(self, tensor):
        mine = tensor.detach().clone()
        events.append({"kind": "wire", "fn": "channel.send", "before": [mine], "after": [mine]})
        return send(self, tensor)

    @functools.wraps(recv_into)
    def receiving(self, out):
        result = recv_into(self, out)
        after = [result.detach().clone()]
        events.append({"kind": "wire", "fn": "channel.recv", "before": [], "after": after})
        return result

    PairChannel.send, PairChannel.recv_into = sending, receiving


def install_wire_hooks(events: list) -> None:
    """Record every `torch.distributed` call and every pair-channel frame of this process."""
    for name in WIRE_FUNCTIONS:
        if hasattr(dist, name):
            _wrap(name, events)
    _wrap_pair_channel(events)
