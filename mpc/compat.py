"""The one place that makes CrypTen 0.4.1 work on torch 2.13.

Import CrypTen only through `import_crypten()`: it applies every fix below exactly once and returns
the `crypten` module. Each fix is pinned by a test in `tests/test_compat.py` that fails without it.
Each fix is pinned by a test in tests/test_compat.py that fails without it.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from typing import Any

import torch

# torch >= 2.9 moved the TorchScript exporter's registration module to this new name.
_OLD_REGISTRATION = "torch.onnx._internal.registration"
_NEW_REGISTRATION = "torch.onnx._internal.torchscript_exporter.registration"

_crypten: types.ModuleType | None = None


def import_crypten() -> types.ModuleType:
    """Return the `crypten` module with every torch-2.13 fix applied (idempotent)."""
    global _crypten
    if _crypten is None:
        _alias_onnx_registration()  # must precede the import: `import crypten` itself crashes
        import crypten

        _fix_odd_pow()
        _fix_fixed_point_decode()
        _fix_onnx_export_dynamo_default()
        _crypten = crypten
    return _crypten


def _alias_onnx_registration() -> None:
    """Fix 1: make `import crypten` work on torch >= 2.9.

    Wrong: `crypten/nn/onnx_converter.py` runs `from torch.onnx._internal.registration import
    registry` at import time; torch 2.9 moved that module, so `import crypten` raises
    ModuleNotFoundError. Right: the module only moved (same `registry` object), so registering
    it under its old name in `sys.modules` satisfies the import unchanged. Skipped where the old
    name still imports (older torch), so a real module is never shadowed.
    """
    if _OLD_REGISTRATION in sys.modules:
        return
    try:
        importlib.import_module(_OLD_REGISTRATION)
    except ModuleNotFoundError:
        sys.modules[_OLD_REGISTRATION] = importlib.import_module(_NEW_REGISTRATION)


def _fix_odd_pow() -> None:
    """Fix 2: make `CrypTensor.pow(p)` compute x**p for odd p >= 5.

    Wrong: `crypten.common.functions.power.pow` handles odd p as `(x**3).pow((p - 1) // 2)`,
    i.e. x**(3 (p - 1) / 2): x.pow(5) gives x**6, x.pow(7) gives x**9, and `erf` (which sums
    odd powers up to x**17) returns -277843 at 3. Right: x**p = x**(p - 1) * x, and p - 1 is
    even, which the stock code does correctly (`square().pow(p // 2)`, recursing through this
    patched method). Costs one more multiplication than square-and-multiply at worst.
    Patched on `CrypTensor` (where CrypTen registers `pow`), so every subclass (MPCTensor) sees it.
    """
    from crypten.common.functions import power
    from crypten.cryptensor import CrypTensor

    stock_pow = power.pow  # the module attribute is left untouched, so re-applying is harmless

    @functools.wraps(stock_pow)
    def exact_pow(self: Any, p: Any, **kwargs: Any) -> Any:
        if isinstance(p, float) and int(p) == p:
            p = int(p)
        if isinstance(p, int) and p >= 3 and p % 2 == 1:
            return self.pow(p - 1, **kwargs).mul(self)
        return stock_pow(self, p, **kwargs)

    CrypTensor.pow = exact_pow


def _exact_decode(self: Any, tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Decode a scaled integer tensor: floor(t / scale) + (t mod scale) / scale, exact on int64."""
    from crypten.common.tensor_types import is_int_tensor
    from crypten.encoder import nearest_integer_division

    if tensor is None:
        return None
    assert is_int_tensor(tensor), "input must be a LongTensor"
    if self._scale > 1:
        quotient = tensor.div(self._scale, rounding_mode="floor")
        remainder = tensor - quotient * self._scale  # in [0, scale): exact integer arithmetic
        # Both parts are exact in float32 for |value| < 2**24, so the sum rounds at most once.
        tensor = quotient.float() + remainder.float() / self._scale
    else:
        # Scale 1 (integer / binary encodings): unchanged from CrypTen.
        tensor = nearest_integer_division(tensor, self._scale)
    return tensor.data


def _fix_fixed_point_decode() -> None:
    """Fix 3: make `FixedPointEncoder.decode` (hence `get_plain_text`) exact for negatives.

    Wrong: for negative t, CrypTen floor-divides by `scale - 1` instead of `scale`, then adds
    `t % scale`; whenever floor(t / (scale - 1)) != floor(t / scale) (e.g. t = -2 * 2**16 + 1,
    about 0.07 % of negative values) the result is exactly 1.0 too low (-1.99998 -> -2.99998).
    Right: Python-style floor division gives q = floor(t / scale) and r = t - q * scale in
    [0, scale) with t = q * scale + r exactly, so t / scale = q + r / scale for every sign.
    Replaces the method on the class, so every encoder instance (also existing ones) uses it.
    """
    from crypten.encoder import FixedPointEncoder

    FixedPointEncoder.decode = _exact_decode


def _fix_onnx_export_dynamo_default() -> None:
    """Fix 4: make `crypten.nn.from_pytorch` export with the TorchScript exporter.

    Wrong: torch 2.9+ made `torch.onnx.export` default to `dynamo=True`, which needs
    `onnxscript` and emits graphs CrypTen's converter does not understand; CrypTen's
    `onnx_converter._export_pytorch_model` passes TorchScript-only options and no `dynamo`.
    Right: during CrypTen's export only, `torch.onnx.export` is swapped for the same function
    with `dynamo=False` (the exporter CrypTen was written for); callers outside CrypTen keep
    torch's default. Not thread-safe: do not export from other threads during `from_pytorch`.
    """
    from crypten.nn import onnx_converter

    stock_export_model = onnx_converter._export_pytorch_model
    if getattr(stock_export_model, "_compat_no_dynamo", False):
        return  # already wrapped (e.g. this module was reloaded)

    @functools.wraps(stock_export_model)
    def export_without_dynamo(*args: Any, **kwargs: Any) -> Any:
        torch_export = torch.onnx.export
        torch.onnx.export = functools.partial(torch_export, dynamo=False)
        try:
            return stock_export_model(*args, **kwargs)
        finally:
            torch.onnx.export = torch_export

    export_without_dynamo._compat_no_dynamo = True  # type: ignore[attr-defined]
    onnx_converter._export_pytorch_model = export_without_dynamo
