"""CrypTen versions of the few operations that differ between plaintext and encrypted tensors.

`CryptenOps` implements `models.ops.TensorOps` on CrypTen MPCTensors (activations and weights
both secret), with every approximation knob taken from one `ApproxConfig`: each nonlinearity runs
the form the config names, from the registry `mpc.forms`, where each form's docstring states the
input range it is accurate on and the error measured there. No method decrypts anything: every
step is a CrypTensor operation with public constants.
"""

from __future__ import annotations

import contextlib

from models.ops import Tensor, TensorOps
from mpc.approx import ApproxConfig, ApproxError, apply_to_crypten, function_keys
from mpc.compat import import_crypten
from mpc.forms import form


class CryptenOps(TensorOps):
    """`TensorOps` for CrypTen MPCTensors, configured by one `ApproxConfig`.

    Each method runs with the config's function keys set in `crypten.cfg` (restored afterwards),
    and refuses to run if CrypTen encodes at another precision than the config states: call
    `mpc.approx.apply_to_crypten(approx)` once per party before encrypting anything.
    """

    name = "crypten"

    def __init__(self, approx: ApproxConfig) -> None:
        self.approx = approx
        self._gelu = form("gelu", approx.gelu_form).crypten
        self._relu = form("relu", "stock").crypten
        self._softmax = form("softmax", approx.softmax_form).crypten
        self._layer_norm = form("layernorm", approx.layernorm_form).crypten

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
        """The LayerNorm form `approx.layernorm_form` (`mpc.forms.layernorm`), the rows scaled by
        the public calibration `var_scale`."""
        with self._configured():
            return self._layer_norm(x, weight, bias, eps, var_scale, approx=self.approx)

    def gelu(self, x: Tensor) -> Tensor:
        """The GELU form `approx.gelu_form` (`mpc.forms.activations`)."""
        with self._configured():
            return self._gelu(x, approx=self.approx)

    def relu(self, x: Tensor) -> Tensor:
        with self._configured():
            return self._relu(x, approx=self.approx)

    def softmax(self, scores: Tensor, dim: int = -1, keep: Tensor | None = None) -> Tensor:
        """The softmax form `approx.softmax_form` (`mpc.forms.softmax`); its exponentials are
        multiplied by the public 0/1 `keep` (local, free), so masked weights are 0 to within the
        form's stated error whatever the logits."""
        with self._configured():
            return self._softmax(scores, dim, approx=self.approx, keep=keep)
