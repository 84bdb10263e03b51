"""The LayerNorm forms of `mpc.forms.layernorm` over the row variances real models produce.

One in-process CrypTen party (as tests/test_mpc_ops.py). Rows of width 768 (GPT-2's) whose
variance, relative to the LayerNorm's calibrated scale, runs from 1e-6 to 1e6: the
`range_reduced` form holds its stated error everywhere; `public_scale` only inside [0.1, 100].
Measured (one party, 3 or 5 Newton steps alike): 1.1e-2 at 1e-6, 3.3e-3 at 1e-4, 4.3e-4 at 1e-2,
at most 1.4e-4 from 0.1 to 1e6; below 1e-2 that is the input's own 16-bit resolution.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterator

import pytest
import torch

from models.config import resolve_config
from models.gpt import GPT
from models.ops import TORCH_OPS
from mpc.approx import ApproxConfig, apply_to_crypten
from mpc.compat import import_crypten
from mpc.forms.layernorm import range_powers, range_reduced_limits
from mpc.ops import CryptenOps
from tests.conftest import assert_close

EPS = 1e-5
WIDTH = 768
RATIOS = [10.0**e for e in range(-6, 7)]  # row variance / var_scale


@pytest.fixture(scope="module")
def crypten() -> Iterator[types.ModuleType]:
    crypten = import_crypten()
    crypten.init()  # single party, in-process
    with apply_to_crypten(ApproxConfig()):
        yield crypten


def rows_with_variance(ratio: float, var_scale: float, count: int = 8) -> torch.Tensor:
    """(count, WIDTH) rows of variance exactly ratio * var_scale, with row means of that size."""
    generator = torch.Generator().manual_seed(int(-math.log10(ratio) * 7) % 1000)
    x = torch.randn(count, WIDTH, generator=generator)
    x = (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)
    std = math.sqrt(ratio * var_scale)
    return (x + torch.randn(count, 1, generator=generator)) * std


def affine(width: int = WIDTH) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return 1 + 0.1 * torch.randn(width, generator=generator), 0.1 * torch.randn(width)


def secure_layer_norm(crypten, form: str, x, var_scale: float, iterations: int = 5):
    weight, bias = affine(x.shape[-1])
    ops = CryptenOps(ApproxConfig(layernorm_form=form, sqrt_iterations=iterations))
    args = (crypten.cryptensor(t) for t in (x, weight, bias))
    got = ops.layer_norm(*args, EPS, var_scale).get_plain_text()
    return got, TORCH_OPS.layer_norm(x, weight, bias, EPS)


def tolerance(ratio: float, var_scale: float) -> float:
    """1e-3, plus three times what the input's 16-bit resolution alone costs: 2^-16 / row std."""
    return 1e-3 + 3 * 2.0**-16 / math.sqrt(ratio * var_scale + EPS)


@pytest.mark.parametrize("var_scale", [1.0, 0.04])
@pytest.mark.parametrize("iterations", [3, 5])
def test_range_reduced_is_accurate_from_1e_minus_6_to_1e6(crypten, iterations, var_scale):
    for ratio in RATIOS:
        x = rows_with_variance(ratio, var_scale)
        got, expected = secure_layer_norm(crypten, "range_reduced", x, var_scale, iterations)
        what = f"range_reduced, variance / scale = {ratio:g}, {iterations} Newton steps"
        assert_close(got, expected, tolerance(ratio, var_scale), what)


def test_range_reduced_mixed_rows_and_outliers(crypten):
    """Rows of every size in one tensor (one secret power of two each), a constant row with one
    outlier, and an outlier row of variance 1e5 (the external probe's failure cases)."""
    x = torch.cat([rows_with_variance(r, 1.0, count=1) for r in RATIOS])  # (13, C)
    spike = torch.full((2, WIDTH), 0.3)
    spike[0, 5], spike[1, 700] = 30.0, -8000.0
    x = torch.cat([x, spike]).reshape(3, 5, WIDTH)  # (B, T, C)
    got, expected = secure_layer_norm(crypten, "range_reduced", x, 1.0)
    assert_close(got, expected, tolerance(1e-6, 1.0), "range_reduced, mixed rows")
    assert_close(got[2, 3:], expected[2, 3:], 1e-3, "range_reduced, constant rows with an outlier")


def test_public_scale_fails_outside_its_window(crypten):
    """Why the second form exists: public_scale's inverse square root leaves its range."""
    for ratio, least in ((1e-4, 0.5), (1e4, 1e3)):
        got, expected = secure_layer_norm(crypten, "public_scale", rows_with_variance(ratio, 1), 1)
        assert (got - expected).abs().max() > least, f"public_scale at {ratio:g}"


def test_thresholds_stay_inside_the_ring():
    assert range_powers(768, 16) == list(range(-10, 11))
    low, high = range_reduced_limits(768)
    assert low == 2.0**-20 and 1e6 < high == 2.0**62 / (768 * 4.0**16)  # 1.4e6
    assert range_reduced_limits(4096)[1] < 1e6  # wide rows: the exact sum of squares' limit
    assert range_powers(32, 10)[0] == -10 and range_powers(32, 10)[-1] == 10


def test_encrypted_forward_with_range_reduced_layernorm(crypten):
    """The tiny baseline with encrypted weights: logits as with public_scale's tolerance."""
    cfg = resolve_config("baseline", "tiny")
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (1, cfg.block_size))
    onehot = torch.nn.functional.one_hot(tokens, cfg.vocab_size).float()
    with torch.no_grad():
        expected = model(onehot)
    model.use_ops(CryptenOps(ApproxConfig(layernorm_form="range_reduced")))
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            del module._parameters[name]
            setattr(module, name, crypten.cryptensor(param.detach()))
    got = model(crypten.cryptensor(onehot)).get_plain_text()
    assert_close(got, expected, 2e-2, "tiny baseline logits, range_reduced LayerNorm")
