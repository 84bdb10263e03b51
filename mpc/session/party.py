"""One MPC session as seen by one party: server (rank 0), client (rank 1) or dealer (rank 2).

Each session starts CrypTen on a fresh torch.distributed group (gloo over TCP), checks that both
parties hold the same public model, shares the server's weights and the client's one-hot prompt,
runs the one forward pass of `models.gpt` on the shares, and reveals the logits to the client only
(`mpc.session.reveal.reveal_to`: the server sends its share, nothing travels back). Nothing is ever
decrypted to compute on in plaintext.
"""

from __future__ import annotations

import functools
import os
import resource
import secrets
from dataclasses import dataclass, field
from typing import Any

import torch

from models.config import ModelConfig
from mpc.approx import ApproxConfig, apply_to_crypten
from mpc.compat import import_crypten
from mpc.measure import (
    GLOBAL_LAYER,
    CostRecorder,
    attach_cost_hooks,
    socket_bytes_between,
    socket_counters,
)
from mpc.ops import CryptenOps
from mpc.optimized.beaver import install_multiplication
from mpc.optimized.offline_dealer import DealerLink, prepare_offline
from mpc.optimized.weight_masks import MaskSecret, WeightMasks
from mpc.roles import CLIENT, DEALER, SERVER
from mpc.session.control import ControlError
from mpc.session.guards import distributed_timeout, start_watchdog, translate_peer_errors, watchdog
from mpc.session.progress import watch_blocks
from mpc.session.public_model import PublicModel
from mpc.session.reveal import reveal_to
from mpc.session.secure_model import (
    apply_var_scales,
    encrypt_parameters,
    inference_model,
    one_hot,
)
from mpc.session.transport import PairChannel, install_pair_channel, open_pair_channel


@dataclass
class SessionSpec:
    """What every party of one session must agree on; sent to the dealer and derived by both
    parties from the handshake."""

    host: str  # rendezvous address (the server's TCP store)
    port: int
    dealer: str  # "ttp" or "tfp"
    timeout_s: float
    public: PublicModel
    prompt_length: int
    new_tokens: int = 1
    all_positions: bool = False  # reveal logits for every position (perplexity under MPC)
    threads: int = 1  # torch threads per party: two parties often share one small machine

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.public.config)

    @functools.cached_property
    def approx(self) -> ApproxConfig:
        """The approximations and protocol knobs both parties agreed on (parsed once)."""
        return ApproxConfig.from_dict(self.public.settings)


@dataclass
class PartyResult:
    tokens: list[int] = field(default_factory=list)  # generated (client only)
    logits: list[torch.Tensor] = field(default_factory=list)  # revealed (client only)
    steps: list[dict[str, float]] = field(default_factory=list)  # per forward: bytes, rounds, s
    # once per session, before the queries: weight-mask set-up (bytes of B sent to the dealer:
    # nonzero only in the first session of a loaded model)
    setup: dict[str, float] = field(default_factory=dict)
    # the dealer's material delivered before the prompt is shared (server, offline_dealer)
    offline: dict[str, float] = field(default_factory=dict)


def start_crypten(spec: SessionSpec, rank: int) -> Any:
    os.environ.update(
        WORLD_SIZE="2",
        RANK=str(rank),
        RENDEZVOUS=f"tcp://{spec.host}:{spec.port}",
        DISTRIBUTED_BACKEND="gloo",
    )
    torch.set_num_threads(spec.threads)
    # Fresh OS randomness for anything CrypTen draws from torch's default generator.
    torch.manual_seed(secrets.randbits(63))
    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TTP" if spec.dealer == "ttp" else "TFP"
    crypten.cfg.communicator.verbose = True
    approx = spec.approx
    apply_to_crypten(approx)
    install_profile(approx)
    with (
        distributed_timeout(spec.timeout_s),
        translate_peer_errors("starting the MPC session"),
        watchdog(spec.timeout_s, "starting the MPC session"),
    ):
        crypten.init()
    if approx.fast_matmul and spec.dealer == "ttp" and rank == SERVER:
        from crypten.mpc.provider.ttp_provider import TTPClient

        with translate_peer_errors("configuring the dealer"):
            TTPClient.get().ttp_request("configure", None, True)
    return crypten


def install_profile(approx: ApproxConfig) -> None:
    """Install the protocol knobs of `approx` in this (session) process."""
    from mpc.optimized.packed_compare import packed_ltz, packed_relu, use_radix

    install_multiplication(approx.fast_matmul)
    if approx.comparison in ("packed", "packed4"):  # a party process serves one session
        use_radix(4 if approx.comparison == "packed4" else 2)
        import_crypten().mpc.MPCTensor._ltz = packed_ltz
    if approx.fused_relu:
        import_crypten().mpc.MPCTensor.relu = packed_relu


