"""Recording hooks for a curious (semi-honest) party: it follows the protocol to the letter and
keeps everything it legitimately holds, so a test can later try to learn the other party's secret.

What one party's transcript holds, in the order things happened:
- "comm": every message this party RECEIVED through CrypTen's communicator: for a two-party sum
  (all_reduce / reduce to us) the other party's share `opened - sent` (int64 wrap-around), for an
  XOR reduction `opened ^ sent`; the opened value itself; tensors and objects that a broadcast,
  recv, irecv, scatter, gather or all_gather delivered from another rank (the dealer included).
- "triple": the output of every call to the tuple provider (TFP or TTP): this party's own shares,
  and every ring element the provider module drew in plaintext during the call (in `tfp` mode party
  0 draws the whole triple a, b; in `ttp` mode each party draws only its own shares from the seed
  it got from the dealer).
- "cryptensor": this party's own share of every CrypTensor created with a `src` (the client's
  one-hot prompt, the server's weights).
- "wire": every low-level `torch.distributed` call with its buffers before and after
  (`tests.wire_recorder`): what the process received and what its memory holds, assuming nothing.

Installed by `tests.curious_server` / `tests.curious_client` at import time; the transcript of a
session goes to `torch.save` at the path in `CURIOUS_TRANSCRIPT` when the session ends.
"""

from __future__ import annotations

import functools
import inspect
import os
import types
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.distributed import ReduceOp

from mpc.compat import import_crypten
from tests.wire_recorder import install_wire_hooks

EVENTS: list[dict[str, Any]] = []
_draws: list[torch.Tensor] | None = None  # plaintext ring elements of the provider call under way
_installed = False

PROVIDER_METHODS = (
    "generate_additive_triple",
    "square",
    "generate_binary_triple",
    "wrap_rng",
    "B2A_rng",
)
RANDOM_DRAWS = ("generate_random_ring_element", "generate_kbit_random_tensor")


