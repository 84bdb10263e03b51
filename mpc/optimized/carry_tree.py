"""The plan of the packed comparison (`mpc.optimized.packed_compare`): which bit planes each
Beaver AND round multiplies. Plain arithmetic on shapes, no CrypTen, so that the cost model
(`mpc.cost.primitives`) reads the same plan the protocol runs without importing CrypTen.
"""

from __future__ import annotations

import itertools

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


# ---- radix 4: three levels of 4-input groups, each one round of multi-input ANDs --------------
# Level 1 reads the raw bits of 16 groups of 4 (bit 63 is padded as "propagate", a = 1, b = 0,
# so the carry out of all 64 is the carry out of bits 0..62). Its inputs per group, by index:
# a_0..a_3 (0-3), b_0..b_3 (4-7), p_0..p_3 (8-11); g_i = a_i b_i is never formed on its own.
# Levels 2 and 3 read the (G, P) of 4 groups below: G_0..G_3 (0-3), P_0..P_3 (4-7).
# A group's G is the XOR of its generate terms (mutually exclusive), its P one product.
FIRST_LEVEL_TERMS = {
    "G": [(3, 7), (11, 2, 6), (11, 10, 1, 5), (11, 10, 9, 0, 4)],
    "P": [(11, 10, 9, 8)],
}
UPPER_LEVEL_TERMS = {
    "G": [(3,), (7, 2), (7, 6, 1), (7, 6, 5, 0)],
    "P": [(7, 6, 5, 4)],
}
RADIX4_GROUPS = (16, 4, 1)  # groups after each level


def radix4_levels() -> list[tuple[int, dict[str, list[tuple[int, ...]]]]]:
    """(groups formed, terms) per level; the last level needs only G."""
    levels = []
    for number, groups in enumerate(RADIX4_GROUPS):
        terms = FIRST_LEVEL_TERMS if number == 0 else UPPER_LEVEL_TERMS
        if groups == 1:
            terms = {"G": terms["G"]}
        levels.append((groups, terms))
    return levels


def product_plan(terms: list[tuple[int, ...]]) -> tuple[list[int], list[tuple[int, ...]]]:
    """(inputs to open, mask products the dealer supplies) for the multi-input ANDs `terms`.

    A product of k masked inputs expands as XOR over S of (AND of the opened e_i outside S) times
    the product of the masks in S, so the dealer supplies every product of 2 or more masks that
    a term contains (each once); inputs that only appear alone are used as they are."""
    opened = sorted({i for term in terms if len(term) > 1 for i in term})
    subsets = set()
    for term in terms:
        if len(term) > 1:
            for size in range(2, len(term) + 1):
                subsets.update(itertools.combinations(sorted(term), size))
    return opened, sorted(subsets, key=lambda s: (len(s), s))
