"""Weight masks reused across queries: a matmul against a server weight opens only X - A.

Stock Beaver opens W - B for every weight in every query: 16 B per weight element, the same ~2.9 GB
for every GPT-2-small query whatever the prompt. Here each weight matrix W is shared ONCE per
loaded model as (server: B = W - D, client: D), where D is pseudo-random from a 32-byte seed the
server gives the client. Per query the dealer makes a fresh A and C = A B (it holds B, uploaded
once per model), both parties open only E = X - A, and

    server: z0 = c0 + E (B + D) + a0 D        client: z1 = c1 + a1 D

sum to C + E B + A D + E D = X (B + D) = X W.

Why this stays secure (same non-colluding dealer assumption as the stock `ttp` run):
  * the client sees D (a PRG output independent of W) and E = X - A: nothing about W;
  * the server sees E = X - A with a fresh A whose share a1 it never sees: nothing about X, as in
    stock Beaver; reusing B leaks nothing because no opening involves B (W - B is never opened;
    the stock protocol's danger in reusing a mask, W1 - B and W2 - B revealing W1 - W2, needs two
    different secrets under one mask, and W is fixed);
  * the dealer sees B = W - D, uniform to it because it never learns the seed; it learns shapes.
A client colluding with the dealer learns W (B + D), as with stock Beaver where dealer and client
together unmask everything: that is the `ttp` trust model. With `tfp` the server makes the triples
itself and sees everything anyway (labelled INSECURE).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import torch

from mpc.compat import import_crypten
from mpc.optimized.beaver import result_size
from mpc.optimized.ring_matmul import ring_matmul
from mpc.roles import SERVER


@dataclass(frozen=True)
class MaskSecret:
    """Made by the server once per loaded model; the seed goes to each client, never the dealer."""

    seed: str  # 64 hex digits: derives the client's fixed weight shares D
    mask_id: str  # 16 hex digits: names the dealer's copy of the server's shares B

    @classmethod
    def fresh(cls) -> MaskSecret:
        return cls(secrets.token_hex(32), secrets.token_hex(8))


@dataclass
class MaskedWeight:
    key: str  # the parameter's name in the model
    share: torch.Tensor  # this party's share: B on the server, D on the client
    client_share: torch.Tensor  # D (the client's share; the server derives it from the seed)


def client_share(seed: str, key: str, shape: torch.Size) -> torch.Tensor:
    """D for one weight: uniform int64 from a generator seeded by (seed, key)."""
    from crypten.common.rng import generate_random_ring_element

    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return generate_random_ring_element(shape, generator=generator)


def masked_weight_names(model: torch.nn.Module) -> list[str]:
    """Every parameter used as the right operand of a matmul: Linear weights and the (tied)
    token embedding, which both the embedding and the LM head multiply by."""
    from models.gpt import Linear

    names = ["transformer.wte.weight"]
    for name, module in model.named_modules():
        if isinstance(module, Linear):
            names.append(f"{name}.weight")
    return names


class WeightMasks:
    """The masked weights of one session and the matmul that uses them."""

    def __init__(self, rank: int, secret: MaskSecret, dealer: str) -> None:
        self.rank, self.secret, self.dealer = rank, secret, dealer
        self.by_storage: dict[int, MaskedWeight] = {}

    def share_weights(self, model: torch.nn.Module, crypten: Any, precision_bits: int) -> None:
        """Replace each masked weight by an MPCTensor with the fixed shares (B, D)."""
        encoder = crypten.encoder.FixedPointEncoder(precision_bits=precision_bits)
        for name in masked_weight_names(model):
            module_name, _, attribute = name.rpartition(".")
            module = model.get_submodule(module_name)
            weight = module._parameters.pop(attribute).detach()
            delta = client_share(self.secret.seed, name, weight.shape)
            share = encoder.encode(weight) - delta if self.rank == SERVER else delta
            setattr(module, attribute, crypten.mpc.MPCTensor.from_shares(share, precision_bits))
            self.by_storage[share.untyped_storage().data_ptr()] = MaskedWeight(name, share, delta)

    def find(self, y: Any) -> tuple[MaskedWeight, bool] | None:
        """(weight, transposed) when `y` (an ArithmeticSharedTensor) is a masked weight or its
        transpose (the tied LM head multiplies by wte^T); None for anything else."""
        share = y.share
        weight = self.by_storage.get(share.untyped_storage().data_ptr())
        if weight is None or share.dim() != 2:
            return None
        if share.shape == weight.share.shape and share.stride() == weight.share.stride():
            return weight, False
        if share.shape == weight.share.t().shape and share.stride() == weight.share.t().stride():
            return weight, True
        return None

    def matmul(self, x: Any, weight: MaskedWeight, transposed: bool) -> Any:
        """X W from the fixed shares: open E = X - A only (16 |X| B, 1 round)."""
        import_crypten()
        from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor
        from crypten.mpc.primitives.beaver import IgnoreEncodings

        def oriented(t: torch.Tensor) -> torch.Tensor:
            return t.t() if transposed else t

        a, c = self.fixed_mask_pair(x.size(), weight, transposed)
        with IgnoreEncodings([a, x]):
            epsilon = (x - a).reveal()
        delta = oriented(weight.client_share)
        z = c.share + ring_matmul(a.share, delta)
        if self.rank == SERVER:
            z += ring_matmul(epsilon, oriented(weight.share + weight.client_share))  # E W
        return ArithmeticSharedTensor.from_shares(z, precision=0)

    def fixed_mask_shape(self, size, mask_id: str, key: str, transposed: bool) -> torch.Size:
        """The shape of the dealer's C = A B for a fixed-mask request (offline rehearsal)."""
        weight = next(w for w in self.by_storage.values() if w.key == key)
        shape = weight.share.t().shape if transposed else weight.share.shape
        return result_size("matmul", size, shape)

    def fixed_mask_pair(self, size: torch.Size, weight: MaskedWeight, transposed: bool):
        """Shares of a fresh A of `size` and of C = A B for the weight's fixed B."""
        import_crypten()
        from crypten.common.rng import generate_random_ring_element
        from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

        shape = weight.share.t().shape if transposed else weight.share.shape
        c_size = result_size("matmul", size, shape)
        if self.dealer == "tfp":  # party 0 knows B: it makes the pair itself (INSECURE mode)
            if self.rank == SERVER:
                a = generate_random_ring_element(size)
                c = ring_matmul(a, weight.share.t() if transposed else weight.share)
            else:
                a, c = torch.empty(size, dtype=torch.long), torch.empty(c_size, dtype=torch.long)
            share = ArithmeticSharedTensor
            return share(a, precision=0, src=SERVER), share(c, precision=0, src=SERVER)
        from crypten.mpc.provider.ttp_provider import TTPClient

        generator = TTPClient.get().get_generator()
        a = generate_random_ring_element(size, generator=generator)
        if self.rank == SERVER:
            request = ("fixed_mask", None, size, self.secret.mask_id, weight.key, transposed)
            c = TTPClient.get().ttp_request(*request)
        else:
            c = generate_random_ring_element(c_size, generator=generator)
        return tuple(ArithmeticSharedTensor.from_shares(t, precision=0) for t in (a, c))

    def upload_to_dealer(self) -> dict[str, float]:
        """Server, ttp: give the dealer every B of this model unless it already holds them (once
        per loaded model). Returns what it cost (bytes of B sent, seconds)."""
        import torch.distributed as dist
        from crypten.mpc.provider.ttp_provider import TTPClient

        crypten = import_crypten()
        comm = crypten.communicator.get()
        start, sent = time.perf_counter(), 0.0
        client = TTPClient.get()
        if int(client.ttp_request("has_masks", None, self.secret.mask_id)[0]) == 0:
            weights = list(self.by_storage.values())
            for index, weight in enumerate(weights):
                last = index == len(weights) - 1
                message = {
                    "function": "store_mask",
                    "device": None,
                    "args": (self.secret.mask_id, weight.key, tuple(weight.share.shape), last),
                    "kwargs": {},
                }
                ttp_rank = comm.get_ttp_rank()
                comm.send_obj(message, ttp_rank, client.ttp_group)
                dist.send(weight.share.contiguous(), dst=ttp_rank, group=client.comm_group)
                comm._log_communication(weight.share.numel())
                size = comm.recv_obj(ttp_rank, client.ttp_group)
                comm.broadcast(torch.empty(size, dtype=torch.long), ttp_rank, client.comm_group)
                sent += 8 * weight.share.numel()
        return {"bytes": sent, "wall_s": time.perf_counter() - start}
