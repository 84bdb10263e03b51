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

from mpc.compat import import_crypten
from mpc.cost.types import ZERO
from mpc.forms.base import Form

# The reciprocal's input S / K is kept at or below this many terms: CrypTen's reciprocal
# overflows near 256 (a flat row of 256 gave errors of 1e9).
SOFTMAX_ROWS_IN_RANGE = 128


def _masked(numerator: Any, keep: Any) -> Any:
    """The exponentials times the public 0/1 mask: masked weights become exactly 0 (local)."""
    return numerator if keep is None else numerator * keep


def _normalized(numerator: Any, dim: int, scale: float) -> Any:
    """numerator / S, S its (positive) row sum, as numerator * (1 / (S / K)) / K: the public
    K = `scale` keeps S / K inside CrypTen's reciprocal range. Dividing by K is a local
    truncation (no traffic); K = 1 skips it."""
    crypten = import_crypten()
    row_sum = numerator.sum(dim, keepdim=True)
    with crypten.cfg.temp_override({"functions.reciprocal_all_pos": True}):
        if scale == 1.0:
            return numerator * row_sum.reciprocal()
        inverse = (row_sum * (1.0 / scale)).reciprocal()
    return numerator * inverse * (1.0 / scale)


def _normalized_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """exp of the (shifted) logits, the reciprocal of the row sums (all positive; a public scale
    is free), and e * (1 / sum): (..., n) times (..., 1)."""
    approx, rows = p.approx, (*shape[:-1], 1)
    exp_iterations = approx.exp_iterations
    reciprocal = p.reciprocal(
        rows, approx.reciprocal_method, approx.reciprocal_iterations, exp_iterations
    )
    return p.exp(shape, exp_iterations) + reciprocal + p.mul(shape, rows)


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
    return _normalized(numerator, dim, 1.0)


def softmax_stock_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """A row of one entry is the constant 1 (free); else the row max (`max_log_reduction`),
    exp(x - max), the reciprocal of the row sums and the product. Row 128: 1488 B/elem,
    116 rounds."""
    if shape[-1] == 1:
        return ZERO
    return p.max_log_reduction(shape) + _normalized_cost(p, shape)


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
    return _normalized(numerator, dim, max(1.0, scores.size(dim) / SOFTMAX_ROWS_IN_RANGE))


def softmax_tree_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """`tree_max`: per halving level a relu (ltz and multiply) of the n // 2 pairs (an odd entry
    passes up for free); then as stock. Row 128: 620 B/elem, 100 rounds."""
    if shape[-1] == 1:
        return ZERO
    return p.tree_max(shape) + _normalized_cost(p, shape)


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
    least -480; masked entries may hold anything (their exponentials are multiplied by 0). The
    limit is fixed point: S / K spans [e^(-2b), T], and at
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
    bound = approx.softmax_logit_bound
    length = scores.size(dim)
    scale = math.exp(bound) * max(1.0, length / SOFTMAX_ROWS_IN_RANGE)  # public K
    taylor = 1.0 / 2.0 ** (approx.exp_iterations + 1)
    numerator = _masked((scores + scores.square() * taylor).exp(), keep)
    return _normalized(numerator, dim, scale)


def softmax_max_free_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """z + z^2 / 2^(n+1) (a square), then exp, reciprocal and product as stock (the public
    rescale is free). Row 128: 165 B/elem, 38 rounds."""
    return p.square(shape) + _normalized_cost(p, shape)


SOFTMAX = {
    "stock": Form("stock", softmax_stock, softmax_stock_cost),
    "tree": Form("tree", softmax_tree, softmax_tree_cost),
    "max_free": Form("max_free", softmax_max_free, softmax_max_free_cost),
}