def _plain(obj: Any) -> Any:
    """A copy that `torch.load(weights_only=True)` reads back: tensors, numbers, strings, lists."""
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, list | tuple):  # torch.Size included
        return [_plain(item) for item in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return repr(obj)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _other_share(sent: torch.Tensor, opened: torch.Tensor, op: Any) -> torch.Tensor:
    """What the other party contributed to a two-party reduction (exact ring arithmetic)."""
    return opened ^ sent if op == ReduceOp.BXOR else opened - sent


def _reduction(call: dict, result: Any, rank: int, dst: int | None) -> dict:
    sent = [_plain(t) for t in _as_list(call["input"])]
    # A reduce towards the other party: this view assumes we only sent our share. What gloo
    # really left in our buffer is recorded one level down (tests.wire_recorder): that is how
    # the old reveal's leak (half the logits held by the server) was found.
    if dst is not None and dst != rank:
        return {"sent": sent, "received": [], "opened": []}
    opened = [_plain(t) for t in _as_list(result)]
    received = [_other_share(s, o, call["op"]) for s, o in zip(sent, opened, strict=True)]
    return {"sent": sent, "received": received, "opened": opened, "op": str(call["op"])}


def _from_others(values: list, rank: int) -> list:
    return [_plain(value) for index, value in enumerate(values) if index != rank]


def _received(name: str, call: dict, result: Any, rank: int) -> dict | None:
    """The event of one communicator call as this party sees it; None if it received nothing."""
    if name == "all_reduce":
        return _reduction(call, result, rank, None)
    if name == "reduce":
        return _reduction(call, result, rank, call["dst"])
    if name in ("broadcast", "broadcast_obj", "scatter"):
        if call["src"] == rank:
            return None
        return {"src": call["src"], "received": [_plain(v) for v in _as_list(result)]}
    if name == "send":  # sent only: what left is recorded at the wire level
        return None
    if name in ("recv", "recv_obj"):
        return {"src": call.get("src"), "received": [_plain(result)]}
    if name == "irecv":  # filled in when the caller waits: keep the tensor itself
        return {"src": call.get("src"), "received": [call["tensor"]]}
    if name == "gather":
        return {"received": _from_others(result, rank)} if call["dst"] == rank else None
    if name == "all_gather":
        return {"received": _from_others(result, rank)}
    raise ValueError(f"no recorder for communicator method {name}")


COMM_METHODS = (
    "all_reduce",
    "reduce",
    "broadcast",
    "broadcast_obj",
    "scatter",
    "recv",
    "recv_obj",
    "irecv",
    "gather",
    "all_gather",
)


def _record_comm(cls: type, name: str) -> None:
    setattr(cls, name, _recording_comm(getattr(cls, name), name))


def _recording_comm(original, name: str):
    """`original` (an unbound communicator method) wrapped to record what this party received."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def recording(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        event = _received(name, dict(bound.arguments), result, self.get_rank())
        if event is not None:
            EVENTS.append({"kind": "comm", "method": name, **event})
        return result

    return recording


def _record_pair_channel() -> None:
    """The pair channel (`mpc.session.transport`) replaces the communicator's all_reduce, send
    and recv on the session's instance: record those too, as the class's methods are."""
    import mpc.session.party as party

    original = party.install_pair_channel

    @functools.wraps(original)
    def install(crypten, channel, rank):
        original(crypten, channel, rank)
        comm = crypten.communicator.get()
        for name in ("all_reduce", "send", "recv"):
            function = getattr(comm, name).__func__
            setattr(comm, name, types.MethodType(_recording_comm(function, name), comm))

    party.install_pair_channel = install


def _record_provider(cls: type, name: str) -> None:
    original = getattr(cls, name)

    @functools.wraps(original)
    def recording(self, *args, **kwargs):
        global _draws
        _draws = []
        try:
            outputs = original(self, *args, **kwargs)
        finally:
            draws, _draws = _draws, None
        op = args[2] if len(args) > 2 else kwargs.get("op")
        EVENTS.append(
            {
                "kind": "triple",
                "function": name,
                "provider": getattr(cls, "NAME", cls.__name__),
                "op": op if isinstance(op, str) else None,
                "own_shares": [_plain(t.share) for t in outputs],
                "drawn": draws,
            }
        )
        return outputs

    setattr(cls, name, recording)


def _record_draws(module: ModuleType, name: str) -> None:
    original = getattr(module, name)

    @functools.wraps(original)
    def drawing(*args, **kwargs):
        value = original(*args, **kwargs)
        if _draws is not None:
            _draws.append(value.clone())
        return value

    setattr(module, name, drawing)


def _record_cryptensors(crypten: ModuleType) -> None:
    original = crypten.cryptensor

    @functools.wraps(original)
    def cryptensor(*args, **kwargs):
        value = original(*args, **kwargs)
        src = kwargs.get("src")
        if src is not None:
            EVENTS.append({"kind": "cryptensor", "src": src, "share": _plain(value.share)})
        return value

    crypten.cryptensor = cryptensor


def _record_weight_masks() -> None:
    """The optimized profile's weight masks: each fixed-mask pair (a, c) is a triple of this
    party, and each weight share it holds (B on the server, D on the client) is its share of a
    server-owned tensor, like the shares `crypten.cryptensor(src=0)` makes."""
    from mpc.optimized.weight_masks import WeightMasks

    _record_provider(WeightMasks, "fixed_mask_pair")
    original = WeightMasks.share_weights

    @functools.wraps(original)
    def share_weights(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for weight in self.by_storage.values():
            EVENTS.append({"kind": "cryptensor", "src": 0, "share": _plain(weight.share)})

    WeightMasks.share_weights = share_weights


def install() -> None:
    """Hook the communicator, both tuple providers, the weight masks' pairs and shares, and
    `crypten.cryptensor` (idempotent)."""
    global _installed
    if _installed:
        return
    crypten = import_crypten()
    from crypten.communicator.distributed_communicator import DistributedCommunicator
    from crypten.mpc.provider import tfp_provider, ttp_provider

    for name in COMM_METHODS:
        _record_comm(DistributedCommunicator, name)
    for cls in (tfp_provider.TrustedFirstParty, ttp_provider.TrustedThirdParty):
        for name in PROVIDER_METHODS:
            _record_provider(cls, name)
    from crypten.common import rng

    for module in (tfp_provider, ttp_provider, rng):  # weight masks draw from crypten's rng
        for name in RANDOM_DRAWS:
            _record_draws(module, name)
    _record_weight_masks()
    _record_cryptensors(crypten)
    install_wire_hooks(EVENTS)
    _record_pair_channel()
    _installed = True


def save_transcript(role: str, rank: int, dealer: str) -> Path | None:
    """Write this session's events to $CURIOUS_TRANSCRIPT (pid appended if it already exists)."""
    path = os.environ.get("CURIOUS_TRANSCRIPT")
    if not path:
        return None
    target = Path(path)
    if target.exists():
        target = target.with_name(f"{target.name}.{os.getpid()}")
    events = [dict(event) for event in EVENTS]
    for event in events:  # irecv buffers were filled after they were recorded
        if "received" in event:
            event["received"] = [_plain(item) for item in event["received"]]
    torch.save({"role": role, "rank": rank, "dealer": dealer, "events": events}, target)
    EVENTS.clear()
    return target


def record_sessions_of(module: ModuleType, role: str) -> None:
    """Wrap `module.run_party` so that each session's transcript is saved when it ends."""
    original = module.run_party

    @functools.wraps(original)
    def run_party(spec, rank, *args, **kwargs):
        EVENTS.clear()
        try:
            return original(spec, rank, *args, **kwargs)
        finally:
            save_transcript(role, rank, spec.dealer)

    module.run_party = run_party
