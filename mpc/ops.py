"""CrypTen versions of the few operations that differ between plaintext and encrypted tensors.

`CryptenOps` implements `models.ops.TensorOps` on CrypTen MPCTensors (activations and weights
both secret), with every approximation knob taken from one `ApproxConfig`. No method decrypts
anything: every step is a CrypTensor operation with public constants. Each docstring states the
input range on which the method is accurate and the max abs error against `models.ops.TORCH_OPS`
measured on that range (one in-process party, 16 fraction bits, defaults of `ApproxConfig`;
`tests/test_mpc_ops.py` pins these figures). Two parties round their shares differently; one
two-party run gave errors of the same size, and the costs quoted (bytes per element logged by one
party, rounds) come from it.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np

from models.ops import Tensor, TensorOps
from mpc.approx import ApproxConfig, ApproxError, apply_to_crypten, function_keys
from mpc.compat import import_crypten

# GPT-2's GELU (tanh form): 0.5 x (1 + tanh(k (x + 0.044715 x^3))) = x sigmoid(2 k (x + ...)).
GELU_K = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715
# Piecewise GELU: beyond |x| = 4 the residual relu(x) - gelu(x) is below 7e-5.
GELU_CLIP = 4.0
GELU_DEGREE = 8  # fit error 1.2e-4; 3 multiplication rounds for the powers
# The max-free softmax keeps its reciprocal's input S / K at or below this many terms.
SOFTMAX_ROWS_IN_RANGE = 128


def gelu_residual(t: np.ndarray) -> np.ndarray:
    """relu(x) - gelu(x) at t = |x| (an even function of x): t sigmoid(-2 k (t + 0.044715 t^3))."""
    return 0.5 * t * (1.0 - np.tanh(GELU_K * (t + GELU_CUBIC * t**3)))


@functools.cache
def gelu_residual_coefficients() -> tuple[float, ...]:
    """Coefficients c_0..c_8 of p(v) = sum c_i v^i fitting `gelu_residual(t)` on [0, GELU_CLIP].

    The variable is v = 2 t / GELU_CLIP - 1 in [-1, 1]: in it the monomial coefficients stay below
    0.4, so fixed-point rounding of v^i and of the encoded coefficients adds only ~1e-4 (in t
    itself, 2^-16 rounding of the v^8 coefficient times 4^8 would cost ~0.5). Least squares on 64
    Chebyshev nodes: deterministic, and rounded to 1e-10 so both parties encode identical constants.
    """
    nodes = np.cos(np.pi * (np.arange(64) + 0.5) / 64)  # Chebyshev nodes on [-1, 1]
    basis = np.vander(nodes, GELU_DEGREE + 1, increasing=True)
    target = gelu_residual((nodes + 1.0) * (GELU_CLIP / 2.0))
    coefficients = np.linalg.lstsq(basis, target, rcond=None)[0]
    return tuple(round(float(c), 10) for c in coefficients)


class CryptenOps(TensorOps):
    """`TensorOps` for CrypTen MPCTensors, configured by one `ApproxConfig`.

    Each method runs with the config's function keys set in `crypten.cfg` (restored afterwards),
    and refuses to run if CrypTen encodes at another precision than the config states: call
    `mpc.approx.apply_to_crypten(approx)` once per party before encrypting anything.
    """

    name = "crypten"

    def __init__(self, approx: ApproxConfig) -> None:
        self.approx = approx
        self._gelu = {"tanh": _gelu_tanh, "erf": _gelu_erf, "poly": _gelu_poly}[approx.gelu_form]
        self._softmax = {
            "stock": _softmax_stock,
            "tree": _softmax_tree,
            "max_free": self._softmax_max_free,
        }[approx.softmax_form]

    def _configured(self) -> contextlib.AbstractContextManager[None]:
        crypten = import_crypten()
        precision = crypten.cfg.encoder.precision_bits
        if precision != self.approx.precision_bits:
            raise ApproxError(
                f"crypten encodes {precision} fraction bits but approx.precision_bits="
                f"{self.approx.precision_bits}: call apply_to_crypten(approx) before encrypting"
            )
        return apply_to_crypten(self.approx, function_keys(self.approx))

    def embed(self, tokens: Tensor, table: Tensor) -> Tensor:
        """One-hot (B, T, V) rows times the (V, C) table: a Beaver matmul, exact but for rounding.

        Valid for any table; max abs error 1.5e-5 (one rounding) for table entries ~ N(0, 1).
        """
        with self._configured():
            return tokens.matmul(table)

    def layer_norm(
        self, x: Tensor, weight: Tensor, bias: Tensor, eps: float, var_scale: float = 1.0
    ) -> Tensor:
        """LayerNorm over the last dim with a public variance scale (weight, bias may be secret).

        The rows are centered and multiplied by the public 1 / sqrt(var_scale) before squaring, so
        the biased variance is computed near 1 whatever the rows' size; the inverse square root
        then runs on (var + eps) / var_scale. The value is inv_sqrt((var + eps) / var_scale) /
        sqrt(var_scale), but small-variance rows keep their precision.

        Accurate while (row variance + eps) / var_scale lies in [0.1, 100] (5 iterations): max
        abs error 7e-4 there for weight ~ 1 + N(0, 0.1^2), bias ~ N(0, 0.1^2); 3e-3 at 0.03;
        wrong below ~0.01 (0.2 error) and from ~150 on (the inverse square root's initial guess
        turns negative). Rows with std 0.5 to 5 under one var_scale (the geometric mean of their
        variances, so the ratio spans [0.07, 8.4]): 4.3e-4.
        Cost at C = 768: 49 B per element, 26 rounds.
        """
        with self._configured():
            root_scale = 1.0 / math.sqrt(var_scale)
            centered = (x - x.mean(-1, keepdim=True)) * root_scale  # (..., C), variance ~ 1
            variance = centered.square().mean(-1, keepdim=True)  # biased, as torch's LayerNorm
            inv_std = (variance + eps / var_scale).inv_sqrt()  # (..., 1)
            return centered * inv_std * weight + bias

    def gelu(self, x: Tensor) -> Tensor:
        """GELU in the form `approx.gelu_form`; the target is GPT-2's tanh GELU (`TORCH_OPS.gelu`).

        "poly" (default): relu(x) - p(min(|x|, 4)) with p fitted to relu(x) - gelu(x) (the model's
            tanh GELU, not x Phi(x): the two differ by up to 4.7e-4). 1072 B/element, 21 rounds.
            Valid for every x in the fixed-point range; max abs error 1.8e-4 on [-30, 30] and on
            [-100, 100].
        "tanh": x sigmoid(2 k (x + 0.044715 x^3)) through CrypTen's sigmoid. Valid on [-18, 18]:
            max abs error 1.6e-3 there; garbage (~2e9) from |x| = 18.8 on, where the sigmoid's
            exp leaves its range; 832 B/element, 26 rounds. With sigmoid_tanh_method="chebyshev"
            only |x| < ~1 is usable (7e-2 on [-2, 2], 8 on [-8, 8]).
        "erf": x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 through CrypTen's 8-term Taylor erf.
            Unusable past |x| > 1.5: max abs error 2.7e-4 on [-1.5, 1.5] (this includes the
            erf/tanh gap), 2.5e-3 on [-2, 2], 7.7e-2 on [-2.5, 2.5], 1.2 on [-3, 3]; 784
            B/element, 35 rounds.
        """
        with self._configured():
            return self._gelu(x)

    def relu(self, x: Tensor) -> Tensor:
        """x (x >= 0): one comparison. Valid for any x; max abs error 1.5e-5 (one rounding).

        464 B/element, 9 rounds.
        """
        with self._configured():
            return x.relu()

    def softmax(self, scores: Tensor, dim: int = -1) -> Tensor:
        """Softmax along `dim` in the form `approx.softmax_form`.

        "stock": CrypTen's max subtraction, exp and reciprocal. Valid for any row whose entries
            lie within ~500 of its max, up to ~200 entries (the sum's reciprocal explodes near
            256: a flat row of 256 gives errors of 1e9; kept as shipped, it is the reference);
            causal mask -64, never -inf or -1e4. Max abs error 3.7e-3 (T = 16) and 8.4e-3
            (T = 128) on causal rows of N(0, 9) logits; 1488 B/element, 116 rounds at T = 128.
        "tree": the same softmax with the row max from a halving tree, max(a, b) = b + relu(a - b)
            (one comparison and one multiply per pair, no one-hot argmax): the same accuracy as
            "stock", and rows longer than 128 have their sum scaled into the reciprocal's range
            (any length); 620 B/element, 100 rounds at T = 128 with stock comparisons
            (`tree_max`).
        "max_free": no max; see `_softmax_max_free` for the (narrow) range it is accurate on.
        """
        with self._configured():
            return self._softmax(scores, dim)

    def _softmax_max_free(self, scores: Tensor, dim: int) -> Tensor:
        """Softmax without the row max, for rows whose max lies in [-b, b], b = logit bound.

        e = exp(z + z^2 / 2^(n+1)), n = exp_iterations: the squared term makes CrypTen's base
        1 + z / 2^n the second-order Taylor base of exp(z / 2^n), so the limit form errs by
        z^3 / (6 4^n) (2e-4 at |z| = 4) instead of z^2 / 2^(n+1) (3 % at |z| = 4) and
        positive exponents up to b are accurate too. The denominator S = sum(e) is scaled by the
        public K = e^b max(1, T / 128) into the reciprocal's range, and the output is e / K times
        1 / (S / K): the largest e / K is at most 1, as in the stock softmax.

        Accurate when every row's largest unmasked logit m lies in [-b, b] and every entry is at
        least -480 (mask value -64). The limit is fixed point: S / K spans [e^(-2b), T], and at
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
        bound = self.approx.softmax_logit_bound
        length = scores.size(dim)
        scale = math.exp(bound) * max(1.0, length / SOFTMAX_ROWS_IN_RANGE)  # public K
        taylor = 1.0 / 2.0 ** (self.approx.exp_iterations + 1)
        numerator = (scores + scores.square() * taylor).exp()
        return _normalized(numerator, dim, scale)


