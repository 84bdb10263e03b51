"""Curious parties: what each party of a query can learn from everything it legitimately holds.

Threat model: semi-honest (honest-but-curious) parties. Each follows the protocol exactly and keeps
its whole view: its own shares, every message it receives, and whatever its own process draws.
- `ttp`: the dealer is a third process that colludes with neither party; each party gets only its
  own share of every Beaver triple (a, b, c = a * b), so an opened x - a stays a one-time pad.
- `tfp`: party 0 (the server) IS the dealer: it draws every triple in plaintext, so every opened
  x - a hands it x. That mode is labelled insecure; the attack below proves the label true.

A real dealer, a curious server and a curious client (`tests.curious_server`, `tests.curious_client`:
the unchanged programs plus the recording hooks of `tests/curious_recorder.py`) run one query as
separate processes on 127.0.0.1; the attacks are plain functions of the saved transcripts. Pooling
both parties' views recovers prompt and weights: the positive control that shows the attacks work
and that a party alone lacks exactly the other party's shares.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from mpc.roles import SERVER
from mpc.session.local import free_port
from mpc.session.secure_model import inference_model

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PROMPT_LENGTH = 8
SCALE = 2.0**16  # CrypTen's fixed-point scale at 16 fraction bits
ATOL = 1e-3  # "equal" for decoded values: well below one logit's MPC error, far above rounding


@contextlib.contextmanager
def started(folder: Path, name: str, command: list[str], transcript: Path | None = None):
    """A background process in its own process group (so its party children stop with it)."""
    env = {**os.environ, "CURIOUS_TRANSCRIPT": str(transcript or "")}
    with open(folder / f"{name}.log", "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def run_curious_session(
    checkpoint: Path,
    dealer: str,
    ids: list[int],
    folder: Path,
    protocol: str = "stock",
    all_positions: bool = False,
) -> dict:
    """One query between a curious server and a curious client under a protocol profile; the
    client's JSON record."""
    port, dealer_port = free_port(HOST), free_port(HOST, span=1)
    (folder / "prompt.json").write_text(json.dumps(ids))
    python, timeout = [sys.executable, "-m"], ["--timeout", "60"]
    logs = lambda: "\n".join(f"--- {p.name}\n{p.read_text()}" for p in folder.glob("*.log"))
    with contextlib.ExitStack() as stack:
        if dealer == "ttp":
            dealer_command = [*python, "mpc.dealer", "--host", HOST, "--port", str(dealer_port)]
            stack.enter_context(started(folder, "dealer", [*dealer_command, *timeout]))
        server_command = [
            *python, "tests.curious_server", "--checkpoint", str(checkpoint), "--host", HOST,
            "--port", str(port), "--dealer", dealer, "--dealer-address", f"{HOST}:{dealer_port}",
            "--max-queries", "1", "--protocol", protocol, *timeout,
        ]  # fmt: skip
        server = stack.enter_context(
            started(folder, "server", server_command, folder / "server.pt")
        )
        client_command = [
            *python, "tests.curious_client", "--host", HOST, "--port", str(port),
            "--tokens", str(folder / "prompt.json"), "--json-out", str(folder / "client.json"),
            *timeout, *(["--all-positions"] if all_positions else []),
        ]  # fmt: skip
        env = {**os.environ, "CURIOUS_TRANSCRIPT": str(folder / "client.pt")}
        done = subprocess.run(
            client_command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"client failed: {done.stderr}\n{logs()}"
        server.wait(timeout=60)  # --max-queries 1: it exits once its party saved the transcript
        assert (folder / "server.pt").is_file(), f"no server transcript\n{logs()}"
    return json.loads((folder / "client.json").read_text())


@pytest.fixture(
    scope="module", params=["ttp", "tfp", "ttp-optimized", "ttp-stock-all", "ttp-optimized-all"]
)
def session(request, tiny_checkpoints, tiny_data, tmp_path_factory) -> dict:
    """The optimized profile adds weight masks (the client holds D, the server B, only X - A is
    opened) and packed comparisons: the same attacks must fail, and pooling must still work.
    "-all" reveals every position's logits to the client (as `mpc.accuracy` does)."""
    dealer, protocol, positions = (request.param.split("-") + ["stock", "last"])[:3]
    folder = tmp_path_factory.mktemp(f"curious-{request.param}")
    ids = [int(t) for t in tiny_data.val[200 : 200 + PROMPT_LENGTH]]
    checkpoint = tiny_checkpoints["baseline"]
    record = run_curious_session(checkpoint, dealer, ids, folder, protocol, positions == "all")
    load = lambda name: torch.load(folder / f"{name}.pt", weights_only=True)["events"]
    return {"dealer": dealer, "ids": ids, "record": record, "checkpoint": checkpoint,
            "server": load("server"), "client": load("client")}  # fmt: skip


# --- the attacks: plain functions of one party's transcript -----------------------------------


def decode(ring: torch.Tensor) -> torch.Tensor:
    return ring.double() / SCALE


def beaver_openings(events: list[dict]) -> list[tuple[dict, list[torch.Tensor]]]:
    """(triple, opened operands) of each Beaver product and square, in protocol order: the first
    all_reduce after a triple opens [x - a] (and [y - b])."""
    pairs, triple = [], None
    for event in events:
        if event["kind"] == "triple":
            triple = event
        elif triple is not None and event.get("method") == "all_reduce":
            if triple["function"] in ("generate_additive_triple", "square", "fixed_mask_pair"):
                pairs.append((triple, event["opened"]))
            triple = None
    return pairs


def unmasked_guesses(events: list[dict], side: int) -> Iterator[torch.Tensor]:
    """Every value one party can form for an operand of a product: the opened x - a, alone and
    plus each mask it knows (its own share of a; whatever its process drew for a in plaintext)."""
    for triple, opened in beaver_openings(events):
        if side < len(opened):
            masked = opened[side]
            yield masked
            for mask in [triple["own_shares"][side], *triple["drawn"][side : side + 1]]:
                if mask.shape == masked.shape:
                    yield masked + mask


def pooled_operands(server: list[dict], client: list[dict], side: int) -> Iterator[torch.Tensor]:
    """What server and client would reconstruct together: opened x - a plus both shares of a
    (a fixed-mask pair opens only x - a), and both shares of every server-owned tensor."""
    for (mine, opened), (theirs, _) in zip(
        beaver_openings(server), beaver_openings(client), strict=True
    ):
        products = ("generate_additive_triple", "fixed_mask_pair")
        if mine["function"] in products and side < len(opened):
            yield opened[side] + mine["own_shares"][side] + theirs["own_shares"][side]
    if side == 1:
        for mine, theirs in zip(
            own_input_shares(server, SERVER), own_input_shares(client, SERVER), strict=True
        ):
            yield mine + theirs


def own_input_shares(events: list[dict], src: int) -> list[torch.Tensor]:
    return [e["share"] for e in events if e["kind"] == "cryptensor" and e["src"] == src]


def as_prompt(guess: torch.Tensor, length: int, vocab: int) -> list[int] | None:
    """The token ids if `guess` decodes to a (1, length, vocab) one-hot matrix, else None."""
    if tuple(guess.shape) != (1, length, vocab):
        return None
    rows = decode(guess)[0]
    if not ((rows.abs() < ATOL) | ((rows - 1).abs() < ATOL)).all():
        return None
    if not ((rows.sum(-1) - 1).abs() < ATOL).all():
        return None
    return rows.argmax(-1).tolist()


def closest_weight(guesses: Iterator[torch.Tensor], weights: list[torch.Tensor]) -> float:
    """Smallest relative error ||guess - W|| / ||W|| over guesses and weight matrices (or W^T)."""
    best = float("inf")
    for guess in guesses:
        value = decode(guess)
        for weight in weights:
            for target in (weight, weight.T):
                if value.shape == target.shape:
                    best = min(best, ((value - target).norm() / target.norm()).item())
    return best


def received_tensors(events: list[dict]) -> Iterator[torch.Tensor]:
    """Every tensor a party received, and every value opened to it."""
    for event in events:
        if event["kind"] == "comm":
            for item in [*event["received"], *event.get("opened", [])]:
                if torch.is_tensor(item):
                    yield item


def holds_a_row_of(tensor: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether a row of `tensor` (or of its transpose), as raw ring integers or decoded fixed point,
    equals a row of `targets` (K, n) within ATOL. A leaked (T, V) one-hot matrix leaks its rows."""
    n, bound = targets.shape[-1], targets.abs().max().item() + ATOL
    layouts = [tensor] + ([tensor.transpose(-2, -1)] if tensor.dim() >= 2 else [])
    for layout in layouts:
        if layout.numel() % n:
            continue
        rows = layout.reshape(-1, n).double()
        for values in (rows, rows / SCALE):
            near = values[values.abs().amax(-1) <= bound]  # cheap filter: ring noise is huge
            if ((near[:, None] - targets[None]).abs().amax(-1) <= ATOL).any():
                return True
    return False


def real_weights(checkpoint: Path) -> list[torch.Tensor]:
    loaded = load_checkpoint(checkpoint)
    model = inference_model(loaded.config, loaded.model_state)
    return [p.detach().double() for p in model.parameters() if p.dim() == 2]


# --- the tests ---------------------------------------------------------------------------------


def test_curious_server_reads_the_prompt_only_when_it_is_the_dealer(session):
    ids, vocab = session["ids"], len(session["record"]["logits"][0][0])
    events = session["server"]
    guesses = [*unmasked_guesses(events, 0), *own_input_shares(events, src=1)]
    decoded = [as_prompt(guess, len(ids), vocab) for guess in guesses]
    if session["dealer"] == "tfp":
        assert session["record"]["trust"].startswith("INSECURE")
        assert ids in decoded, "tfp: the server should read the prompt from eps + a"
    else:
        assert decoded == [None] * len(guesses), "ttp: a guess decoded to a one-hot matrix"
        argmaxes = [g[0].argmax(-1).tolist() for g in guesses if g.shape == (1, len(ids), vocab)]
        assert argmaxes and ids not in argmaxes


def test_curious_client_cannot_reconstruct_the_weights(session):
    weights = real_weights(session["checkpoint"])
    events = session["client"]
    guesses = [*unmasked_guesses(events, 0), *unmasked_guesses(events, 1)]
    guesses += own_input_shares(events, src=SERVER)
    error = closest_weight(iter(guesses), weights)
    assert error > 0.5, f"{session['dealer']}: the client got a weight matrix within {error:.3g}"


def test_pooled_views_recover_prompt_and_weights(session):
    """Positive control: the attacks above do work once the other party's shares are added."""
    ids, vocab = session["ids"], len(session["record"]["logits"][0][0])
    server, client = session["server"], session["client"]
    prompts = [as_prompt(x, len(ids), vocab) for x in pooled_operands(server, client, 0)]
    assert ids in prompts
    error = closest_weight(pooled_operands(server, client, 1), real_weights(session["checkpoint"]))
    assert error < 1e-2, f"pooled shares should give the weights, best relative error {error:.3g}"


def test_server_never_receives_the_plaintext_input_or_logits(session):
    ids, record = session["ids"], session["record"]
    vocab = len(record["logits"][0][0])
    prompt = torch.nn.functional.one_hot(torch.tensor(ids), vocab).double()  # (T, V)
    logits = torch.tensor(record["logits"]).double().reshape(-1, vocab)  # (steps, V)
    targets = torch.cat([prompt.unique(dim=0), logits])  # (K, V)
    received = list(received_tensors(session["server"]))
    assert received, "the server transcript holds no received tensors"
    for tensor in received:
        assert not holds_a_row_of(tensor, targets), (
            f"{session['dealer']}: the server received a {tuple(tensor.shape)} tensor equal to "
            "the one-hot prompt (or a row of it) or to the revealed logits"
        )
    revealed = [e for e in session["server"] if e.get("method") == "reduce" and e["received"]]
    assert not revealed, "the server received the client's share of a value revealed to the client"


# --- the server's memory, as recorded below CrypTen (tests.wire_recorder) -------------------------


def ring_buffers(events: list[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(held, own): every int64 buffer of the server's torch.distributed calls after each call
    completed (what it received and what its memory holds), and before (what it put in: its own
    shares). Ring elements are int64; pickled objects and sizes travel as int8 / int32."""
    wire = [e for e in events if e["kind"] == "wire"]
    pick = lambda key: [t for e in wire for t in e[key] if t.dtype == torch.int64 and t.numel()]
    return pick("after"), pick("before")


def matches(ring: torch.Tensor, targets: torch.Tensor) -> int:
    """How many elements of `ring` (rows of the targets' width, aligned as the revealed tensor is
    laid out) equal the target at the same position, compared as exact ring integers: the client
    decodes the sum of the shares exactly, so a leaked element is that very integer. Targets near
    zero (|x| < 2^-10) are left out: buffers of bits or small public integers would match them
    by chance, whereas a uniform ring element equals a given integer with probability 2^-64."""
    width = targets.shape[-1]
    encoded = torch.round(targets * SCALE).long()  # (K, V)
    rows = ring.reshape(-1, width)  # (R, V)
    same = rows[:, None] == encoded[None]  # (R, K, V)
    return int((same & (encoded.abs() >= SCALE / 1024)[None]).sum())


def hot_matches(ring: torch.Tensor, ids: list[int], vocab: int) -> int:
    """How many prompt tokens a (.., T, V) buffer gives away: position (t, ids[t]) holds the
    fixed-point 1 exactly."""
    length = len(ids)
    rows = ring.reshape(-1, length, vocab)  # (N, T, V)
    hot = rows[:, torch.arange(length), torch.tensor(ids)]  # (N, T)
    return int((hot == int(SCALE)).sum())


def test_server_memory_holds_no_logit_and_no_share_that_completes_one(session):
    """Whatever each collective left in the server's buffers, alone or added to (or subtracted
    from) anything the server itself put on the wire, must give no logit element and no prompt
    token. This is what the reveal to the client must guarantee however it is implemented."""
    if session["dealer"] == "tfp":
        pytest.skip("tfp: the server is the dealer and sees everything (labelled INSECURE)")
    ids, record = session["ids"], session["record"]
    vocab = len(record["logits"][0][0])
    logits = torch.tensor(record["logits"]).double().reshape(-1, vocab)  # (K, V)
    held, own = ring_buffers(session["server"])
    assert held, "no low-level buffers were recorded in the server"
    leaks = []
    for buffer in held:
        if buffer.numel() % vocab:
            continue
        candidates = [("held", buffer)]
        if buffer.shape[-1] == vocab:  # a share of output rows: try completing it with ours
            candidates += [(f"held{sign}own", buffer + sign * mine) for mine in own
                           if mine.shape == buffer.shape for sign in (1, -1)]  # fmt: skip
        for how, value in candidates:
            found = matches(value, logits)
            if value.numel() % (len(ids) * vocab) == 0:
                found += hot_matches(value, ids, vocab)
            if found:
                leaks.append(f"{how} {tuple(buffer.shape)}: {found} element(s)")
    assert not leaks, f"{session['dealer']}: the server's memory gives away output: {leaks[:5]}"
