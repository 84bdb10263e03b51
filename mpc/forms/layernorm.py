"""LayerNorm under MPC. Both forms first multiply the centered rows by the public 1 / sqrt(s) of
a per-LayerNorm variance scale s calibrated by the server on public text
(`mpc.session.secure_model.calibrate_layernorms`); they differ in how far a row's variance may
stray from s:
  * `public_scale`: CrypTen's inverse square root on (var + eps) / s, accurate on [0.1, 100];
  * `range_reduced`: each row is first brought into [1, 4] by a secret power of two found with
    comparisons against public thresholds, accurate from 2^-20 to 2^20 and beyond (~1e-6 .. 1e6).
Errors are max abs errors against torch's LayerNorm (one in-process party, 16 fraction bits,
weight ~ 1 + N(0, 0.1^2), bias ~ N(0, 0.1^2); `tests/test_layernorm_forms.py` pins them).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mpc.compat import import_crypten
from mpc.forms.base import Form
from mpc.optimized.parallel import parallel_mul


def layer_norm_public_scale(
    x: Any, weight: Any, bias: Any, eps: float, var_scale: float, approx: Any = None
) -> Any:
    """LayerNorm over the last dim with a public variance scale (weight, bias may be secret).

    The rows are centered and multiplied by the public 1 / sqrt(var_scale) before squaring, so
    the biased variance is computed near 1 whatever the rows' size; the inverse square root
    then runs on (var + eps) / var_scale. The value is inv_sqrt((var + eps) / var_scale) /
    sqrt(var_scale), but small-variance rows keep their precision.

    Accurate while (row variance + eps) / var_scale lies in [0.1, 100] (5 iterations): max
    abs error 7e-4 there; 3e-3 at 0.03; wrong below ~0.01 (0.2 error; 1.1 at 1e-6) and from
    ~150 on (the inverse square root's initial guess turns negative). Rows with std 0.5 to 5
    under one var_scale (the geometric mean of their variances, so the ratio spans
    [0.07, 8.4]): 4.3e-4. Cost at C = 768: 49 B per element, 26 rounds.
    """
    root_scale = 1.0 / math.sqrt(var_scale)
    centered = (x - x.mean(-1, keepdim=True)) * root_scale  # (..., C), variance ~ 1
    variance = centered.square().mean(-1, keepdim=True)  # biased, as torch's LayerNorm
    inv_std = (variance + eps / var_scale).inv_sqrt()  # (..., 1)
    return centered * inv_std * weight + bias


PUBLIC_SCALE_LIMITS = (0.1, 100.0)  # (var + eps) / s where public_scale is accurate


def layer_norm_public_scale_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """On (..., C): centering and the public variance scale are free; the square of the centered
    rows (|x|), the mean (free), inv_sqrt on the (..., 1) variances, centered * inv_std
    (|x| + |rows| opened), * weight (|x| + C opened); + bias is free. C = 768, T = 16,
    3 iterations: 49.5 B/elem, 20 rounds."""
    rows = (*shape[:-1], 1)
    approx = p.approx
    return (
        p.square(shape)
        + p.inv_sqrt(rows, approx.sqrt_iterations, approx.exp_iterations)
        + p.mul(shape, rows)
        + p.mul(shape, shape[-1:])
    )


# ---- range_reduced: a secret power-of-two normalization per row --------------------------------
RANGE_POWERS = 10  # thresholds 4^j for |j| <= 10: (var + eps) / s from 2^-20 to 2^20
RING_LIMIT = 2**62  # the exact sum of squares and every threshold stay below it (64-bit ring)
# 1 / sqrt(v) ~ a + b v, the minimax linear fit on [0.9, 4.2] (relative error 10.5 %); Newton
# steps then leave 1.7e-2, 4.4e-4, 2.9e-7 (1, 2, 3 steps): 3 are enough, more cost 3 rounds each.
INV_SQRT_GUESS = (1.0816440, -0.1535505)


def range_powers(width: int, precision_bits: int) -> list[int]:
    """The powers j of the thresholds 4^j: |j| <= RANGE_POWERS, j <= precision_bits (so that
    2^-j is exact in fixed point) and 4^j C 2^(2p) < RING_LIMIT (C = width, p = precision_bits)."""
    top = min(RANGE_POWERS, precision_bits)
    return [
        j
        for j in range(-min(RANGE_POWERS, precision_bits), top + 1)
        if width << (2 * (j + precision_bits)) < RING_LIMIT
    ]


def range_reduced_limits(width: int, precision_bits: int = 16) -> tuple[float, float]:
    """(lowest, highest) (row variance + eps) / var_scale the range-reduced form is accurate on:
    the outermost thresholds, and below the ring limit of the exact sum of squares."""
    powers = range_powers(width, precision_bits)
    ring = RING_LIMIT / (width * 4.0**precision_bits)
    return 4.0 ** powers[0], min(4.0 ** (powers[-1] + 1), ring)


def variance_ratio_limits(name: str, width: int, precision_bits: int) -> tuple[float, float]:
    """(lowest, highest) (row variance + eps) / var_scale the form `name` is accurate on."""
    if name in ("public_scale", "bracketed"):
        return PUBLIC_SCALE_LIMITS
    return range_reduced_limits(width, precision_bits)


def _with_precision(x: Any, precision_bits: int) -> Any:
    """The same shares read at another fixed-point scale (a local relabeling, no traffic)."""
    encoder = import_crypten().encoder.FixedPointEncoder(precision_bits=precision_bits)
    result = x.clone()
    result.encoder = encoder
    return result


def _telescoping(bits: Any, values: list[int]) -> Any:
    """values[n] where n = the number of set bits among monotone 0/1 `bits` (..., J) (integer
    shares): values[0] + sum_i bits_i (values[i + 1] - values[i]); public products, no traffic."""
    steps = torch.tensor([b - a for a, b in zip(values, values[1:], strict=False)])
    return (bits * steps).sum(-1, keepdim=True) + values[0]


def inv_sqrt_near_one(v: Any, iterations: int) -> Any:
    """1 / sqrt(v) for v in [0.9, 4.2]: the public linear guess, then Newton steps
    y (3 - v y^2) / 2 (a square and two multiplies each, as CrypTen's)."""
    a, b = INV_SQRT_GUESS
    y = v * b + a
    for _ in range(iterations):
        y = y * (3 - v * y.square()) * 0.5
    return y


def layer_norm_range_reduced(
    x: Any, weight: Any, bias: Any, eps: float, var_scale: float, approx: Any
) -> Any:
    """LayerNorm accurate over many orders of magnitude of row variance; nothing is decrypted.

    With c the centered rows times the public 1 / sqrt(s) (C wide, p fraction bits):
    1. the exact sum of squares: c's shares read as integers c 2^p and squared without
       truncation, summed: Q = C (var + eps / s) 2^(2p) (+ the public eps term), exact in the
       64-bit ring while below 2^62 (a truncated square of a row this wide would wrap);
    2. one batched comparison of Q with the public thresholds 4^j C 2^(2p), j = -10 .. 10:
       monotone bits, whose count n picks k = j_min - 1 + n with (var + eps / s) 4^-k in (1, 4];
    3. f = 2^-k as a public combination of the bits (exact in fixed point), c' = c f (a row of
       variance in (1, 4], whatever the input's), its variance v' = mean(c'^2) + (eps / s) 4^-k;
    4. 1 / sqrt(v') from a public linear guess and `sqrt_iterations` Newton steps, and
       c' / sqrt(v') * weight + bias (c' / sqrt(v') = c / sqrt(var + eps / s): f cancels).
    Accurate for (var + eps) / s in [2^-20, min(2^22, 2^62 / (C 4^p))] (`range_reduced_limits`;
    C = 768: 9.5e-7 .. 1.4e6). Max abs error (3 Newton steps; 5 give the same): 7e-4 for ratios
    1e-2 .. 1e6, a constant row with one outlier 1e-4; below 1e-2 the error is that of the
    16-bit input itself, about 2^-16 / row std (7e-3 at 1e-4, 1.7e-2 at 1e-6).
    Cost at C = 768, T = 16: 93 B per element, 28 rounds (5 Newton steps; 22 with 3), against
    50 B and 26 rounds for `public_scale`.
    """
    p, width = approx.precision_bits, x.size(-1)
    powers = range_powers(width, p)
    inv_root = 1.0 / math.sqrt(var_scale)
    centered = (x - x.mean(-1, keepdim=True)) * inv_root  # (..., C)
    squares = _with_precision(centered, 0).square()  # integers c^2 2^(2p): no truncation
    eps_term = round(eps / var_scale * width * 4**p)
    total = squares.sum(-1, keepdim=True) + eps_term  # (..., 1)
    thresholds = torch.tensor([width << (2 * (j + p)) for j in powers])
    above = total.gt(thresholds)  # (..., J) monotone bits
    shifts = [powers[0] - 1 + n for n in range(len(powers) + 1)]  # k for n bits set
    factor = _with_precision(_telescoping(above, [2 ** (p - k) for k in shifts]), p)  # 2^-k
    eps_scaled = [round(eps / var_scale * 2.0 ** (p - 2 * k)) for k in shifts]
    eps_part = _with_precision(_telescoping(above, eps_scaled), p)  # (eps / s) 4^-k
    scaled = centered * factor  # (..., C), variance in (1, 4]
    variance = scaled.square().mean(-1, keepdim=True) + eps_part
    inv_std = inv_sqrt_near_one(variance, approx.sqrt_iterations)
    return scaled * inv_std * weight + bias


def layer_norm_range_reduced_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """On (..., C): the integer square (|x|), one comparison of the (..., J) stacked row sums
    against the thresholds, c * f (|x| + |rows| opened), the square of c', the Newton steps on the
    (..., 1) variances (a square and two multiplies each; the linear guess is free), then as
    `public_scale`: c' * inv_std and * weight. C = 768, T = 16, 5 steps: 93.4 B/elem, 28 rounds."""
    approx, rows = p.approx, (*shape[:-1], 1)
    stacked = (*shape[:-1], len(range_powers(shape[-1], approx.precision_bits)))
    newton = p.square(rows) + 2 * p.mul(rows, rows)
    return (
        p.square(shape)
        + p.ltz(stacked)
        + p.mul(shape, rows)
        + p.square(shape)
        + approx.sqrt_iterations * newton
        + p.mul(shape, rows)
        + p.mul(shape, shape[-1:])
    )


# ---- bracketed: public_scale's window, in 10 rounds -------------------------------------------
BRACKET_STEPS = 4  # thresholds per octave of the variance: y0 within 4.4 % of 1 / sqrt(v)
BRACKET_NEWTON = 2  # steps y (3 - v y^2) / 2: 2.8e-3, then 1.2e-5


def bracket_thresholds() -> list[float]:
    """The quarter-octave thresholds inside public_scale's window [0.1, 100]."""
    low, high = PUBLIC_SCALE_LIMITS
    a, b = math.floor(math.log2(low)), math.ceil(math.log2(high))
    return [2.0 ** (a + j / BRACKET_STEPS) for j in range(1, BRACKET_STEPS * (b - a))]


def bracketed_inv_sqrt(v: Any) -> Any:
    """1 / sqrt(v) for secret v in [0.1, 100], in one comparison and 4 multiplication rounds.

    One batched comparison against the quarter-octave thresholds t_j gives monotone bits; the
    guess y0 = c / sqrt(t_m) (t_m the largest threshold below v; c = 2 / (1 + 2^(1/8))) is their
    public-weight sum (local, telescoping), within 4.4 % of 1 / sqrt(v). Each Newton step
    y (3 - v y^2) / 2 = 1.5 y - 0.5 (v y)(y y) takes two rounds: v y and y y side by side, then
    their product. Relative error 1.2e-5 after two steps."""
    crypten = import_crypten()
    thresholds = bracket_thresholds()
    c = 2.0 / (1.0 + 2.0 ** (1.0 / (2 * BRACKET_STEPS)))
    levels = [thresholds[0] / 2.0 ** (1.0 / BRACKET_STEPS), *thresholds]
    values = [c / math.sqrt(level) for level in levels]  # the guess for m bits set
    bits = crypten.stack([v - t for t in thresholds]) >= 0  # one comparison, (J, ..., 1)
    bits._tensor.encode_(crypten.encoder.FixedPointEncoder())  # integers -> fixed point
    steps = torch.tensor([b - a for a, b in zip(values, values[1:], strict=False)])
    y = (bits * steps.view(-1, *[1] * v.dim())).sum(0) + values[0]
    for _ in range(BRACKET_NEWTON):
        vy, yy = parallel_mul([(v, y), (y, y)])
        y = y * 1.5 - (vy * yy) * 0.5
    return y


def layer_norm_bracketed(
    x: Any, weight: Any, bias: Any, eps: float, var_scale: float, approx: Any = None
) -> Any:
    """public_scale's LayerNorm, same window (row variance / s in [0.1, 100]), in 10 rounds
    instead of 26: the square of the centered rows and their product with the weight in one
    round (they do not depend on each other), `bracketed_inv_sqrt` of the variance (4 + 4),
    then (c w) * inv_std. Max abs error 3e-4 on rows of std 0.5 .. 5 under one scale (as
    public_scale's); about the same bytes (a comparison of 43 thresholds per row only)."""
    root_scale = 1.0 / math.sqrt(var_scale)
    centered = (x - x.mean(-1, keepdim=True)) * root_scale  # (..., C), variance ~ 1
    squares, weighted = parallel_mul([(centered, centered), (centered, weight)])
    variance = squares.mean(-1, keepdim=True) + eps / var_scale  # biased, as torch's
    return weighted * bracketed_inv_sqrt(variance) + bias


def layer_norm_bracketed_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """The square and c * weight in one round, the comparison of (J, ..., 1), per Newton step
    (v y, y y) in one round then one multiply, and (c w) * inv_std: 10 rounds (radix 4)."""
    rows = (*shape[:-1], 1)
    newton = p.products((rows, rows), (rows, rows)) + p.mul(rows, rows)
    return (
        p.products((shape, shape), (shape, shape[-1:]))
        + p.ltz((len(bracket_thresholds()), *rows))
        + BRACKET_NEWTON * newton
        + p.mul(shape, rows)
    )


LAYERNORM = {
    "public_scale": Form("public_scale", layer_norm_public_scale, layer_norm_public_scale_cost),
    "range_reduced": Form("range_reduced", layer_norm_range_reduced, layer_norm_range_reduced_cost),
    "bracketed": Form("bracketed", layer_norm_bracketed, layer_norm_bracketed_cost),
}