def _gelu_tanh(x: Tensor) -> Tensor:
    inner = x * (x.square() * (2.0 * GELU_K * GELU_CUBIC) + 2.0 * GELU_K)  # 2 k (x + c x^3)
    return x * inner.sigmoid()


def _gelu_erf(x: Tensor) -> Tensor:
    return x * ((x * (1.0 / math.sqrt(2.0))).erf() * 0.5 + 0.5)


def _gelu_poly(x: Tensor) -> Tensor:
    """relu(x) - p(min(|x|, c)): |x| and relu from one sign, the clip from one more comparison."""
    abs_x = x * x.sign()
    relu = (x + abs_x) * 0.5
    clipped = abs_x - (abs_x - GELU_CLIP) * (abs_x >= GELU_CLIP)  # min(|x|, c)
    v = clipped * (2.0 / GELU_CLIP) - 1.0  # in [-1, 1]
    constant, *coefficients = gelu_residual_coefficients()
    return relu - (v.polynomial(list(coefficients)) + constant)


def _softmax_stock(scores: Tensor, dim: int) -> Tensor:
    return scores.softmax(dim)


def tree_max(x: Tensor, dim: int = -1) -> Tensor:
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


def _softmax_tree(scores: Tensor, dim: int) -> Tensor:
    """CrypTen's softmax (exp(x - max) times the reciprocal of the row sum, all positive) with
    the max from `tree_max`."""
    if scores.size(dim) == 1:
        return scores * 0.0 + 1.0
    numerator = (scores - tree_max(scores, dim)).exp()  # row sums in [1, n]: the max gives 1
    return _normalized(numerator, dim, max(1.0, scores.size(dim) / SOFTMAX_ROWS_IN_RANGE))


def _normalized(numerator: Tensor, dim: int, scale: float) -> Tensor:
    """numerator / S, S its (positive) row sum, as numerator * (1 / (S / K)) / K: the public
    K = `scale` keeps S / K inside CrypTen's reciprocal range, which overflows near 256 (a flat
    row of 256 gave errors of 1e9). Dividing by K is a local truncation (no traffic); K = 1
    skips it."""
    crypten = import_crypten()
    row_sum = numerator.sum(dim, keepdim=True)
    with crypten.cfg.temp_override({"functions.reciprocal_all_pos": True}):
        if scale == 1.0:
            return numerator * row_sum.reciprocal()
        inverse = (row_sum * (1.0 / scale)).reciprocal()
    return numerator * inverse * (1.0 / scale)
