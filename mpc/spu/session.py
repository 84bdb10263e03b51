"""One party's side of a secure forward pass on SPU: link, Runtime, split executables, costs.

Every stage of `jax_model.build_stages` is compiled (by both parties, from public shapes) into its
own SPU executable; all of them run in order on ONE long-lived Runtime, chaining variable names, so
intermediates stay secret-shared between stages and OT/HE set-up is paid once. Each Runtime.run()
writes a profile table to this party's SPU log ("Link details: total send bytes ..."), which is
how each stage's bytes and messages are charged to its (layer, category).

Inputs: weights are the server's (rank 0) and the one-hot prompt the client's (rank 1). With
SPU's colocated optimization, `make_shares(x, VIS_SECRET, owner)` gives the owner a private share
holding x and the other party an all-zero share of the same shape; so the non-owner builds its
share from zeros of the public shape and no input crosses the link. The first stage that mixes
them converts private to shared values inside SPU (charged to that stage).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import resource
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mpc.cost.types import Cost
from mpc.measure import GLOBAL_LAYER, socket_bytes_between, socket_counters
from mpc.roles import CLIENT, SERVER
from mpc.spu import SpuError
from mpc.spu.jax_model import TOKENS, Stage, input_names
from mpc.spu.settings import SpuSettings

_RUN = re.compile(r"SPU execution (\S+) completed.*?total time ([0-9.e+-]+)s")
_LINK = re.compile(
    r"Link details: total send bytes (\d+), recv bytes (\d+), "
    r"send actions (\d+), recv actions (\d+)"
)


def route_logs(path: Path) -> None:
    """Send SPU's log (profile tables included) to `path` instead of the console."""
    from spu import libspu

    options = libspu.logging.LogOptions()
    options.system_log_path = str(path)
    options.enable_console_logger = False
    libspu.logging.setup_logging(options)


def open_link(rank: int, addresses: list[str], timeout_s: float) -> Any:
    """The brpc link of this party; waits up to `timeout_s` for the peer to come up."""
    from spu import libspu

    desc = libspu.link.Desc()
    desc.id = "aero-pi"
    desc.recv_timeout_ms = int(timeout_s * 1000)
    desc.http_timeout_ms = int(timeout_s * 1000)
    desc.connect_retry_times = max(1, int(timeout_s))
    desc.connect_retry_interval_ms = 1000
    for i, address in enumerate(addresses):
        desc.add_party(f"party{i}", address)
    try:
        return libspu.link.create_brpc(desc, rank)
    except RuntimeError as error:
        raise SpuError(f"brpc link to {addresses} failed: {str(error).splitlines()[0]}") from None


def parse_profile(text: str) -> list[dict[str, float | str]]:
    """One record per Runtime.run() in an SPU log: name, seconds, bytes (send + recv), messages
    sent ("send actions": messages, an upper bound on rounds)."""
    runs = []
    for block in text.split("[Profiling] ")[1:]:
        run, link = _RUN.search(block), _LINK.search(block)
        if run is None or link is None:
            continue
        send, recv, actions = int(link.group(1)), int(link.group(2)), int(link.group(3))
        runs.append(
            {
                "name": run.group(1),
                "seconds": float(run.group(2)),
                "send": send,
                "recv": recv,
                "messages": actions,
            }
        )
    return runs


def shapes_of(stages: list[Stage], inputs: dict[str, tuple]) -> dict[str, Any]:
    """Every variable's shape (jax ShapeDtypeStruct), from the input shapes alone."""
    import jax

    env = {n: jax.ShapeDtypeStruct(s, np.float32) for n, s in inputs.items()}
    for stage in stages:
        out = jax.eval_shape(stage.fn, *(env[n] for n in stage.inputs))
        env.update(zip(stage.outputs, out if isinstance(out, tuple) else (out,), strict=True))
    return env


