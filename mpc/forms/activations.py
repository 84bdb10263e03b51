"""FFN activations under MPC: the GELU forms (the target is GPT-2's tanh GELU, `TORCH_OPS.gelu`)
and ReLU. Errors are max abs errors against the plaintext function, one in-process party, 16
fraction bits, `ApproxConfig` defaults (`tests/test_mpc_ops.py` pins them); costs are bytes per
element logged by one party and rounds.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from mpc.compat import import_crypten
from mpc.forms.base import Form

# GPT-2's GELU (tanh form): 0.5 x (1 + tanh(k (x + 0.044715 x^3))) = x sigmoid(2 k (x + ...)).
GELU_K = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715
# Piecewise GELU: beyond |x| = 4 the residual relu(x) - gelu(x) is below 7e-5.
GELU_CLIP = 4.0
GELU_DEGREE = 8  # fit error 1.2e-4; 3 multiplication rounds for the powers


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


# ---- GELU, tanh form -------------------------------------------------------------------------
def gelu_tanh(x: Any, approx: Any = None) -> Any:
    """x sigmoid(2 k (x + 0.044715 x^3)) through CrypTen's sigmoid. Valid on [-18, 18]: max abs
    error 1.6e-3 there; garbage (~2e9) from |x| = 18.8 on, where the sigmoid's exp leaves its
    range; 832 B/element, 26 rounds. With sigmoid_tanh_method="chebyshev" only |x| < ~1 is usable
    (7e-2 on [-2, 2], 8 on [-8, 8])."""
    inner = x * (x.square() * (2.0 * GELU_K * GELU_CUBIC) + 2.0 * GELU_K)  # 2 k (x + c x^3)
    return x * inner.sigmoid()


def gelu_tanh_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """x^2 (square), x (a x^2 + b) (mul), sigmoid, x * sigmoid (mul): 832 B/elem, 26 rounds."""
    return p.square(shape) + 2 * p.mul(shape, shape) + p.sigmoid(shape)


def gelu_tanh_jax(x: Any) -> Any:
    """GPT-2's GELU (tanh form); under SPU, tanh is SPU's own approximation."""
    import jax.numpy as jnp

    return 0.5 * x * (1.0 + jnp.tanh(GELU_K * (x + GELU_CUBIC * x * x * x)))


# ---- GELU, erf form --------------------------------------------------------------------------
def gelu_erf(x: Any, approx: Any = None) -> Any:
    """x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 through CrypTen's 8-term Taylor erf. Unusable past
    |x| > 1.5: max abs error 2.7e-4 on [-1.5, 1.5] (this includes the erf/tanh gap), 2.5e-3 on
    [-2, 2], 7.7e-2 on [-2.5, 2.5], 1.2 on [-3, 3]; 784 B/element, 35 rounds."""
    return x * ((x * (1.0 / math.sqrt(2.0))).erf() * 0.5 + 0.5)


def gelu_erf_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """erf(x / sqrt 2) (public scale free), x * (erf / 2 + 1 / 2) (mul): 784 B/elem, 35 rounds."""
    return p.erf(shape, p.approx.erf_iterations) + p.mul(shape, shape)


# ---- GELU, piecewise polynomial form (the default) -------------------------------------------
def gelu_poly(x: Any, approx: Any = None) -> Any:
    """relu(x) - p(min(|x|, 4)) with p fitted to relu(x) - gelu(x) (the model's tanh GELU, not
    x Phi(x): the two differ by up to 4.7e-4); |x| and relu from one sign, the clip from one more
    comparison. Valid for every x in the fixed-point range; max abs error 1.8e-4 on [-30, 30]
    and on [-100, 100]; 1072 B/element, 21 rounds."""
    abs_x = x * x.sign()
    relu = (x + abs_x) * 0.5
    clipped = abs_x - (abs_x - GELU_CLIP) * (abs_x >= GELU_CLIP)  # min(|x|, c)
    v = clipped * (2.0 / GELU_CLIP) - 1.0  # in [-1, 1]
    constant, *coefficients = gelu_residual_coefficients()
    return relu - (v.polynomial(list(coefficients)) + constant)


def gelu_poly_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """|x| = x sign(x) (ltz + mul); relu(x) = (x + |x|) / 2 free; clip = |x| - (|x| - 4)
    (|x| >= 4) (ltz + mul); v affine (free); p(v) of degree GELU_DEGREE (public constant free):
    1072 B/elem, 21 rounds at degree 8."""
    clip = p.ltz(shape) + p.mul(shape, shape)
    return p.abs(shape) + clip + p.polynomial(shape, GELU_DEGREE)


def gelu_poly_jax(x: Any) -> Any:
    """The same piecewise polynomial on jax arrays (SPU evaluates the comparisons securely)."""
    import jax.numpy as jnp

    abs_x = jnp.abs(x)
    v = jnp.minimum(abs_x, GELU_CLIP) * (2.0 / GELU_CLIP) - 1.0
    residual = sum(c * v**i for i, c in enumerate(gelu_residual_coefficients()))
    return jnp.maximum(x, 0.0) - residual


# ---- GELU, the same piecewise polynomial through two ReLUs ------------------------------------
def gelu_poly_relu(x: Any, approx: Any = None) -> Any:
    """The function of "poly", written with two ReLUs: relu(x), |x| = 2 relu(x) - x, and
    min(|x|, 4) = 4 - relu(4 - |x|). The same bytes as "poly" (two comparisons, two multiplies);
    with `fused_relu` each ReLU's multiply rides in its comparison's last round: 11 rounds
    instead of 21 with radix-4 comparisons. Errors as "poly" (1.8e-4 on [-100, 100])."""
    relu = x.relu()
    abs_x = relu * 2.0 - x
    clipped = GELU_CLIP - (GELU_CLIP - abs_x).relu()  # min(|x|, 4)
    v = clipped * (2.0 / GELU_CLIP) - 1.0  # in [-1, 1]
    constant, *coefficients = gelu_residual_coefficients()
    return relu - (v.polynomial(list(coefficients)) + constant)


def gelu_poly_relu_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """Two ReLUs one after the other (a comparison and a multiply each), the polynomial."""
    return 2 * p.relu(shape) + p.polynomial(shape, GELU_DEGREE)


# ---- GELU, the same piecewise polynomial with its comparisons side by side -------------------
def gelu_poly_parallel(x: Any, approx: Any = None) -> Any:
    """The function of "poly" (the same polynomial, the same clip at 4), evaluated in 12 rounds
    instead of 21: the three comparisons [x < 0], [x >= 4], [x <= -4] all read x, so they run
    as one comparison of the stacked (3, ...) tensor; then s = 1 - 2 [x < 0], c = [|x| >= 4] and
    s c = [x >= 4] - [x <= -4] are local, and |x| = x s and |x| c = x (s c) are one multiply of
    the stacked signs by x, so min(|x|, 4) = |x| - |x| c + 4 c. The polynomial follows. Errors
    as "poly" (1.8e-4 on [-100, 100]); one more comparison's bytes (3 |x| compared, not 2)."""
    crypten = import_crypten()
    signs = crypten.stack([x, x - GELU_CLIP, -x - GELU_CLIP]) < 0  # (3, ...): one comparison
    negative, inside_high, inside_low = signs.unbind(0)
    above, below = 1 - inside_high, 1 - inside_low  # [x >= 4], [x <= -4]
    factors = crypten.stack([1 - 2 * negative, above - below])  # s, s c
    abs_x, abs_x_clip = (factors * x).unbind(0)  # one multiply: |x|, |x| c
    clipped = abs_x - abs_x_clip + (above + below) * GELU_CLIP  # min(|x|, 4)
    relu = (x + abs_x) * 0.5
    v = clipped * (2.0 / GELU_CLIP) - 1.0  # in [-1, 1]
    constant, *coefficients = gelu_residual_coefficients()
    return relu - (v.polynomial(list(coefficients)) + constant)


