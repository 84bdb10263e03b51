"""`ring_matmul` equals torch's int64 matmul bit for bit (wrapping modulo 2^64)."""

from __future__ import annotations

import pytest
import torch

from mpc.optimized.ring_matmul import MAX_INNER, ring_matmul

SHAPES = [
    ((128, 96), (96, 200)),  # the limb path
    ((1, 4, 32, 16), (1, 4, 16, 32)),  # batched, as attention scores
    ((2, 40, 33), (33, 9)),  # batch times a weight (broadcast)
    ((1, 20, 3000), (3000, 24)),  # a wide inner dimension, as the one-hot embedding
    ((1, 1, 64), (64, 500)),  # one row: stays on the int64 loop
    ((50, 7), (7,)),  # matrix times vector
]


def ring(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=generator)


@pytest.mark.parametrize(("x_shape", "y_shape"), SHAPES)
def test_equals_int64_matmul_exactly(x_shape, y_shape):
    generator = torch.Generator().manual_seed(sum(x_shape) + sum(y_shape))
    x, y = ring(*x_shape, generator=generator), ring(*y_shape, generator=generator)
    assert torch.equal(ring_matmul(x, y), torch.matmul(x, y))


def test_ring_extremes_wrap_like_int64():
    extremes = torch.tensor([-(2**63), 2**63 - 1, -1, 0, 1, 2**32, -(2**47)], dtype=torch.long)
    x = extremes.repeat(40, 1)  # (40, 7): enough rows for the limb path
    y = extremes.flip(0).repeat(9, 1).t().contiguous()  # (7, 9)
    assert torch.equal(ring_matmul(x, y), torch.matmul(x, y))


def test_other_dtypes_and_huge_inner_dimensions_fall_back():
    a, b = torch.randn(20, 5), torch.randn(5, 3)
    assert torch.equal(ring_matmul(a, b), torch.matmul(a, b))
    assert MAX_INNER == 2**21  # float64 stays exact while k (2^16 - 1)^2 < 2^53
