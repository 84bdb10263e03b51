"""The plan of the packed comparison (`mpc.optimized.packed_compare`): which bit planes each
Beaver AND round multiplies. Plain arithmetic on shapes, no CrypTen, so that the cost model
(`mpc.cost.primitives`) reads the same plan the protocol runs without importing CrypTen.
"""

from __future__ import annotations

WORD = 64  # bits per ring element and per packed word
SUM_BITS = WORD - 1  # the carry out of bits 0..62 decides the sign


def words_for(elements: int) -> int:
    """Packed words W holding one bit of each of `elements` values."""
    return -(-elements // WORD)


def tree_levels() -> list[tuple[int, bool]]:
    """(pairs combined, G only) per Brent-Kung carry-tree level: 63 -> 32 -> ... -> 1 groups."""
    levels, groups = [], SUM_BITS
    while groups > 1:
        levels.append((groups // 2, groups == 2))
        groups = (groups + 1) // 2
    return levels


def and_shapes(words: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(x, y) share shapes of every Beaver AND round: generate, then one per tree level (x is
    opened once against the stacked rows of y)."""
    shapes = [((SUM_BITS, words), (SUM_BITS, words))]
    for pairs, g_only in tree_levels():
        shapes.append(((pairs, words), (1 if g_only else 2, pairs, words)))
    return shapes
