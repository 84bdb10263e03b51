"""Attention softmax forms under MPC. Errors are max abs errors against `torch.softmax` on causal
rows (one in-process party, 16 fraction bits, `ApproxConfig` defaults; `tests/test_mpc_ops.py`
pins them); costs are bytes per element logged by one party and rounds at T = 128.

Masking is exact in every form: the exponentials are multiplied by the public 0/1 `keep` before
the row sum (a local multiply, no traffic, so no form's cost changes), and a masked weight is
exactly 0 whatever its logit held. The model also puts a finite fill (`ModelConfig.mask_value`,
`models.ops.fill_masked`) into the masked logits: the forms that take a row max need it below
every row's largest kept logit; the exponential of a masked entry may then be garbage (exp's
limit form holds only on about (-2^n, 0]), which the mask multiplies by 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mpc.compat import import_crypten
from mpc.cost.types import ZERO
from mpc.forms.base import Form

# The reciprocal's input S / K is kept at or below this many terms: CrypTen's reciprocal
# overflows near 256 (a flat row of 256 gave errors of 1e9).
SOFTMAX_ROWS_IN_RANGE = 128


# Thresholds per octave and Newton steps: quarter octaves leave |1 - x y0| <= 0.086 (two steps:
# 5.6e-5); they need x >= 1/2, where the guess's smallest value 2^(-m/4) stays well above the
# fixed-point resolution (its public weights round to 2^-16 each). Wider ranges (the max-free
# softmax's sums reach e^-2b) take one threshold per octave, whose power-of-two weights are exact:
# |1 - x y0| <= 1/3, three steps: 1.5e-4.
FINE, COARSE = (4, 2), (1, 3)


def bracket_plan(low: float, high: float) -> tuple[int, int, int, int]:
    """(a, steps per octave, thresholds, Newton steps): the thresholds are 2^(a + j / steps),
    j = 1 .. count, for x in [low, high]."""
    a = math.floor(math.log2(low))
    b = math.ceil(math.log2(high))
    steps, iterations = FINE if low >= 0.5 else COARSE
    return a, steps, steps * (b - a) - 1, iterations


def bracketed_reciprocal(x: Any, low: float, high: float) -> Any:
    """1 / x for secret x known to lie in [low, high] (public bounds), from one comparison and
    two Newton steps (8 rounds with radix-4 comparisons; 10 for a range reaching below 1/2)
    instead of CrypTen's 28 (an exp-based guess, 10 Newton steps).

    One batched comparison gives the bits b_j = [x >= 2^(a + j/s)] for the thresholds inside the
    range (s per octave); they are monotone, so with m the count of set bits 2^(-m/s) is the
    public-weight sum 1 - sum_j (2^(-(j-1)/s) - 2^(-j/s)) b_j (local). x lies in
    [2^(a + m/s), 2^(a + (m+1)/s)), so y0 = c 2^-(a + m/s) with c = 2 / (1 + 2^(1/s)) puts x y0
    within (2^(1/s) - 1) / (2^(1/s) + 1) of 1 (0.086 for s = 4), and each Newton step
    y (2 - x y) squares the error. Measured max abs error 6.1e-5 on [1, 128], 1.7e-4 on
    [e^-5, 128] (the 16-bit resolution of 1/x). One element per softmax row is compared."""
    crypten = import_crypten()
    a, steps, count, iterations = bracket_plan(low, high)
    scale = 2.0 / (1.0 + 2.0 ** (1.0 / steps)) * 2.0**-a
    if count:
        levels = [j / steps for j in range(1, count + 1)]
        bits = crypten.stack([x - 2.0 ** (a + level) for level in levels]) >= 0  # one comparison
        # comparisons come out as integers (encoder scale 1): re-encode them as fixed point
        # (a local multiply of the shares) before the fractional public weights
        bits._tensor.encode_(crypten.encoder.FixedPointEncoder())
        drops = [2.0 ** -(level - 1 / steps) - 2.0**-level for level in levels]
        weights = torch.tensor(drops).view(-1, *[1] * x.dim())
        guess = (1.0 - (bits * weights).sum(0)) * scale
    else:
        guess = x * 0.0 + scale
    for _ in range(iterations):
        guess = guess * (2.0 - x * guess)
    return guess


def bracketed_reciprocal_cost(p: Any, rows: tuple[int, ...], low: float, high: float) -> Any:
    """One comparison of (k, *rows), k the thresholds inside the range (public weights and the
    stack are free), then per Newton step two multiplies of `rows`."""
    _, _, count, iterations = bracket_plan(low, high)
    compare = p.ltz((count, *rows)) if count else ZERO
    return compare + iterations * 2 * p.mul(rows, rows)


def _masked(numerator: Any, keep: Any) -> Any:
    """The exponentials times the public 0/1 mask: masked weights become exactly 0 (local)."""
    return numerator if keep is None else numerator * keep


def _normalized(numerator: Any, dim: int, scale: float, approx: Any, sums: tuple) -> Any:
    """numerator / S, S its (positive) row sum, as numerator * (1 / (S / K)) / K: the public
    K = `scale` keeps S / K inside CrypTen's reciprocal range (its reciprocal overflows near 256:
    a flat row of 256 gave errors of 1e9). Dividing by K is a local truncation (no traffic);
    K = 1 skips it. `sums` = (lowest, highest) S / K can be: with softmax_reciprocal
    "bracketed" the reciprocal starts from comparisons against the powers of two between."""
    crypten = import_crypten()
    row_sum = numerator.sum(dim, keepdim=True)
    scaled = row_sum if scale == 1.0 else row_sum * (1.0 / scale)
    if approx is not None and approx.softmax_reciprocal == "bracketed":
        inverse = bracketed_reciprocal(scaled, *sums)
    else:
        with crypten.cfg.temp_override({"functions.reciprocal_all_pos": True}):
            inverse = scaled.reciprocal()
    return numerator * inverse if scale == 1.0 else numerator * inverse * (1.0 / scale)


def _normalized_cost(p: Any, shape: tuple[int, ...], sums: tuple, crypten_own: bool = False) -> Any:
    """exp of the (shifted) logits, the reciprocal of the row sums (all positive; a public scale
    is free), and e * (1 / sum): (..., n) times (..., 1). `crypten_own`: CrypTen's softmax,
    which always takes CrypTen's reciprocal."""
    approx, rows = p.approx, (*shape[:-1], 1)
    exp_iterations = approx.exp_iterations
    if approx.softmax_reciprocal == "bracketed" and not crypten_own:
        reciprocal = bracketed_reciprocal_cost(p, rows, *sums)
    else:
        reciprocal = p.reciprocal(
            rows, approx.reciprocal_method, approx.reciprocal_iterations, exp_iterations
        )
    return p.exp(shape, exp_iterations) + reciprocal + p.mul(shape, rows)