def check_same_model(crypten: Any, rank: int, fingerprint: str) -> None:
    """Both parties compare fingerprints over the MPC channel itself, so the party at the other end
    of the rendezvous is known to hold the model of the handshake."""
    comm = crypten.communicator.get()
    theirs = comm.broadcast_obj(fingerprint if rank == SERVER else None, SERVER)
    agreed = comm.broadcast_obj(theirs == fingerprint if rank == CLIENT else None, CLIENT)
    if not agreed:
        raise ControlError("model fingerprint mismatch between server and client")
    comm.reset_communication_stats()


def build_encrypted_model(
    crypten: Any, spec: SessionSpec, rank: int, state: dict | None, secret: MaskSecret | None
) -> tuple[Any, dict[str, float]]:
    """The encrypted model and what its set-up cost (weight masks only)."""
    cfg, approx = spec.config, spec.approx
    # client: a random skeleton, only shapes are used
    model = inference_model(cfg, state, fold_gains=approx.fold_gains)
    apply_var_scales(model, spec.public.layernorm_var_scales)
    model.use_ops(CryptenOps(approx))
    setup: dict[str, float] = {}
    if approx.weight_masks:
        setup = share_masked_weights(crypten, model, spec, rank, secret)
    encrypt_parameters(model, crypten, src=SERVER)  # every parameter not masked above
    return model, setup


def share_masked_weights(
    crypten: Any, model: Any, spec: SessionSpec, rank: int, secret: MaskSecret | None
) -> dict[str, float]:
    """Weights with masks reused across queries (`mpc.optimized.weight_masks`): the server's
    secret goes to the client over the MPC channel (never to the dealer), and the dealer gets
    the server's shares once per loaded model."""
    if rank == SERVER and secret is None:
        raise ValueError("weight masks need the server's MaskSecret")
    comm, approx = crypten.communicator.get(), spec.approx
    with translate_peer_errors("setting up the weight masks"):
        fields = comm.broadcast_obj(vars(secret) if rank == SERVER else None, SERVER)
        secret = MaskSecret(**fields)
        masks = WeightMasks(rank, secret, spec.dealer)
        masks.share_weights(model, crypten, approx.precision_bits)
        setup = {"bytes": 0.0, "wall_s": 0.0}
        if spec.dealer == "ttp" and rank == SERVER:
            setup = masks.upload_to_dealer()
    install_multiplication(approx.fast_matmul).masks = masks
    comm.reset_communication_stats()
    return setup


def run_queries(
    crypten: Any,
    model: Any,
    spec: SessionSpec,
    rank: int,
    prompt: list[int] | None,
    on_step=None,
    on_layer=None,
) -> PartyResult:
    """The generation loop, identical on both parties; only the client has the prompt and learns
    the revealed logits and the chosen tokens. Each step records this party's costs per
    (layer, category) and the kernel's socket byte count beside CrypTen's; `on_layer(step,
    layer)` is called after each transformer block (progress)."""
    result = PartyResult()
    ids = list(prompt or [])
    vocab = spec.config.vocab_size
    comm = crypten.communicator.get()
    recorder = CostRecorder(comm)
    attach_cost_hooks(model, recorder)
    current = [0]  # the step the block hooks report
    if on_layer is not None:
        watch_blocks(model, lambda layer: on_layer(current[0], layer))
    for step in range(spec.new_tokens):
        current[0] = step
        length = spec.prompt_length + step
        comm.reset_communication_stats()
        recorder.reset()
        os_start = socket_counters()
        plain = one_hot(ids, vocab) if rank == CLIENT else torch.zeros(1, length, vocab)
        with translate_peer_errors(f"computing token {step + 1}"):
            with recorder.measure(GLOBAL_LAYER, "other"):  # keeps what no category claimed
                with recorder.measure(GLOBAL_LAYER, "input_share"):
                    x = crypten.cryptensor(plain, src=CLIENT)
                logits = model(x, last_only=not spec.all_positions)
                with recorder.measure(GLOBAL_LAYER, "reveal"):
                    revealed = reveal_to(logits, CLIENT, crypten)  # None on the server
        total = recorder.total()
        result.steps.append(
            {
                "prompt_length": length,
                **total.to_dict(),
                "os_bytes": socket_bytes_between(os_start, socket_counters()),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "ops": recorder.rows(),
            }
        )
        if rank == CLIENT:
            result.logits.append(revealed[0])
            next_token = int(revealed[0, -1].argmax())
            result.tokens.append(next_token)
            ids.append(next_token)
        if on_step is not None:
            on_step(step, result)
    return result


