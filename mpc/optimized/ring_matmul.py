"""Exact matrix products in the ring Z_2^64 through float64 BLAS.

Shares are int64 tensors and every product of the protocol must be exact modulo 2^64. torch's
int64 matmul on CPU is a plain loop: 128 x 768 @ 768 x 3072 takes ~1.1 s on one thread, where the
same float64 product takes ~0.02 s. Splitting each operand into four 16-bit limbs makes every limb
product an integer below 2^32 k, exact in float64's 53-bit mantissa while the inner dimension k
stays below 2^21; the ten limb products with i + j <= 3 (higher ones vanish modulo 2^64) are summed
back with wrapping int64 arithmetic. The result is bit-identical to `torch.matmul` on int64.
"""

from __future__ import annotations

import torch

LIMB_BITS = 16
LIMBS = 64 // LIMB_BITS
LIMB_MASK = (1 << LIMB_BITS) - 1
MAX_INNER = 1 << (53 - 2 * LIMB_BITS)  # k (2^16 - 1)^2 must stay below 2^53
# Splitting y into limbs costs about as much as 16 rows of the int64 loop: fewer rows of x (a
# matrix-vector product, the last position's LM head) stay on the int64 loop.
MIN_ROWS = 16


def limbs(x: torch.Tensor) -> list[torch.Tensor]:
    """The four unsigned 16-bit limbs of int64 `x` (two's complement bits), as float64."""
    return [((x >> (LIMB_BITS * i)) & LIMB_MASK).to(torch.float64) for i in range(LIMBS)]


def ring_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`torch.matmul(x, y)` for int64 tensors, wrapping modulo 2^64 exactly as int64 does."""
    if x.dtype != torch.int64 or y.dtype != torch.int64:
        return torch.matmul(x, y)
    inner = x.shape[-1]
    if inner >= MAX_INNER or x.numel() < MIN_ROWS * inner:
        return torch.matmul(x, y)
    x_limbs, y_limbs = limbs(x), limbs(y)
    total = None
    for i, x_limb in enumerate(x_limbs):
        # One BLAS call per x limb against the y limbs that still matter (i + j <= 3), side by side.
        partners = y_limbs[: LIMBS - i]
        if y.dim() == 1:
            products = [torch.matmul(x_limb, y_limb) for y_limb in partners]
        else:
            wide = torch.matmul(x_limb, torch.cat(partners, dim=-1))
            products = list(wide.split(y.shape[-1], dim=-1))
        for j, product in enumerate(products):
            term = product.to(torch.int64) << (LIMB_BITS * (i + j))
            total = term if total is None else total + term
    return total
