"""The optimized profile's multiplications: CrypTen's Beaver protocol with fast exact kernels,
and matmuls against weights whose Beaver masks are reused across queries (`weight_masks`).

CrypTen looks its multiplication protocol up by name (its config key `mpc.protocol`, a name in
the arithmetic module's namespace): `install_multiplication` registers `OptimizedMultiplication`
there under CRYPTEN_PROTOCOL_NAME and swaps in dealer-side providers that know fixed-mask
triples. Everything else (elementwise multiplies, squares, binary ANDs) stays CrypTen's own code.

What each knob changes (numbers are identical to the stock profile's either way, bit for bit,
except for the fresh randomness):
  * `fast_matmul`: int64 products through float64 limbs (`ring_matmul`), in the parties and in
    the dealer; the triple's result shape is computed on the meta device instead of by a
    throw-away int64 product (CrypTen's TTP provider multiplies two random matrices only to learn
    the shape);
  * `weight_masks`: a matmul against a registered weight opens only X - A (`weight_masks`).
"""

from __future__ import annotations

from typing import Any

import torch

from mpc.compat import import_crypten
from mpc.optimized.ring_matmul import ring_matmul

CRYPTEN_PROTOCOL_NAME = "aero_beaver"


def result_size(op: str, size0: torch.Size, size1: torch.Size, *args, **kwargs) -> torch.Size:
    """The shape of `op(a, b)` without computing it."""
    meta0, meta1 = torch.empty(size0, device="meta"), torch.empty(size1, device="meta")
    return getattr(torch, op)(meta0, meta1, *args, **kwargs).size()


def ring_op(op: str, x: torch.Tensor, y: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return ring_matmul(x, y) if op == "matmul" else getattr(torch, op)(x, y, *args, **kwargs)


def beaver_matmul(x: Any, y: Any) -> Any:
    """CrypTen's Beaver matmul (open X - A and Y - B together, z = c + e B + A d + e d) with the
    products done by `ring_matmul`."""
    crypten = import_crypten()
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor
    from crypten.mpc.primitives.beaver import IgnoreEncodings

    a, b, c = crypten.mpc.get_default_provider().generate_additive_triple(
        x.size(), y.size(), "matmul", device=x.device
    )
    with IgnoreEncodings([a, b, x, y]):
        epsilon, delta = ArithmeticSharedTensor.reveal_batch([x - a, y - b])
    c._tensor += ring_matmul(epsilon, b._tensor)
    c._tensor += ring_matmul(a._tensor, delta)
    c += ring_matmul(epsilon, delta)  # public: party 0 adds it
    return c


class OptimizedMultiplication:
    """The object CrypTen calls for secret-times-secret multiplications (`protocol.mul(x, y)`,
    `protocol.matmul(x, y)`, ...) once `install_multiplication` has registered it."""

    def __init__(self) -> None:
        self.fast_matmul = False
        self.masks = None  # an mpc.optimized.weight_masks.WeightMasks while a session uses them

    def matmul(self, x: Any, y: Any) -> Any:
        if self.masks is not None:
            found = self.masks.find(y)
            if found is not None:
                return self.masks.matmul(x, *found)
        if self.fast_matmul:
            return beaver_matmul(x, y)
        return _beaver().matmul(x, y)

    def __getattr__(self, name: str) -> Any:  # mul, square, conv*, truncate: CrypTen's own
        return getattr(_beaver(), name)


def _beaver():
    import_crypten()
    from crypten.mpc.primitives import beaver

    return beaver


def _fast_providers(crypten: Any) -> dict[str, Any]:
    """TTP and TFP providers whose triples skip the throw-away product and use `ring_matmul`."""
    from crypten.common.rng import generate_random_ring_element
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor
    from crypten.mpc.provider import TrustedFirstParty, TrustedThirdParty
    from crypten.mpc.provider.ttp_provider import TTPClient

    comm = crypten.communicator

    class FastTTP(TrustedThirdParty):
        def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
            generator = TTPClient.get().get_generator(device=device)
            a = generate_random_ring_element(size0, generator=generator, device=device)
            b = generate_random_ring_element(size1, generator=generator, device=device)
            if comm.get().get_rank() == 0:
                request = ("additive", device, size0, size1, op, *args)
                c = TTPClient.get().ttp_request(*request, **kwargs)
            else:
                size = result_size(op, size0, size1, *args, **kwargs)
                c = generate_random_ring_element(size, generator=generator, device=device)
            return tuple(ArithmeticSharedTensor.from_shares(t, precision=0) for t in (a, b, c))

    class FastTFP(TrustedFirstParty):
        def generate_additive_triple(self, size0, size1, op, device=None, *args, **kwargs):
            a = generate_random_ring_element(size0, device=device)
            b = generate_random_ring_element(size1, device=device)
            c = ring_op(op, a, b, *args, **kwargs)
            return tuple(ArithmeticSharedTensor(t, precision=0, src=0) for t in (a, b, c))

    return {"TTP": FastTTP(), "TFP": FastTFP()}


PROTOCOL = OptimizedMultiplication()


def install_multiplication(fast_matmul: bool) -> OptimizedMultiplication:
    """Register `OptimizedMultiplication` as CrypTen's multiplication protocol in this process
    (a party process serves one session, so nothing is restored)."""
    crypten = import_crypten()
    from crypten.mpc.primitives import arithmetic

    PROTOCOL.fast_matmul = fast_matmul
    setattr(arithmetic, CRYPTEN_PROTOCOL_NAME, PROTOCOL)
    crypten.cfg.mpc.protocol = CRYPTEN_PROTOCOL_NAME
    if fast_matmul:
        providers = vars(crypten.mpc)["__SUPPORTED_PROVIDERS"]
        providers.update(_fast_providers(crypten))
    return PROTOCOL