class PeakRss:
    """This process's peak resident memory within a span, sampled by a thread (`ru_maxrss` only
    ever grows, so it cannot tell one stage's peak from an earlier one's)."""

    def __init__(self, interval_s: float = 0.02) -> None:
        import psutil

        self.process, self.interval_s = psutil.Process(), interval_s
        self.peak, self.stopped = 0, threading.Event()

    def _sample(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def mb(self) -> float:
        return self.peak / 2**20


class SecureForward:
    """This party's SPU Runtime and the compiled stages of one forward pass."""

    def __init__(self, rank: int, link: Any, settings: SpuSettings, log_path: Path) -> None:
        import spu

        self.rank, self.link, self.settings, self.log_path = rank, link, settings, log_path
        self.config = settings.runtime_config()
        self.runtime = spu.Runtime(link, self.config)
        self.io = spu.Io(2, self.config)
        self.costs: dict[tuple[int, str], Cost] = defaultdict(Cost)
        self.peak_rss_mb: dict[tuple[int, str], float] = defaultdict(float)  # per category
        self.link_bytes = 0.0  # what we sent/received on the link outside SPU's executables

    def charge(self, layer: int, category: str, **amounts: float) -> None:
        self.costs[(layer, category)] += Cost(**amounts)

    def compile(self, stages: list[Stage], shapes: dict[str, Any]) -> list[Any]:
        import spu
        from spu.utils import frontend

        executables, started = [], time.perf_counter()
        for stage in stages:
            args = [np.zeros(shapes[n].shape, np.float32) for n in stage.inputs]
            executable, _ = frontend.compile(
                frontend.Kind.JAX,
                stage.fn,
                args,
                {},
                list(stage.inputs),
                [spu.Visibility.VIS_SECRET] * len(args),
                lambda _, s=stage: list(s.outputs),
                copts=self.settings.compiler_options(),
            )
            executable.name = stage.name
            executables.append(executable)
        self.compile_s = time.perf_counter() - started
        return executables

    def exchange(self, payload: bytes) -> bytes:
        """Send our bytes, receive the peer's (both parties call this)."""
        peer = 1 - self.rank
        self.link.send_async(peer, payload)
        received = bytes(self.link.recv(peer))
        self.link_bytes += len(payload) + len(received)
        self.charge(GLOBAL_LAYER, "other", bytes=len(payload) + len(received))
        return received

    def check_same_program(self, executables: list[Any]) -> str:
        digest = hashlib.sha256()
        for executable in executables:
            digest.update(executable.name.encode() + bytes(executable.code))
        mine = digest.hexdigest()
        if self.exchange(mine.encode()).decode() != mine:
            raise SpuError("server and client compiled different programs (versions differ?)")
        return mine

    def set_inputs(self, stages: list[Stage], own: dict[str, np.ndarray], shapes) -> None:
        """Our inputs as private shares; the peer's as the all-zero share of its shape."""
        import spu

        started, cpu = time.perf_counter(), time.process_time()
        for name in input_names(stages):
            owner = CLIENT if name == TOKENS else SERVER
            value = own[name] if owner == self.rank else np.zeros(shapes[name].shape, np.float32)
            shares = self.io.make_shares(value, spu.Visibility.VIS_SECRET, owner)
            self.runtime.set_var(name, shares[self.rank])
        self.charge(
            GLOBAL_LAYER,
            "input_share",
            wall_s=time.perf_counter() - started,
            cpu_s=time.process_time() - cpu,
            calls=1,
        )

    def run(self, stages: list[Stage], executables: list[Any]) -> None:
        """Run every stage; charge each its wall and CPU seconds, bytes and messages."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        for stage, executable in zip(stages, executables, strict=True):
            started, cpu = time.perf_counter(), time.process_time()
            with PeakRss() as peak:
                self.runtime.run(executable)
            key = (stage.layer, stage.category)
            self.peak_rss_mb[key] = max(self.peak_rss_mb[key], peak.mb)
            self.charge(
                stage.layer,
                stage.category,
                wall_s=time.perf_counter() - started,
                cpu_s=time.process_time() - cpu,
                calls=1,
            )
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            runs = parse_profile(log.read().decode(errors="replace"))
        if [r["name"] for r in runs] != [s.name for s in stages]:
            raise SpuError(f"SPU profile log {self.log_path} does not list the stages run")
        for stage, record in zip(stages, runs, strict=True):
            self.charge(
                stage.layer,
                stage.category,
                bytes=record["send"] + record["recv"],
                rounds=record["messages"],
            )

    def reveal_to_client(self, name: str) -> np.ndarray | None:
        """The value to the client only: the server sends its share, the client reconstructs."""
        started, cpu = time.perf_counter(), time.process_time()
        mine = self.runtime.get_var(name)
        if self.rank == SERVER:
            payload = pickle.dumps(mine)
            self.link.send(CLIENT, payload)
            value = None
        else:
            payload = bytes(self.link.recv(SERVER))
            value = self.io.reconstruct([pickle.loads(payload), mine])
        self.link_bytes += len(payload)
        self.charge(
            GLOBAL_LAYER,
            "reveal",
            bytes=len(payload),
            rounds=1,
            wall_s=time.perf_counter() - started,
            cpu_s=time.process_time() - cpu,
            calls=1,
        )
        return value


def run_query(
    forward: SecureForward, stages: list[Stage], own: dict[str, np.ndarray], input_shapes: dict
) -> dict[str, Any]:
    """Compile, check, load inputs, run, reveal: one query's record (costs per category)."""
    shapes = shapes_of(stages, input_shapes)
    executables = forward.compile(stages, shapes)
    program = forward.check_same_program(executables)
    os_start = socket_counters()
    forward.costs.clear()
    forward.peak_rss_mb.clear()
    forward.link_bytes = 0.0
    forward.set_inputs(stages, own, shapes)
    forward.run(stages, executables)
    logits = forward.reveal_to_client(stages[-1].outputs[0])
    os_bytes = socket_bytes_between(os_start, socket_counters())
    ops = [
        {
            "layer": layer,
            "category": category,
            **cost.to_dict(),
            "peak_rss_mb": forward.peak_rss_mb.get((layer, category), float("nan")),
        }
        for (layer, category), cost in sorted(forward.costs.items())
    ]
    total = sum(forward.costs.values(), Cost())
    return {
        "program_sha256": program,
        "compile_s": forward.compile_s,
        "ops": ops,
        "total": {**total.to_dict(), "calls": 1},
        "os_bytes": os_bytes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "logits": None if logits is None else np.asarray(logits).reshape(-1).tolist(),
    }