def gelu_poly_parallel_cost(p: Any, shape: tuple[int, ...]) -> Any:
    """One comparison of (3, *shape), one multiply of (2, *shape) by shape (the stack and the
    signs' affine combinations are free), the polynomial: 12 rounds."""
    stacked = (3, *shape)
    return p.ltz(stacked) + p.mul((2, *shape), shape) + p.polynomial(shape, GELU_DEGREE)


# ---- ReLU ------------------------------------------------------------------------------------
def relu(x: Any, approx: Any = None) -> Any:
    """x (x >= 0): one comparison. Valid for any x; max abs error 1.5e-5 (one rounding).
    464 B/element, 9 rounds."""
    return x.relu()


def relu_cost(p: Any, shape: tuple[int, ...]) -> Any:
    return p.relu(shape)


def relu_jax(x: Any) -> Any:
    import jax.numpy as jnp

    return jnp.maximum(x, 0.0)


GELU = {
    "tanh": Form("tanh", gelu_tanh, gelu_tanh_cost, gelu_tanh_jax),
    "erf": Form("erf", gelu_erf, gelu_erf_cost),
    "poly": Form("poly", gelu_poly, gelu_poly_cost, gelu_poly_jax),
    "poly_parallel": Form("poly_parallel", gelu_poly_parallel, gelu_poly_parallel_cost),
    "poly_relu": Form("poly_relu", gelu_poly_relu, gelu_poly_relu_cost),
}
RELU = {"stock": Form("stock", relu, relu_cost, relu_jax)}