def tree_sums(length: int) -> tuple[float, tuple[float, float]]:
    """(K, range of S / K) for the tree softmax of rows of `length`: the row max contributes
    exp(0) = 1, so S lies in [1, length]; K scales rows longer than 128 into range."""
    scale = max(1.0, length / SOFTMAX_ROWS_IN_RANGE)
    return scale, (1.0 / scale, length / scale)


def max_free_sums(length: int, bound: float) -> tuple[float, tuple[float, float]]:
    """(K, range of S / K) for the max-free softmax: every row max lies in [-b, b], so S lies in
    [e^-b, length e^b]; K = e^b max(1, length / 128)."""
    scale = math.exp(bound) * max(1.0, length / SOFTMAX_ROWS_IN_RANGE)
    return scale, (math.exp(-bound) / scale, length * math.exp(bound) / scale)


# ---- stock: CrypTen's own ---------------------------------------------------------------------
def softmax_stock(scores: Any, dim: int, approx: Any = None, keep: Any = None) -> Any:
    """CrypTen's softmax (`crypten.common.functions.approximations.softmax`) step by step: the
    row max, exp(x - max), the exponentials times the mask, the reciprocal of the row sum. The
    same operations and cost as shipped (it is the reference) plus the free mask. Valid for any
    row whose kept entries lie within ~500 of its max and whose masked entries (the fill, -1e6
    by default) lie below it, up to ~200 entries (the sum's reciprocal explodes near 256: a flat
    row of 256 gives errors of 1e9). Max abs error 3.7e-3 (T = 16) and 8.4e-3 (T = 128) on causal
    rows of N(0, 9) logits, the same at any row offset (rows near -1e4 included); 1488 B/element,
    116 rounds at T = 128."""
    if scores.size(dim) == 1:
        return scores.softmax(dim)  # CrypTen's shortcut: the constant 1 (no traffic)
    numerator = _masked((scores - scores.max(dim, keepdim=True)[0]).exp(), keep)
    return _normalized(numerator, dim, 1.0, None, (1.0, scores.size(dim)))  # CrypTen's reciprocal


def softmax_stock_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """A row of one entry is the constant 1 (free); else the row max (`max_log_reduction`),
    exp(x - max), the reciprocal of the row sums and the product. Row 128: 1488 B/elem,
    116 rounds."""
    if shape[-1] == 1:
        return ZERO
    sums = tree_sums(shape[-1])[1]
    return p.max_log_reduction(shape) + _normalized_cost(p, shape, sums, crypten_own=True)


