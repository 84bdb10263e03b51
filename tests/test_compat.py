"""Pins each fix in `mpc.compat`: every test here fails on stock CrypTen 0.4.1 with torch 2.13."""

from __future__ import annotations

import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from mpc.compat import import_crypten

REPO_ROOT = Path(__file__).resolve().parents[1]
SCALE = 2**16  # CrypTen's default fixed-point scale (16 fraction bits)


@pytest.fixture(scope="module")
def crypten() -> types.ModuleType:
    crypten = import_crypten()
    crypten.init()  # single party, in-process: enough for local arithmetic and decoding
    return crypten


def test_import_crypten_in_fresh_interpreter() -> None:
    """Fix 1: stock `import crypten` raises ModuleNotFoundError on torch >= 2.9."""
    # A fresh interpreter, because this test process may already hold the alias.
    code = (
        "import sys\n"
        "from mpc.compat import import_crypten\n"
        "crypten = import_crypten()\n"
        "assert import_crypten() is crypten\n"
        "old = sys.modules['torch.onnx._internal.registration']\n"
        "assert hasattr(old, 'registry')\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,  # the assert below reports the child's stderr instead
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("p", [3, 5, 7, 9])
def test_pow_odd_exponent(crypten: types.ModuleType, p: int) -> None:
    """Fix 2: stock x.pow(5) is x**6 and x.pow(7) is x**9."""
    x = torch.linspace(-1.5, 1.5, 61)
    got = crypten.cryptensor(x).pow(p).get_plain_text()
    torch.testing.assert_close(got, x.pow(p), atol=1e-2, rtol=1e-3)


def test_erf_equals_its_taylor_polynomial(crypten: types.ModuleType) -> None:
    """Fix 2 seen through `erf`: stock erf(3) = -277843 because its odd powers are wrong.

    CrypTen's erf is a truncated Taylor series, still poor past |x| = 1.5 (about 107 at 3), so the
    reference is that polynomial in float64, not torch.erf. Its coefficients are public floats that
    CrypTen encodes by truncation to 16 fraction bits (the x**15 and x**17 terms vanish), so the
    reference truncates them the same way.
    """
    iterations = crypten.cfg.functions.erf_iterations
    x = torch.linspace(-3.0, 3.0, 25, dtype=torch.float64)
    series = sum(
        math.trunc((-1) ** n / (math.factorial(n) * (2 * n + 1)) * SCALE) / SCALE * x.pow(2 * n + 1)
        for n in range(iterations + 1)
    )
    expected = (series * 2.0 / math.sqrt(math.pi)).float()
    got = crypten.cryptensor(x.float()).erf().get_plain_text()
    torch.testing.assert_close(got, expected, atol=1e-2, rtol=1e-4)


def test_decode_negative_values_exactly(crypten: types.ModuleType) -> None:
    """Fix 3: stock decode puts ~0.07 % of negatives exactly 1.0 too low (-1.99998 -> -2.99998).

    The values -k + j / SCALE (1 <= j < k) are the ones stock decode gets wrong; each is exact in
    float32 (k < 256), so the encode/decode round trip must reproduce it to within one step.
    """
    k, j = torch.meshgrid(torch.arange(2, 256), torch.arange(1, 256), indexing="ij")
    edge_cases = (-k + j / SCALE)[j < k].float()
    spread = torch.linspace(-250.0, 250.0, 20001)  # both signs, incl. 0; float32-exact decode
    x = torch.cat([edge_cases, spread])
    got = crypten.cryptensor(x).get_plain_text()
    assert (got - x).abs().max().item() <= 2**-16

    # Scale 1 (integer / binary encodings) keeps CrypTen's behaviour.
    integers = torch.tensor([-3, -1, 0, 2, 7])
    encoder = crypten.encoder.FixedPointEncoder(precision_bits=0)
    assert torch.equal(encoder.decode(encoder.encode(integers)), integers)


def test_from_pytorch_matches_plaintext(crypten: types.ModuleType) -> None:
    """Fix 4: stock `from_pytorch` fails because torch.onnx.export now defaults to dynamo."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    encrypted_model = crypten.nn.from_pytorch(model, torch.zeros(1, 4)).encrypt()
    x = torch.randn(5, 4)
    got = encrypted_model(crypten.cryptensor(x)).get_plain_text()
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(got, expected, atol=1e-2, rtol=0)
