"""Measuring one party's cost per operation: one context manager, attached to the model by hooks.

`CostRecorder.measure(layer, category)` records bytes, rounds, communication seconds (CrypTen's
own counters), wall seconds and CPU seconds of what runs inside it. Measurements nest and are
EXCLUSIVE: a parent (say the scaled FFN residual) is charged only for what its children (the FFN
linears) did not already record, so the categories of a forward pass add up to its total.

`attach_cost_hooks` puts that context manager around every module of the model whose cost is a
category of the benchmark (projections, attention matmuls, softmax, LayerNorm, activations,
scaling, embedding, LM head): no timing code is pasted into the forward pass.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import time
from collections import defaultdict
from typing import Any

from torch import nn

from models.gpt import (
    Activation,
    AttentionTemperature,
    CausalSelfAttention,
    Embed,
    FeedForward,
    LayerNorm,
    Linear,
    MatMul,
    ScaledResidual,
    Softmax,
)
from mpc.cost.types import Cost

CATEGORIES = (
    "embedding", "qkv_proj", "attn_qk", "scaling", "softmax", "attn_av", "out_proj", "layernorm",
    "ffn_linear", "gelu", "relu", "lm_head", "input_share", "reveal", "other",
)  # fmt: skip
GLOBAL_LAYER = -1  # embedding, final LayerNorm, LM head, input sharing, reveal


class CostRecorder:
    """Exclusive per-(layer, category) costs of one party, from CrypTen's communication counters."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.costs: dict[tuple[int, str], Cost] = defaultdict(Cost)
        self._children: list[Cost] = []  # stack: inclusive cost of finished children, per level

    def _snapshot(self) -> Cost:
        stats = self.comm.get_communication_stats()
        return Cost(
            float(stats["bytes"]),
            float(stats["rounds"]),
            float(stats["time"]),
            time.perf_counter(),
            time.process_time(),
        )

    @contextlib.contextmanager
    def measure(self, layer: int, category: str):
        if category not in CATEGORIES:
            raise ValueError(f"unknown cost category {category!r}")
        start = self._snapshot()
        self._children.append(Cost())
        try:
            yield
        finally:
            inclusive = self._snapshot() - start
            exclusive = (inclusive - self._children.pop()).replace(calls=1)
            self.costs[(layer, category)] += exclusive
            if self._children:
                self._children[-1] += inclusive

    def reset(self) -> None:
        self.costs.clear()

    def total(self) -> Cost:
        """The sum over every (layer, category): the whole measured span, as categories nest."""
        return sum(self.costs.values(), Cost()).replace(calls=1)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"layer": layer, "category": category, **cost.to_dict()}
            for (layer, category), cost in sorted(self.costs.items())
        ]


def module_category(name: str, module: nn.Module) -> str | None:
    """The benchmark category of a module, or None if it is only a container."""
    if isinstance(module, Linear):
        if name.endswith("attn.c_attn"):
            return "qkv_proj"
        return "out_proj" if ".attn." in name else "ffn_linear"
    if isinstance(module, MatMul):
        return {"qk": "attn_qk", "av": "attn_av", "lm_head": "lm_head"}[name.rsplit(".", 1)[-1]]
    if isinstance(module, Activation):
        return module.kind
    table = {
        Softmax: "softmax",
        LayerNorm: "layernorm",
        Embed: "embedding",
        ScaledResidual: "scaling",
        AttentionTemperature: "scaling",
    }
    return next((c for kind, c in table.items() if isinstance(module, kind)), None)


def layer_of(name: str) -> int:
    found = re.search(r"\.h\.(\d+)\.", name + ".")
    return int(found.group(1)) if found else GLOBAL_LAYER


def attach_cost_hooks(model: nn.Module, recorder: CostRecorder) -> list:
    """Wrap every categorized module's forward in `recorder.measure`; returns the hook handles."""
    handles = []
    for name, module in model.named_modules():
        category = module_category(name, module)
        if category is None:
            continue
        assert not isinstance(module, CausalSelfAttention | FeedForward)
        layer, contexts = layer_of(name), []

        def enter(_module, _args, layer=layer, category=category, contexts=contexts):
            context = recorder.measure(layer, category)
            context.__enter__()
            contexts.append(context)

        def leave(_module, _args, _output, contexts=contexts):
            contexts.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    return handles


def _socket_inodes() -> set[str]:
    """Inodes of this process's open sockets (/proc/self/fd links read 'socket:[INODE]')."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # fds may close while we look
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    return inodes


def socket_counters() -> dict[str, int] | None:
    """Kernel TCP payload counters (bytes sent + received) per socket of this process, keyed by
    socket inode, from `ss -tie`: an independent check of CrypTen's own byte count. Sockets are
    matched by inode (not `ss -p`, whose process scan is slow and racy under load). None where
    `ss` or /proc is unavailable."""
    # Only established sockets: a full dump also walks the thousands of TIME_WAIT sockets a busy
    # machine churns through, and a netlink dump interrupted by that churn came back without this
    # process's sockets (kernel count 0 in a loaded test run). A failed or empty dump is retried.
    command = ["ss", "-tineH", "state", "established"]
    out = None
    for _ in range(3):
        try:
            inodes = _socket_inodes()
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        if done.returncode == 0:
            out = done.stdout  # no socket of ours at all may be the truth: keep the last dump
            if any(f"ino:{inode}" in out for inode in inodes):
                break
    if out is None:
        return None
    counters: dict[str, int] = {}
    key = None
    for line in out.splitlines():
        if not line[:1].isspace():  # a socket's first line names its inode; details follow
            found = re.search(r"\bino:(\d+)", line)
            key = found.group(1) if found and found.group(1) in inodes else None
        elif key is not None:
            for name in ("bytes_sent", "bytes_received"):
                found = re.search(rf"\b{name}:(\d+)", line)
                counters[key] = counters.get(key, 0) + (int(found.group(1)) if found else 0)
    return counters


def socket_bytes_between(start: dict[str, int] | None, end: dict[str, int] | None) -> float:
    """Bytes moved between two snapshots: per socket, end minus start (new sockets count whole).
    A socket closed in between is lost to this count; NaN without `ss`."""
    if start is None or end is None:
        return math.nan
    return float(sum(count - start.get(key, 0) for key, count in end.items()))
