"""Attention entropy: the AERO regularizer (training) and the per-head analysis (any checkpoint)."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.config import ModelConfig

BIN_LABELS = ("[0, m/4)", "[m/4, m/2)", "[m/2, 3m/4)", "[3m/4, m]")


def row_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each attention row, -sum_j a_ij log(a_ij + 1e-9); shape (..., T_query)."""
    return -(probs * torch.log(probs + 1e-9)).sum(dim=-1)


class EntropyRegularizer(nn.Module):
    """AERO's per-head entropy penalty with learnable thresholds theta in R^{L x H} (or one
    H-vector shared by every layer, `entropy_thresholds = "head"`, as the released code).

    For each layer l, head h, sequence b and query i, with e the entropy of that attention row:
        delta = e - theta[l, h] * log T;  penalty = delta^2 where |delta| > gamma * log T, else 0.
    Per layer the penalties are reduced over (b, i) (sum as in the paper's code, or mean), summed
    over heads and divided by H; the layer terms are summed and divided by L. The result is
    multiplied by lambda, ready to add to the cross-entropy.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        rows = cfg.n_layer if cfg.entropy_thresholds == "layer_head" else 1
        self.thresholds = nn.Parameter(
            torch.full((rows, cfg.n_head), float(cfg.entropy_threshold_init))
        )
        self.n_layer = cfg.n_layer
        self.gamma = cfg.entropy_gamma
        self.weight = cfg.entropy_lambda
        self.reduction = cfg.entropy_reduction
        self.accumulation = cfg.entropy_accumulation

    def unweighted(self, layer_probs: list[torch.Tensor]) -> torch.Tensor:
        """The penalty before lambda, from one (B, H, T, T) attention tensor per layer."""
        n_layer, n_head = self.n_layer, self.thresholds.size(1)
        if len(layer_probs) != n_layer:
            raise ValueError(f"expected attention from {n_layer} layers, got {len(layer_probs)}")
        log_t = math.log(layer_probs[0].size(-1))
        total = layer_probs[0].new_zeros(())
        for layer, probs in enumerate(layer_probs):
            entropy = row_entropy(probs)  # (B, H, T)
            theta = self.thresholds[layer % self.thresholds.size(0)]  # shared: row 0 every layer
            delta = entropy - theta.view(1, n_head, 1) * log_t
            penalty = delta.square() * (delta.abs() > self.gamma * log_t)
            per_head = penalty.sum(dim=(0, 2)) if self.reduction == "sum" else penalty.mean((0, 2))
            total = total + per_head.sum() / n_head
        return total / n_layer

    def forward(self, layer_probs: list[torch.Tensor]) -> torch.Tensor:
        return self.weight * self.unweighted(layer_probs)

    def adds_up(self) -> bool:
        """Whether a micro-batch's penalty adds to the step's as is (the paper-style sum over the
        whole batch); otherwise it is weighted by the micro-batch's share of the batch, which
        gives the mean ("mean" reduction) or the released trainer's sum / (K x devices)."""
        return self.reduction == "sum" and self.accumulation == "sum"


def head_entropies(layer_probs: list[torch.Tensor]) -> torch.Tensor:
    """E(l, h): entropy per head averaged over queries and sequences, (L, H) in nats."""
    return torch.stack([row_entropy(p).mean(dim=(0, 2)) for p in layer_probs])


def head_distribution(entropies: torch.Tensor, largest: float | None = None) -> torch.Tensor:
    """Fraction of heads in the paper's four bins of [0, m], m the largest head entropy observed."""
    flat = entropies.flatten()
    m = float(flat.max()) if largest is None else largest
    if m <= 0:
        raise ValueError("all head entropies are zero; the bins are undefined")
    index = torch.clamp((flat / m * 4).floor().long(), 0, 3)  # m itself falls in the top bin
    return torch.bincount(index, minlength=4).float() / flat.numel()
