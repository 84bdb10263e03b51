"""The dealer's side of one session: CrypTen's TTP server plus the optimized protocol's requests.

Requests it adds to CrypTen's (additive, square, binary, wraps, B2A), all from party 0:
  configure(fast_matmul)  use `ring_matmul` for matmul triples from now on (optimized profile);
  has_masks(mask_id)      1 if the mask shares B of that model are stored complete, else 0;
  store_mask(mask_id, key, shape, last)  receive one B (sent right after the request) and keep it;
  fixed_mask(size, mask_id, key, transposed)  party 0's share of C = A B for a fresh A of `size`
                          against the stored B (or B^T), A drawn from both parties' generators
                          exactly as CrypTen's own triples are.
The stock requests behave exactly as CrypTen's unless `configure` asked for the fast kernel.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch

from mpc.optimized.beaver import ring_op
from mpc.optimized.mask_store import MaskStore
from mpc.optimized.offline_dealer import answer_plan
from mpc.optimized.packed_compare import answer_products
from mpc.optimized.ring_matmul import ring_matmul


def serve_dealer_session(
    crypten: Any, store: MaskStore | None = None, startup: threading.Timer | None = None
) -> None:
    """Run the TTP request loop until party 0 says "terminate" (CrypTen's TTPServer loop);
    `startup`, a watchdog timer, is cancelled once both parties have their generator seeds."""
    import torch.distributed as dist
    from crypten.mpc.provider.ttp_provider import TTPServer

    class AeroDealer(TTPServer):
        def __init__(self) -> None:
            self.fast_matmul = False
            self.store = store or MaskStore.default(os.getppid())
            super().__init__()  # runs the request loop

        def _setup_generators(self) -> None:
            super()._setup_generators()
            if startup is not None:
                startup.cancel()

        def configure(self, fast_matmul: bool) -> torch.Tensor:
            self.fast_matmul = bool(fast_matmul)
            return torch.ones(1, dtype=torch.long)

        def additive(self, size0, size1, op, *args, **kwargs):
            if not self.fast_matmul:
                return super().additive(size0, size1, op, *args, **kwargs)
            a = self._get_additive_PRSS(size0)
            b = self._get_additive_PRSS(size1)
            c = ring_op(op, a, b, *args, **kwargs)
            return c - self._get_additive_PRSS(c.size(), remove_rank=True)

        def has_masks(self, mask_id: str) -> torch.Tensor:
            return torch.tensor([int(self.store.complete(mask_id))])

        def store_mask(self, mask_id: str, key: str, shape: tuple, last: bool) -> torch.Tensor:
            share = torch.empty(shape, dtype=torch.long)
            dist.recv(share, src=0, group=self.comm_group)
            self.store.store(mask_id, key, share, last)
            return torch.ones(1, dtype=torch.long)

        def products(self, size, subsets) -> torch.Tensor:
            """Mask products of the radix-4 packed comparison's multi-input ANDs."""
            return answer_products(self, size, subsets)

        def prepare(self, requests: list) -> torch.Tensor:
            """The offline phase: a whole query's requests answered in one message."""
            return answer_plan(self, requests)

        def fixed_mask(self, size, mask_id: str, key: str, transposed: bool) -> torch.Tensor:
            a = self._get_additive_PRSS(size)
            mask = self.store.load(mask_id, key)
            c = ring_matmul(a, mask.t() if transposed else mask)
            return c - self._get_additive_PRSS(c.size(), remove_rank=True)

    AeroDealer()
