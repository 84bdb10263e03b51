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

    def softmax(self, scores: Tensor, dim: int = -1) -> Tensor:
        return torch.softmax(scores, dim=dim)


TORCH_OPS = TensorOps()


def causal_keep(length: int) -> torch.Tensor:
    """Public (T, T) 0/1 matrix: query i may attend to key j <= i."""
    return torch.tril(torch.ones(length, length))


def apply_causal_mask(scores: Tensor, keep: torch.Tensor, mask_value: float) -> Tensor:
    """Replace future logits by a finite constant: scores * keep + mask_value * (1 - keep).

    Replacing (not adding) keeps the masked value fixed whatever the logits' size; both terms are
    public, so under MPC this is a local multiply and add with no communication.
    """
    return scores * keep + (1.0 - keep) * mask_value
