"""What each MPC primitive and each CrypTen function costs one party, in bytes and rounds.

`CrypTenCosts` turns shapes into `Cost(bytes, rounds)` exactly as CrypTen's communicator logs them
(`crypten/communicator/communicator.py`, `_logging`; 8 bytes per logged element, one round per
call), for CrypTen 0.4.1 as installed (two parties, Beaver triples) with the protocol knobs of an
`ApproxConfig` (the optimized profile's weight masks and packed comparison change the primitives
below; every composed formula built on them follows). `mpc.cost.walk.predict_costs` walks the
model with it; the nonlinearity forms (`mpc.forms`) compose these primitives.

Logging rules everything below rests on (each party, each call = 1 round):
    all_reduce of n elements (a batched opening of masked values): 2 n elements = 16 n B;
    send / recv of n elements (a reveal to one party, `mpc.session.reveal`): 8 n B, both sides;
    TTP dealer (rank 0 only): send_obj(request dict) logs sys.getsizeof(dict) B, recv_obj(result
    size) logs sys.getsizeof(torch.Size) B, broadcast(result share) logs 8 n B: 3 rounds.
The TFP dealer makes every triple inside party 0 and logs nothing. Truncation after a fixed-point
multiply is local with two parties (CrypTen only runs its wraps protocol for three or more).
"""

from __future__ import annotations

import math
import sys

import torch

from mpc.approx import ApproxConfig
from mpc.cost.types import ZERO, Cost, Shape
from mpc.optimized.carry_tree import and_shapes, product_plan, radix4_levels, words_for
from mpc.roles import PARTY_NAMES, SERVER

LOG_BITS = 6  # CrypTen's carry circuits: log2 of the 64-bit ring
# CrypTen's own defaults (configs/default.yaml) for keys `ApproxConfig` does not set.
LOG_ITERATIONS, LOG_EXP_ITERATIONS, LOG_ORDER = 2, 8, 8
SIGMOID_EXP_ITERATIONS, SIGMOID_RECIPROCAL_ITERATIONS = 9, 3  # CrypTen's sigmoid overrides
CHEBYSHEV_TERMS = 32  # functions.sigmoid_tanh_terms
PAIRWISE_PROD_LIMIT = 128  # pairwise argmax ANDs its r - 1 comparisons by a product below this


def numel(shape: Shape) -> int:
    return math.prod(shape)


def broadcast(x: Shape, y: Shape) -> Shape:
    return tuple(torch.broadcast_shapes(x, y))


def matmul_shape(x: Shape, y: Shape) -> Shape:
    return tuple(torch.matmul(torch.empty(x, device="meta"), torch.empty(y, device="meta")).shape)


def ttp_request_bytes(result: Shape) -> int:
    """Bytes rank 0 logs for one TTP request, computed as CrypTen computes them (sys.getsizeof of
    the same kinds of object, so exact on any Python): the 4-key request dict (shallow, so its
    size does not depend on the arguments: 184 B on CPython 3.11), the torch.Size of the result
    the dealer sends back (48 + 8 ndim B there) and the result share it broadcasts (8 B each)."""
    message = {"function": "", "device": None, "args": (), "kwargs": {}}  # as in ttp_request
    return sys.getsizeof(message) + sys.getsizeof(torch.Size(result)) + 8 * numel(result)


