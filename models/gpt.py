"""The AERO GPT-2 family: one forward pass for plaintext torch tensors and encrypted tensors.

Parameter names follow GPT-2 (`wte`, `wpe`, `c_attn`, `c_proj`, `ln_1`, `ln_2`, `ln_f`, `c_fc`) and
linear weights are stored (in, out) like GPT-2's Conv1D, so a Hugging Face GPT-2 state dict loads
directly. Variants are chosen at construction: a removed part is `nn.Identity`, and the forward has
no branch on the variant or on tensor values. The forward only uses operations that mean the same
on torch tensors and on CrypTen tensors, plus the few in `self.ops` (see `models.ops`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrizations

from models.config import ModelConfig
from models.entropy import EntropyRegularizer
from models.ops import TORCH_OPS, Tensor, TensorOps, causal_keep, fill_masked


class Linear(nn.Module):
    """y = x W + b with W stored (in, out), as GPT-2's Conv1D."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True, std: float = 0.02) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * std)
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = x.matmul(self.weight)
        return y if self.bias is None else y + self.bias


class LayerNorm(nn.Module):
    def __init__(self, width: int, eps: float, ops: TensorOps) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps
        self.ops = ops
        # Public calibration constant for the MPC inverse square root (set by the server's
        # calibration, mpc.session.secure_model.calibrate_layernorms).
        self.var_scale = 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps, self.var_scale)


class Activation(nn.Module):
    def __init__(self, kind: str, ops: TensorOps) -> None:
        super().__init__()
        self.kind = kind
        self.ops = ops

    def forward(self, x: Tensor) -> Tensor:
        return getattr(self.ops, self.kind)(x)


class MatMul(nn.Module):
    """a @ b as a module, so the attention matmuls and the LM head are visible to cost hooks."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a.matmul(b)


class Softmax(nn.Module):
    """Row softmax with exact masking: weights where the public 0/1 `keep` is 0 are zero."""

    def __init__(self, ops: TensorOps) -> None:
        super().__init__()
        self.ops = ops

    def forward(self, scores: Tensor, keep: Tensor | None = None) -> Tensor:
        return self.ops.softmax(scores, dim=-1, keep=keep)


class Embed(nn.Module):
    """Token embedding through `ops.embed` (ids index; one-hot rows multiply) plus positions."""

    def __init__(self, ops: TensorOps) -> None:
        super().__init__()
        self.ops = ops

    def forward(self, tokens: Tensor, table: Tensor, positions: Tensor) -> Tensor:
        return self.ops.embed(tokens, table) + positions


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: TensorOps) -> None:
        super().__init__()
        d, proj_std = cfg.n_embd, 0.02 / math.sqrt(2 * cfg.n_layer)
        self.n_head, self.head_size = cfg.n_head, cfg.head_size
        self.c_attn = Linear(d, 3 * d, cfg.bias)
        self.c_proj = Linear(d, d, cfg.bias, std=proj_std)
        self.temperature = AttentionTemperature(cfg) if cfg.attn_temperature else nn.Identity()
        self.mask_value = cfg.mask_value
        self.qk, self.softmax, self.av = MatMul(), Softmax(ops), MatMul()
        self.register_buffer("keep", causal_keep(cfg.block_size), persistent=False)

    def forward(self, x: Tensor, attention_sink: list | None = None) -> Tensor:
        B, T, C = x.size()
        qkv = self.c_attn(x)  # (B, T, 3C)
        q, k, v = (
            qkv[:, :, i * C : (i + 1) * C]
            .reshape(B, T, self.n_head, self.head_size)
            .transpose(1, 2)
            for i in range(3)
        )  # each (B, nh, T, hs)
        scores = self.qk(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_size))  # (B,nh,T,T)
        keep = self.keep[:T, :T]  # public (T, T) 0/1: key j <= query i
        # The fill is for the MPC forms' row max only; the softmax masks exactly with `keep`.
        probs = self.softmax(fill_masked(self.temperature(scores), keep, self.mask_value), keep)
        if attention_sink is not None:
            attention_sink.append(probs)
        y = self.av(probs, v)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class AttentionTemperature(nn.Module):
    """Learnable temperature t in R^{H x T}, one per head and query position, dividing the logits.

    Parameterized by its inverse (logits * inv_temperature, init 1): the same function class, and
    under MPC a multiply by a secret instead of a secret reciprocal. t = 1 / inv_temperature.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inv_temperature = nn.Parameter(torch.ones(cfg.n_head, cfg.block_size))

    def forward(self, scores: Tensor) -> Tensor:
        T = scores.size(-2)
        return scores * self.inv_temperature[:, :T].unsqueeze(-1)  # (nh, T, 1) over keys


