"""The few operations whose computation differs between plaintext torch and encrypted tensors.

Everything else in the forward pass (matmul, add, mul by public or secret tensors, slicing, view,
transpose) means the same on a torch tensor and on a CrypTen CrypTensor, so the model calls those
directly. A model holds one `TensorOps` object; the plaintext one is below, the CrypTen one lives in
`mpc.ops` (so `models` never imports an MPC library). Swapping the object is the only change needed
to run the same forward pass on secret shares.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

Tensor = Any  # a torch.Tensor or an encrypted tensor with the same operator surface


class TensorOps:
    """Plaintext reference implementations: exact, the functions the MPC approximations target."""

    name = "torch"

    def embed(self, tokens: Tensor, table: Tensor) -> Tensor:
        """Token embedding. Integer ids index the table; a one-hot (B, T, V) input multiplies it,
        which is how an encrypted prompt is embedded (indexing by a secret is not possible)."""
        if isinstance(tokens, torch.Tensor) and not tokens.is_floating_point():
            return F.embedding(tokens, table)
        return tokens.matmul(table)

    def layer_norm(
        self, x: Tensor, weight: Tensor, bias: Tensor, eps: float, var_scale: float = 1.0
    ) -> Tensor:
        """LayerNorm over the last dim. `var_scale` is a public calibration constant that only the
        MPC form needs (it keeps its inverse square root in range); it does not change the value."""
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    def gelu(self, x: Tensor) -> Tensor:
        """GPT-2's GELU, the tanh form."""
        return F.gelu(x, approximate="tanh")

    def relu(self, x: Tensor) -> Tensor:
        return F.relu(x)

    def softmax(self, scores: Tensor, dim: int = -1, keep: Tensor | None = None) -> Tensor:
        """Softmax along `dim`. Where the public 0/1 `keep` (broadcast to `scores`) is 0 the weight
        is exactly 0, whatever the logits: exact causal masking (each row keeps at least one entry:
        the diagonal)."""
        if keep is not None:
            scores = scores.masked_fill(keep == 0, float("-inf"))
        return torch.softmax(scores, dim=dim)


TORCH_OPS = TensorOps()


def causal_keep(length: int) -> torch.Tensor:
    """Public (T, T) 0/1 matrix: query i may attend to key j <= i."""
    return torch.tril(torch.ones(length, length))


def fill_masked(scores: Tensor, keep: torch.Tensor, fill: float) -> Tensor:
    """Put the finite public constant `fill` where `keep` is 0: scores * keep + fill * (1 - keep).

    This is not the mask: `softmax(scores, keep=keep)` zeroes those weights exactly whatever they
    hold. The fill only keeps the masked entries in a known place for the MPC softmax forms that
    take a row max (`mpc.forms.softmax`): below every row's largest kept logit, so the max is the
    kept entries' max. Both terms are public: under MPC a local multiply and add, no traffic.
    """
    return scores * keep + (1.0 - keep) * fill
