"""LayerNorm under MPC: one form, with a public per-LayerNorm variance scale calibrated by the
server on public text (`mpc.session.secure_model.calibrate_layernorms`)."""

from __future__ import annotations

import math
from typing import Any

from mpc.forms.base import Form


def layer_norm_public_scale(
    x: Any, weight: Any, bias: Any, eps: float, var_scale: float, approx: Any = None
) -> Any:
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
    root_scale = 1.0 / math.sqrt(var_scale)
    centered = (x - x.mean(-1, keepdim=True)) * root_scale  # (..., C), variance ~ 1
    variance = centered.square().mean(-1, keepdim=True)  # biased, as torch's LayerNorm
    inv_std = (variance + eps / var_scale).inv_sqrt()  # (..., 1)
    return centered * inv_std * weight + bias


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


LAYERNORM = {
    "public_scale": Form("public_scale", layer_norm_public_scale, layer_norm_public_scale_cost)
}