class FeedForward(nn.Module):
    """act(z W_in) W_out; a fused FFN is one d x d linear (no activation: W_in W_out is one map)."""

    def __init__(self, cfg: ModelConfig, ops: TensorOps) -> None:
        super().__init__()
        proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        if cfg.ffn_form == "fused":
            self.c_fc = Linear(cfg.n_embd, cfg.n_embd, cfg.bias, std=proj_std)
            self.act, self.c_proj = nn.Identity(), nn.Identity()
        else:
            self.c_fc = Linear(cfg.n_embd, cfg.ffn_hidden, cfg.bias)
            self.act = nn.Identity() if cfg.ffn_act == "identity" else Activation(cfg.ffn_act, ops)
            self.c_proj = Linear(cfg.ffn_hidden, cfg.n_embd, cfg.bias, std=proj_std)
        for linear in (self.c_fc, self.c_proj):
            _normalize_weight(linear, cfg.ffn_weight_norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


def _normalize_weight(module: nn.Module, kind: str) -> None:
    """Static weight or spectral normalization: free at inference (the server folds it into W)."""
    if kind == "weight" and isinstance(module, Linear):
        parametrizations.weight_norm(module, "weight", dim=1)  # one norm per output unit
    elif kind == "spectral" and isinstance(module, Linear):
        parametrizations.spectral_norm(module, "weight", dim=1)


class PlainResidual(nn.Module):
    def forward(self, h: Tensor, branch) -> Tensor:
        return h + branch(h)


class ScaledResidual(nn.Module):
    """out = beta * h + (1 / alpha) * FFN(h), one learnable scalar pair per layer.

    Stored as residual_gain = beta and ffn_gain = 1 / alpha, so MPC multiplies by secrets and never
    needs a secret reciprocal."""

    def __init__(self, init: float) -> None:
        super().__init__()
        self.residual_gain = nn.Parameter(torch.full((1,), init))
        self.ffn_gain = nn.Parameter(torch.full((1,), 1.0 / init))

    def forward(self, h: Tensor, branch) -> Tensor:
        return h * self.residual_gain + branch(h) * self.ffn_gain


class SkipFFN(nn.Module):
    """A pruned layer: the FFN sub-block is gone, its residual stream passes through."""

    def forward(self, h: Tensor, branch) -> Tensor:
        return h


def _norm(cfg: ModelConfig, ops: TensorOps) -> nn.Module:
    return (
        LayerNorm(cfg.n_embd, cfg.layer_norm_eps, ops) if cfg.norm == "layernorm" else nn.Identity()
    )


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, ops: TensorOps) -> None:
        super().__init__()
        self.ln_1 = _norm(cfg, ops)
        self.attn = CausalSelfAttention(cfg, ops)
        if cfg.has_ffn(layer):
            self.ln_2 = _norm(cfg, ops)
            self.mlp = FeedForward(cfg, ops)
            self.ffn_residual = (
                ScaledResidual(cfg.ffn_scale_init) if cfg.ffn_scaled else PlainResidual()
            )
        else:
            self.ln_2, self.mlp, self.ffn_residual = nn.Identity(), nn.Identity(), SkipFFN()

    def _ffn_branch(self, h: Tensor) -> Tensor:
        return self.mlp(self.ln_2(h))

    def forward(self, x: Tensor, attention_sink: list | None = None) -> Tensor:
        h = x + self.attn(self.ln_1(x), attention_sink)
        return self.ffn_residual(h, self._ffn_branch)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: TensorOps = TORCH_OPS) -> None:
        super().__init__()
        self.config = cfg
        self.ops = ops
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                h=nn.ModuleList(Block(cfg, i, ops) for i in range(cfg.n_layer)),
                ln_f=_norm(cfg, ops),
            )
        )
        nn.init.normal_(self.transformer.wte.weight, std=0.02)
        nn.init.normal_(self.transformer.wpe.weight, std=0.01)
        self.embed, self.lm_head = Embed(ops), MatMul()
        # Training-only: per-head learnable entropy thresholds; never part of inference.
        self.entropy_reg = EntropyRegularizer(cfg) if cfg.entropy_reg else None

    def forward(
        self, tokens: Tensor, attention_sink: list | None = None, last_only: bool = False
    ) -> Tensor:
        """Logits for token ids (B, T) or one-hot rows (B, T, V); (B, 1, V) with `last_only`.

        The LM head is tied to the token embedding, as in GPT-2."""
        T = tokens.size(1)
        wte = self.transformer.wte.weight
        x = self.embed(tokens, wte, self.transformer.wpe.weight[:T])  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, attention_sink)
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, T - 1 : T]
        return self.lm_head(x, wte.transpose(0, 1))  # (B, T, V)

    def use_ops(self, ops: TensorOps) -> None:
        """Swap the tensor-type-specific operations everywhere (plaintext <-> MPC)."""
        for module in self.modules():
            if hasattr(module, "ops"):
                module.ops = ops

    def num_params(self, include_training_only: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        if self.entropy_reg is not None and not include_training_only:
            total -= sum(p.numel() for p in self.entropy_reg.parameters())
        return total
