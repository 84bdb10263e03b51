"""The dealer's material delivered before the prompt is shared: an offline phase, then an online
phase without a single dealer round trip.

With CrypTen's TTP dealer only the server (rank 0) talks to the dealer during a query: for every
Beaver triple, comparison mask or weight-mask pair it sends a request and waits for its share
(three messages, about four network round trips each on a WAN, and the parties wait with it).
The client never does: its shares come from a generator the dealer seeded at start-up. Nothing in
those requests depends on the prompt or the weights' values: which functions are called, on which
shapes, is fixed by the public model, the settings and the prompt length (CrypTen's protocols are
data-oblivious). So:

* before the prompt is shared, the server rehearses the query alone (`rehearse`): the forward
  pass runs on dummy shares with the communicator silenced and every dealer request answered by a
  zero tensor of the right shape, which records the requests in order (a `Plan`); every random
  generator is put back as it was, so nothing the real query draws changes;
* one `prepare` request carries the whole plan: the dealer runs the requests in the same order
  (its generators advance exactly as they would online) and returns every result in one message;
* online, each request is answered from that material, checked against the plan (a request that
  differs ends the session with one line: the parties' shares would no longer match).

Security: unchanged. The dealer sees the same requests as before, only earlier and all at once;
the server receives the same shares, only earlier.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.distributed import ReduceOp

from models.errors import UserError
from mpc.optimized.beaver import result_size

PREPARE = "prepare"  # the dealer's request that answers a whole plan at once


class PlanMismatch(UserError):
    """An online dealer request that the offline plan did not foresee."""


@dataclass
class Plan:
    """The server's dealer requests of one query, in order, with each result's shape."""

    requests: list[tuple[str, str | None, tuple, dict]] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def elements(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes)


# The shape of each dealer request's result, computed from its arguments (the rehearsal asks no
# one). `DealerLink.result_shapes` adds the weight masks' "fixed_mask".
RESULT_SHAPES: dict[str, Callable[..., tuple[int, ...]]] = {
    "additive": lambda size0, size1, op, *args, **kwargs: result_size(
        op, size0, size1, *args, **kwargs
    ),
    "square": lambda size: size,
    "binary": lambda size0, size1: torch.broadcast_shapes(size0, size1),
    "wraps": lambda size: size,
    "B2A": lambda size: size,
    "products": lambda size, subsets: (len(subsets), *size[1:]),
}


class DealerLink:
    """Rank 0's side: wraps `TTPClient.ttp_request` to record a plan by rehearsal, or to answer
    from material prepared offline."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.online = client.ttp_request
        self.result_shapes = dict(RESULT_SHAPES)
        self.recording: Plan | None = None
        self.material: deque = deque()
        self.plan: Plan | None = None
        self.position = 0
        client.ttp_request = self.request

    def request(self, function: str, device: Any, *args, **kwargs) -> torch.Tensor:
        if self.plan is not None:
            return self._answer(function, device, args, kwargs)
        if self.recording is None:
            return self.online(function, device, *args, **kwargs)
        shape = tuple(self.result_shapes[function](*args, **kwargs))
        device = None if device is None else str(device)
        self.recording.requests.append((function, device, args, kwargs))
        self.recording.shapes.append(shape)
        return torch.zeros(shape, dtype=torch.long)

    def _answer(self, function, device, args, kwargs) -> torch.Tensor:
        expected = self.plan.requests[self.position] if self.material else None
        device = None if device is None else str(device)
        if expected != (function, device, args, kwargs):
            raise PlanMismatch(
                f"dealer request {self.position + 1} ({function}) was not in the offline plan: "
                "the material prepared for this prompt length does not fit"
            )
        self.position += 1
        return self.material.popleft()

    def prepare(self, plan: Plan) -> dict[str, float]:
        """The offline phase: the whole plan's results in one dealer request. Returns its cost
        as rank 0 logs it (bytes, rounds) and its seconds."""
        from crypten import communicator

        comm = communicator.get()
        before = comm.get_communication_stats()
        started = time.perf_counter()
        flat = self.online(PREPARE, None, plan.requests)
        sizes = [int(torch.Size(s).numel()) for s in plan.shapes]
        if flat.numel() != sum(sizes):
            raise PlanMismatch(f"the dealer prepared {flat.numel()} elements, not {sum(sizes)}")
        parts = flat.split(sizes)
        self.material = deque(p.view(s) for p, s in zip(parts, plan.shapes, strict=True))
        self.plan, self.position = plan, 0
        after = comm.get_communication_stats()
        return {
            "bytes": float(after["bytes"] - before["bytes"]),
            "rounds": float(after["rounds"] - before["rounds"]),
            "wall_s": time.perf_counter() - started,
            "requests": float(len(plan.requests)),
            "elements": float(flat.numel()),
        }

    def finish(self) -> None:
        """After the query: every prepared result must have been used."""
        if self.plan is not None and self.material:
            raise PlanMismatch(f"{len(self.material)} prepared dealer results were never asked for")


def answer_plan(dealer: Any, requests: list) -> torch.Tensor:
    """The dealer's side of `prepare`: run every request in order, as the online loop would
    (same functions, same device setting, so the same generator draws), flattened into one."""
    results = []
    for function, device, args, kwargs in requests:
        if function == PREPARE:
            raise ValueError("a plan cannot contain a prepare request")
        dealer.device = device
        results.append(getattr(dealer, function)(*args, **kwargs).reshape(-1))
    return torch.cat(results) if results else torch.empty(0, dtype=torch.long)


def prepare_offline(
    crypten: Any, link: DealerLink, forward: Callable[[int], Any], lengths: list[int]
) -> dict[str, float]:
    """The offline phase of one query on rank 0: rehearse `forward(length)` for each step's
    prompt length, then fetch the plan's material in one dealer request. Its cost (bytes and
    rounds rank 0 logged, seconds of rehearsal and of the transfer)."""
    started = time.perf_counter()
    with rehearsal(crypten, link) as plan:
        for length in lengths:
            forward(length)
    rehearsed = time.perf_counter() - started
    return {**link.prepare(plan), "rehearsal_s": rehearsed}


FAKED = ("all_reduce", "send", "recv")


def _silent_all_reduce(input, op=ReduceOp.SUM, batched=False):
    return [x.clone() for x in input] if batched else input.clone()


@contextlib.contextmanager
def rehearsal(crypten: Any, link: DealerLink) -> Iterator[Plan]:
    """Within the block, rank 0 computes alone: openings return its own share, dealer requests
    return zeros of their result's shape and are recorded into the yielded Plan. Afterwards
    every random generator (CrypTen's and the dealer-seeded one) is back where it was and the
    communicator is the real one again."""
    comm = crypten.communicator.get()
    generators = [g for by_device in crypten.generators.values() for g in by_device.values()]
    generators += [g for g in (link.client.generator,) if g is not None]
    states = [g.get_state() for g in generators]
    saved = {name: comm.__dict__.get(name) for name in FAKED}
    comm.all_reduce = _silent_all_reduce
    comm.send = lambda tensor, dst: None
    comm.recv = lambda tensor, src=None: torch.zeros_like(tensor)
    link.recording = Plan()
    try:
        yield link.recording
    finally:
        link.recording = None
        for name, method in saved.items():
            if method is None:
                comm.__dict__.pop(name, None)
            else:
                setattr(comm, name, method)
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)