# ---- tree: the row max by a halving tree -------------------------------------------------------
def tree_max(x: Any, dim: int = -1) -> Any:
    """Max along `dim` (kept as size 1) by halving: the first half against the second,
    max(a, b) = b + relu(a - b), an odd entry passing up unchanged; ceil(log2 n) levels of one
    comparison and one multiply on at most n / 2 entries each. CrypTen's `max` instead builds the
    one-hot argmax (an equality test and a random tie-break over the whole row), which the
    softmax never uses: at n = 128 that is 1340 B/element against 464 here."""
    crypten = import_crypten()
    dim = dim % x.dim()
    while x.size(dim) > 1:
        n = x.size(dim)
        half = n // 2
        first, second, rest = x.split([half, half, n - 2 * half], dim=dim)
        larger = (first - second).relu() + second
        x = crypten.cat([larger, rest], dim=dim) if n % 2 else larger
    return x


def softmax_tree(scores: Any, dim: int, approx: Any = None, keep: Any = None) -> Any:
    """CrypTen's softmax (exp(x - max) times the reciprocal of the row sum) with the max from
    `tree_max`: the same accuracy as "stock", and rows longer than 128 have their sum scaled into
    the reciprocal's range (any length); 620 B/element, 100 rounds at T = 128 with stock
    comparisons."""
    if scores.size(dim) == 1:
        return scores * 0.0 + 1.0
    # row sums in [1, n]: the max (a kept entry: the fill lies below it) gives 1
    numerator = _masked((scores - tree_max(scores, dim)).exp(), keep)
    scale, sums = tree_sums(scores.size(dim))
    return _normalized(numerator, dim, scale, approx, sums)


def softmax_tree_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """`tree_max`: per halving level a relu (ltz and multiply) of the n // 2 pairs (an odd entry
    passes up for free); then as stock. Row 128: 620 B/elem, 100 rounds."""
    if shape[-1] == 1:
        return ZERO
    return p.tree_max(shape) + _normalized_cost(p, shape, tree_sums(shape[-1])[1])


# ---- max_free: no row max, for bounded logits ------------------------------------------------
def softmax_max_free(scores: Any, dim: int, approx: Any, keep: Any = None) -> Any:
    """Softmax without the row max, for rows whose max lies in [-b, b], b = logit bound.

    e = exp(z + z^2 / 2^(n+1)), n = exp_iterations: the squared term makes CrypTen's base
    1 + z / 2^n the second-order Taylor base of exp(z / 2^n), so the limit form errs by
    z^3 / (6 4^n) (2e-4 at |z| = 4) instead of z^2 / 2^(n+1) (3 % at |z| = 4) and
    positive exponents up to b are accurate too. The denominator S = sum(e) is scaled by the
    public K = e^b max(1, T / 128) into the reciprocal's range, and the output is e / K times
    1 / (S / K): the largest e / K is at most 1, as in the stock softmax.

    Accurate when every row's largest kept logit m lies in [-b, b] and every kept entry is at
    least -480; masked entries may hold anything (their exponentials are multiplied by 0).
    The limit is fixed point: S / K spans [e^(-2b), T], and at
    16 fraction bits S / K = e^(-2b) keeps only ~2^16 e^(-2b) levels. Max abs error over
    causal rows of T tokens, entries N(0, sigma^2) shifted so the row max is m, for m in
    [-b, b] (step 0.5) and sigma in {0, 0.3, 2, 6}:

        b      2.0     2.5 (default)  3.0     3.5     4.0
        T=16   1.6e-3  2.6e-3         6.2e-3  1.7e-2  6.1e-2
        T=128  3.0e-3  6.3e-3         1.5e-2  2.0e-2  6.1e-2

    (At 20 fraction bits b = 3 gives 6e-4; b = 4 needs more reciprocal iterations.) Below
    -b the error grows (T = 128, b = 2.5: 1e-2 at m = -3.5); above b + 0.7 a row of 128
    equal logits overflows the reciprocal (garbage, ~1e8). Use the stock form elsewhere.
    Cost at T = 128: 165 B/element (16 of them for the square), 38 rounds.
    """
    scale, sums = max_free_sums(scores.size(dim), approx.softmax_logit_bound)  # public K
    taylor = 1.0 / 2.0 ** (approx.exp_iterations + 1)
    numerator = _masked((scores + scores.square() * taylor).exp(), keep)
    return _normalized(numerator, dim, scale, approx, sums)


def softmax_max_free_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """z + z^2 / 2^(n+1) (a square), then exp, reciprocal and product as stock (the public
    rescale is free). Row 128: 165 B/elem, 38 rounds."""
    sums = max_free_sums(shape[-1], p.approx.softmax_logit_bound)[1]
    return p.square(shape) + _normalized_cost(p, shape, sums)


SOFTMAX = {
    "stock": Form("stock", softmax_stock, softmax_stock_cost, max_row=200),
    "tree": Form("tree", softmax_tree, softmax_tree_cost),
    "max_free": Form("max_free", softmax_max_free, softmax_max_free_cost),
}