class CrypTenCosts:
    """CrypTen 0.4.1, two parties, 64-bit ring, Beaver triples from a TFP or TTP dealer; `party`
    is "server" (rank 0) or "client" (rank 1)."""

    def __init__(self, approx: ApproxConfig, dealer: str, party: str) -> None:
        if dealer not in ("tfp", "ttp") or party not in PARTY_NAMES.values():
            raise ValueError(f"dealer {dealer!r} / party {party!r}: use tfp|ttp, server|client")
        self.approx, self.dealer, self.party = approx, dealer, party

    # ---- primitives -----------------------------------------------------------------------
    def open(self, *shapes: Shape) -> Cost:
        """Open masked values to both parties: one batched all_reduce, 16 B per element."""
        return Cost(16 * sum(numel(s) for s in shapes), 1)

    def reveal_to_one(self, shape: Shape) -> Cost:
        """`mpc.session.reveal.reveal_to`: the sender's share, one way; the sender's `send` and the
        receiver's `recv` each log 8 B per element, one round (what CrypTen's reduce logged)."""
        return Cost(8 * numel(shape), 1)

    def dealer_request(self, result: Shape) -> Cost:
        """Correlated randomness of one protocol call whose dealer-made share has shape `result`:
        with TTP rank 0 logs the request (3 rounds); TFP and rank 1 generate it locally; with
        `offline_dealer` it was delivered before the query (nothing online)."""
        if self.approx.offline_dealer:
            return ZERO
        if self.dealer == "ttp" and self.party == PARTY_NAMES[SERVER]:
            return Cost(ttp_request_bytes(result), 3)
        return ZERO

    def mul(self, x: Shape, y: Shape) -> Cost:
        """Beaver multiply of secrets x * y (broadcasting): open x - a and y - b at their own
        shapes (16 (|x| + |y|) B, 1 round); the triple's c has the broadcast shape."""
        return self.dealer_request(broadcast(x, y)) + self.open(x, y)

    def matmul(self, x: Shape, y: Shape) -> Cost:
        """Beaver matmul X (m x k) @ Y (k x n): open X - A and Y - B, 16 (mk + kn) B, 1 round."""
        return self.dealer_request(matmul_shape(x, y)) + self.open(x, y)

    def products(self, *pairs: tuple[Shape, Shape]) -> Cost:
        """Independent Beaver multiplies sharing one opening (`mpc.optimized.parallel`): each
        product's dealer request, and one all_reduce of every masked operand: 1 round."""
        total = self.open(*[shape for pair in pairs for shape in pair])
        for x, y in pairs:
            total += self.dealer_request(broadcast(x, y))
        return total

    def weight_matmul(self, x: Shape, w: Shape) -> Cost:
        """X @ W for a server weight W. Stock: a Beaver `matmul`. With weight masks
        (`mpc.optimized.weight_masks`) only X - A is opened (16 |X| B, 1 round); the dealer's
        C = A B reaches rank 0 as any triple does (TFP: shared from party 0 without traffic)."""
        if not self.approx.weight_masks:
            return self.matmul(x, w)
        return self.dealer_request(matmul_shape(x, w)) + self.open(x)

    def square(self, x: Shape) -> Cost:
        """Beaver square: open x - r only, 16 |x| B, 1 round (dealer pair r, r^2)."""
        return self.dealer_request(x) + self.open(x)

    def and_(self, x: Shape, y: Shape) -> Cost:
        """Binary Beaver AND: x is first broadcast to the common shape (`__and__`), then x ^ a and
        y ^ b are opened together (XOR all_reduce): 16 (|x y| + |y|) B, 1 round."""
        both = broadcast(x, y)
        return self.dealer_request(both) + self.open(both, y)

    def b2a_bit(self, shape: Shape) -> Cost:
        """One-bit binary-to-arithmetic: open x ^ r for a dealer bit r (shared both ways):
        16 B per element, 1 round."""
        return self.dealer_request(shape) + self.open(shape)

    # ---- binary circuits and conversions ----------------------------------------------------
    def binary_add(self, shape: Shape) -> Cost:
        """Carry-lookahead adder of two binary shares (`circuit.add`): S = x & y (1 AND of |x|),
        then the set-propagate-kill tree, LOG_BITS = 6 levels each ANDing P0 against the stacked
        (S, P) of 2 |x| elements: 32 |x| + 6 x 64 |x| = 416 |x| B, 7 rounds."""
        stacked = (2, *shape)
        return self.and_(shape, shape) + LOG_BITS * self.and_(stacked, stacked)

    def a2b(self, shape: Shape) -> Cost:
        """Arithmetic to binary: each party's share becomes a binary sharing for free (PRZS), and
        the two are summed by one `binary_add` on the stacked halves of shape (1, *shape)."""
        return self.binary_add((1, *shape))

    def ltz(self, shape: Shape) -> Cost:
        """x < 0 (`_ltz`): A2B, keep the sign bit, one-bit B2A: 416 + 16 = 432 B/elem, 8 rounds.
        Every comparison (lt, gt, ge, le, sign) is one ltz of the broadcast difference.
        With comparison "packed": `packed_ltz`, 78 B/elem, 8 rounds."""
        if self.approx.comparison == "packed":
            return self.packed_ltz(shape)
        if self.approx.comparison == "packed4":
            return self.packed4_ltz(shape)
        return self.a2b(shape) + self.b2a_bit(shape)

    def packed_ltz(self, shape: Shape) -> Cost:
        """`mpc.optimized.packed_compare`: on W = ceil(|x| / 64) packed words, one Beaver AND
        round per step of the carry plan (`mpc.optimized.carry_tree`; x is opened once against
        the stacked rows of y, so no broadcast), then one W-word B2A opening."""
        words = words_for(numel(shape))
        cost = ZERO
        for x, y in and_shapes(words):
            cost += self.dealer_request(broadcast(x, y)) + self.open(x, y)
        return cost + self.dealer_request(tuple(shape)) + self.open((words,))

    def packed4_ltz(self, shape: Shape) -> Cost:
        """`mpc.optimized.packed_compare` with the radix-4 carry tree: per level, the dealer's
        mask products of the level's multi-input ANDs and one opening of the inputs they
        multiply (`carry_tree.product_plan`), three levels; then the W-word B2A opening.
        57 B/elem, 4 rounds."""
        words = words_for(numel(shape))
        cost = ZERO
        for groups, terms in radix4_levels():
            opened, subsets = product_plan([t for ts in terms.values() for t in ts])
            cost += self.dealer_request((len(subsets), groups, words))
            cost += self.open((len(opened), groups, words))
        return cost + self.dealer_request(tuple(shape)) + self.open((words,))

    def eqz(self, shape: Shape) -> Cost:
        """x == 0 with two parties (`_eqz_2PC`): binary shares of s0 and -s1, their bitwise XNOR
        reduced by the all-ones tree (6 ANDs of |x|), one-bit B2A: 208 B/elem, 7 rounds."""
        return LOG_BITS * self.and_(shape, shape) + self.b2a_bit(shape)

    def rand(self, shape: Shape) -> Cost:
        """crypten.rand: precision_bits random binary bits, converted bit by bit (one B2A of
        shape (bits, *shape)): 16 x bits B/elem, 1 round."""
        return self.b2a_bit((self.approx.precision_bits, *shape))

    # ---- elementwise functions --------------------------------------------------------------
    def relu(self, shape: Shape) -> Cost:
        """x * (x >= 0): one ltz and one multiply, 464 B/elem, 9 rounds. With `fused_relu` the
        multiply's opening rides in the comparison's last round (`packed_relu`)."""
        multiply = self.mul(shape, shape)
        if self.approx.fused_relu:
            return self.ltz(shape) + multiply.replace(rounds=multiply.rounds - 1)
        return self.ltz(shape) + multiply

    def abs(self, shape: Shape) -> Cost:
        """x * sign(x), sign = 1 - 2 ltz(x): 464 B/elem, 9 rounds."""
        return self.ltz(shape) + self.mul(shape, shape)

    def exp(self, shape: Shape, iterations: int) -> Cost:
        """Limit form (1 + x / 2^n)^(2^n): n squarings, 16 n B/elem, n rounds."""
        return iterations * self.square(shape)

    def pow(self, shape: Shape, p: int) -> Cost:
        """Integer power as `mpc.compat` fixes it: odd p >= 3 is x^(p-1) * x, even p is
        (x^2)^(p/2), x^2 one square; each recursion step one square or multiply."""
        if p <= 1:
            return ZERO
        if p % 2:
            return self.pow(shape, p - 1) + self.mul(shape, shape)
        if p == 2:
            return self.square(shape)
        return self.square(shape) + self.pow(shape, p // 2)

    def polynomial(self, shape: Shape, terms: int) -> Cost:
        """sum c_i x^i, i = 1..terms, public c_i: powers by a doubling tree, stack [x, x^2] (one
        square), then the stack (k, *s) times its top power (1, *s): k = 2, 4, ... < terms. The
        public coefficients are free. Degree 8: 16 + 48 + 80 = 144 B/elem, 3 rounds."""
        if terms <= 1:
            return ZERO
        cost, have = self.square(shape), 2
        while have < terms:
            cost += self.mul((have, *shape), (1, *shape))
            have *= 2
        return cost

    def log(self, shape: Shape, exp_iterations: int) -> Cost:
        """CrypTen's log: an exp for the initial guess, then LOG_ITERATIONS Householder steps,
        each exp (LOG_EXP_ITERATIONS), one multiply and a polynomial of LOG_ORDER terms."""
        step = (
            self.exp(shape, LOG_EXP_ITERATIONS)
            + self.mul(shape, shape)
            + self.polynomial(shape, LOG_ORDER)
        )
        return self.exp(shape, exp_iterations) + LOG_ITERATIONS * step

    def reciprocal(
        self,
        shape: Shape,
        method: str,
        iterations: int,
        exp_iterations: int,
        all_pos: bool = True,
        public_initial: bool = False,
    ) -> Cost:
        """1 / x. Not all positive: sign (ltz), |x| (mul), the positive reciprocal, sign * (mul).
        "NR": initial guess 3 exp(1 - 2x) + 0.003 (an exp; free when a public initial value is
        given, and then the first iteration is public-times-secret, also free), then per
        iteration y += y - x y^2: one square and one multiply, 48 B/elem, 2 rounds.
        At 10 iterations, exp 8: 128 + 480 = 608 B/elem, 28 rounds. "log": exp(-log x)."""
        if not all_pos:
            sign = self.ltz(shape) + self.mul(shape, shape)
            rest = self.reciprocal(shape, method, iterations, exp_iterations, True, public_initial)
            return sign + rest + self.mul(shape, shape)
        if method == "log":
            return self.log(shape, exp_iterations) + self.exp(shape, exp_iterations)
        initial = ZERO if public_initial else self.exp(shape, exp_iterations)
        secret_iterations = iterations - 1 if public_initial else iterations
        return initial + secret_iterations * (self.square(shape) + self.mul(shape, shape))

    def inv_sqrt(self, shape: Shape, iterations: int, exp_iterations: int) -> Cost:
        """Newton inverse square root: initial guess 2.2 exp(-(x/2 + 0.2)) + 0.2 - x / 1024 (an
        exp), then per iteration y (3 - x y^2) / 2: a square and two multiplies, 80 B/elem,
        3 rounds. At 3 iterations, exp 8: 368 B/elem, 17 rounds."""
        step = self.square(shape) + 2 * self.mul(shape, shape)
        return self.exp(shape, exp_iterations) + iterations * step

    def where(self, condition: Shape, x: Shape, y: Shape) -> Cost:
        """Select by a secret 0/1 condition: c * x + (1 - c) * y, two multiplies (2 rounds)."""
        return self.mul(condition, x) + self.mul(condition, y)

    def sigmoid(self, shape: Shape) -> Cost:
        """CrypTen's sigmoid. "reciprocal" method: ltz, |x| as x times the sign (multiply),
        exp(-|x|) at the configured iterations, 1 / (1 + e) under CrypTen's fixed override (3
        iterations from the public 0.75, exp 9, by the configured reciprocal method), and a
        `where` (2 multiplies). 752 B/elem, 23 rounds at exp 8 with NR.
        "chebyshev" method: tanh(x / 2) / 2 + 1 / 2, see `tanh_chebyshev`."""
        approx = self.approx
        if approx.sigmoid_tanh_method == "chebyshev":
            return self.tanh_chebyshev(shape)
        denominator = self.reciprocal(
            shape,
            approx.reciprocal_method,
            SIGMOID_RECIPROCAL_ITERATIONS,
            SIGMOID_EXP_ITERATIONS,
            public_initial=True,
        )
        return (
            self.ltz(shape)
            + self.mul(shape, shape)
            + self.exp(shape, approx.exp_iterations)
            + denominator
            + self.where(shape, shape, shape)
        )

    def tanh_chebyshev(self, shape: Shape) -> Cost:
        """Odd Chebyshev polynomials P_1 .. P_31: 4 x^2 - 2 (a square), P_3 = (y - 1) x and each
        next P = y P_prev - P_prev2 (CHEBYSHEV_TERMS / 2 - 1 multiplies); the public-coefficient
        sum is free; hardtanh = two stacked relus, each a ltz and a multiply on (2, *s)."""
        stacked = (2, *shape)
        multiplies = (CHEBYSHEV_TERMS // 2 - 1) * self.mul(shape, shape)
        return self.square(shape) + multiplies + self.relu(stacked)

    def erf(self, shape: Shape, iterations: int) -> Cost:
        """Taylor erf: sum over n = 1..iterations of x^(2n+1), each power computed afresh by
        `pow` (nothing is shared between terms); public coefficients. 8 terms: 752 B/elem,
        34 rounds."""
        total = ZERO
        for n in range(1, iterations + 1):
            total += self.pow(shape, 2 * n + 1)
        return total

    # ---- max and argmax (the stock softmax's row max) -----------------------------------------
    def weighted_index(self, shape: Shape) -> Cost:
        """Random tie-break of a 0/1 vector along the last dim: cumulative sum (free), r = rand
        (one per row, a B2A of precision_bits bits) times the row total (multiply), then
        cumsum > r (ltz over the whole shape)."""
        rows = (*shape[:-1], 1)
        return self.rand(rows) + self.mul(rows, rows) + self.ltz(shape)

    def prod(self, shape: Shape) -> Cost:
        """Product along dim 0 by halving: one multiply of the two halves per level."""
        cost, size = ZERO, shape[0]
        while size > 1:
            half = (size // 2, *shape[1:])
            cost += self.mul(half, half)
            size = size // 2 + size % 2
        return cost

    def argmax_pairwise(self, shape: Shape) -> Cost:
        """All-pairs argmax along the last dim of length r: compare the row with its r - 1
        rotations (one ltz of (r - 1, *s)), AND them by `prod` (or sum and compare from 128 on),
        and break ties by `weighted_index`."""
        r = max(shape[-1], 2)
        pairs = (r - 1, *shape)
        if r - 1 < PAIRWISE_PROD_LIMIT:
            combine = self.prod(pairs)
        else:
            combine = self.ltz(shape)
        return self.ltz(pairs) + combine + self.weighted_index(shape)

    def tree_max(self, shape: Shape) -> Cost:
        """`mpc.ops.tree_max` along the last dim: per halving level a relu (ltz and multiply) of
        the n // 2 pairs; an odd entry passes up for free."""
        cost, n = ZERO, shape[-1]
        while n > 1:
            half = (*shape[:-1], n // 2)
            cost += self.relu(half)
            n = n - n // 2
        return cost

    def max_log_reduction(self, shape: Shape) -> Cost:
        """Row max with its one-hot argmax (`max(dim, keepdim=True)`, method "log_reduction"):
        int(ln n) halving steps, each x >= y (ltz) and a `where` on half the row; the pairwise
        max of the remaining m entries (argmax, then max = sum(x * onehot), one multiply); then
        the one-hot of the full row: x == max (`eqz`) and a `weighted_index` (its result is
        unused by the softmax, but computed). Row 128: 1339.5 B/elem, 79 rounds."""
        cost, m = ZERO, shape[-1]
        for _ in range(int(math.log(m))):
            half = (*shape[:-1], m // 2)
            cost += self.ltz(half) + self.where(half, half, half)
            m = m // 2 + m % 2
        reduced = (*shape[:-1], m)
        cost += self.argmax_pairwise(reduced) + self.mul(reduced, reduced)
        return cost + self.eqz(shape) + self.weighted_index(shape)