def connect_parties(crypten: Any, spec: SessionSpec, rank: int) -> PairChannel | None:
    """With `pair_channel`, the session's openings and reveals go over one TCP connection
    between the parties (`mpc.session.transport`); else over CrypTen's gloo collectives."""
    if not spec.approx.pair_channel:
        return None
    with translate_peer_errors("opening the pair channel"):
        channel = open_pair_channel(crypten.communicator.get(), rank, spec.host, spec.timeout_s)
    install_pair_channel(crypten, channel, rank)
    return channel


def dealer_link(crypten: Any, spec: SessionSpec, rank: int) -> DealerLink | None:
    """The server's link to a ttp dealer that delivers a query's material offline."""
    if not (spec.approx.offline_dealer and spec.dealer == "ttp" and rank == SERVER):
        return None
    from crypten.mpc.provider.ttp_provider import TTPClient

    return DealerLink(TTPClient.get())


def offline_phase(crypten: Any, model: Any, spec: SessionSpec, link: DealerLink) -> dict:
    """Rehearse the query's forward passes on dummy shares to plan its dealer requests, then
    fetch all their results in one message (`mpc.optimized.offline_dealer`)."""
    masks = install_multiplication(spec.approx.fast_matmul).masks
    if masks is not None:
        link.result_shapes["fixed_mask"] = masks.fixed_mask_shape
    vocab, last_only = spec.config.vocab_size, not spec.all_positions

    def forward(length: int) -> None:
        dummy = crypten.cryptensor(torch.zeros(1, length, vocab), src=CLIENT)
        model(dummy, last_only=last_only)

    lengths = [spec.prompt_length + step for step in range(spec.new_tokens)]
    with translate_peer_errors("preparing the dealer's material"):
        offline = prepare_offline(crypten, link, forward, lengths)
    crypten.communicator.get().reset_communication_stats()
    return offline


def run_party(
    spec: SessionSpec,
    rank: int,
    prompt: list[int] | None,
    state: dict | None,
    on_step=None,
    mask_secret: MaskSecret | None = None,
    on_layer=None,
) -> PartyResult:
    """A whole session for the server (with `state` and, for weight masks, its `mask_secret`)
    or the client (with `prompt`); `on_step(step, result)` is called after each forward pass and
    `on_layer(step, layer)` after each transformer block (progress reports)."""
    crypten = start_crypten(spec, rank)
    with translate_peer_errors("checking the model"):
        check_same_model(crypten, rank, spec.public.fingerprint())
    channel = connect_parties(crypten, spec, rank)
    link = dealer_link(crypten, spec, rank)
    try:
        model, setup = build_encrypted_model(crypten, spec, rank, state, mask_secret)
        offline = offline_phase(crypten, model, spec, link) if link is not None else {}
        with translate_peer_errors("waiting for the other party"):
            ready = "ready" if rank == SERVER else None  # the query starts together
            crypten.communicator.get().broadcast_obj(ready, SERVER)
        result = run_queries(crypten, model, spec, rank, prompt, on_step, on_layer)
        if link is not None:
            link.finish()
    finally:
        if channel is not None:
            channel.close()
    result.setup, result.offline = setup, offline
    with translate_peer_errors("closing the session"):
        crypten.uninit()
    return result


def run_dealer(host: str, port: int, timeout_s: float, threads: int = 1) -> None:
    """The trusted third party of one session: makes Beaver triples until rank 0 says stop.
    It needs no model: triples are random ring elements of the shapes the parties ask for."""
    os.environ.update(
        WORLD_SIZE="2",
        RANK=str(DEALER),
        RENDEZVOUS=f"tcp://{host}:{port}",
        DISTRIBUTED_BACKEND="gloo",
    )
    torch.set_num_threads(threads)
    torch.manual_seed(secrets.randbits(63))  # the TTP seeds each party's generator from this
    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TTP"
    from mpc.optimized.dealer_service import serve_dealer_session

    with distributed_timeout(timeout_s), translate_peer_errors("dealing"):
        # returns on "terminate"; swallows a peer's failure; the watchdog covers its start-up
        serve_dealer_session(crypten, startup=start_watchdog(timeout_s, "starting the dealer"))
