"""From a checkpoint to the encrypted model: inference weights, LayerNorm calibration, the public
description (with the checks that refuse a form outside its valid range), sharing.

The encrypted model IS `models.gpt.GPT`: the same modules and forward pass, with `CryptenOps` and
every parameter replaced by a CrypTensor secret-shared from the server's rank. The client builds the
same skeleton from the public config (its weight values are never used: CrypTen takes only the shape
from a non-owner) and so never sees a weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.nn.utils import parametrize

from models.checkpoint import load_checkpoint
from models.config import ModelConfig
from models.data import encode_documents, load_documents, split_documents, tokenizer_from_json
from models.errors import UserError
from models.gpt import GPT, LayerNorm, Linear, ScaledResidual
from mpc.approx import ApproxConfig, check_context
from mpc.roles import SERVER
from mpc.session.public_model import PublicModel


def inference_model(
    cfg: ModelConfig, state: dict[str, torch.Tensor] | None = None, fold_gains: bool = False
) -> GPT:
    """The plaintext model as inference runs it: training-only parts dropped, weight and spectral
    normalization folded into plain weights (free at inference: the server computes them once).
    With `fold_gains`, each scaled FFN's gain 1 / alpha is folded into its last linear too."""
    model = GPT(cfg)
    if state is not None:
        model.load_state_dict(state)
    model.entropy_reg = None
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    if fold_gains:
        fold_ffn_gains(model)
    return model.eval()


class FoldedScaledResidual(ScaledResidual):
    """beta h + FFN'(h): a ScaledResidual whose gain 1 / alpha the server multiplied into the
    FFN's last linear (weight and bias) in plaintext before sharing, so one secret multiply per
    layer is gone. The same function; the gain is as secret as every other weight."""

    def __init__(self, residual_gain: torch.nn.Parameter) -> None:
        torch.nn.Module.__init__(self)
        self.residual_gain = residual_gain

    def forward(self, h, branch):
        return h * self.residual_gain + branch(h)


@torch.no_grad()
def fold_ffn_gains(model: GPT) -> None:
    for block in model.transformer.h:
        residual = block.ffn_residual
        if type(residual) is not ScaledResidual:
            continue
        mlp = block.mlp
        last = mlp.c_proj if isinstance(mlp.c_proj, Linear) else mlp.c_fc
        last.weight.mul_(residual.ffn_gain)
        if last.bias is not None:
            last.bias.mul_(residual.ffn_gain)
        block.ffn_residual = FoldedScaledResidual(residual.residual_gain)


def layer_norms(model: GPT) -> list[LayerNorm]:
    return [m for m in model.modules() if isinstance(m, LayerNorm)]


@torch.no_grad()
def layernorm_variances(model: GPT, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Each LayerNorm's input row variances (biased, as the LayerNorm's) on calibration text."""
    found: list[torch.Tensor] = []
    hooks = [
        norm.register_forward_pre_hook(
            lambda _, args: found.append(args[0].var(-1, unbiased=False))
        )
        for norm in layer_norms(model)
    ]
    try:
        model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def calibrate_layernorms(model: GPT, tokens: torch.Tensor) -> list[float]:
    """One public variance scale per LayerNorm: the median row variance of its input on
    calibration text, so that var / scale sits near 1 where CrypTen's inverse square root is
    accurate. Computed by the server in plaintext on public text, before any query."""
    return [max(float(v.median()), 1e-4) for v in layernorm_variances(model, tokens)]


def check_layernorm_range(
    model: GPT, tokens: torch.Tensor, scales: list[float], form: str, precision_bits: int
) -> None:
    """Refuse a LayerNorm form for a model whose rows, on public calibration text, already leave
    the form's accurate window of (variance + eps) / scale (the server's check before serving)."""
    from mpc.forms.layernorm import variance_ratio_limits

    cfg, variances = model.config, layernorm_variances(model, tokens)
    pairs = zip(variances, scales, strict=True)
    ratios = torch.cat([((v + cfg.layer_norm_eps) / s).flatten() for v, s in pairs])
    low, high = variance_ratio_limits(form, cfg.n_embd, precision_bits)
    if ratios.min() < low or ratios.max() > high:
        raise ValueError(
            f"layernorm_form={form} is accurate for row variances {low:.2g} .. {high:.2g} times "
            f"the calibrated scale, but this model's rows reach {float(ratios.min()):.2g} .. "
            f"{float(ratios.max()):.2g} on calibration text: use --layernorm-form range_reduced"
        )


@torch.no_grad()
def softmax_row_max_range(model: GPT, tokens: torch.Tensor) -> tuple[float, float]:
    """(lowest, highest) row max of every attention softmax's input on calibration text: the
    logits the max-free softmax must see inside its bound [-b, b]."""
    from models.gpt import Softmax

    lows, highs = [], []

    def record(_, args) -> None:
        row_max = args[0].amax(-1)  # masked entries sit at the mask value, below every row max
        lows.append(float(row_max.min()))
        highs.append(float(row_max.max()))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, Softmax)]
    try:
        model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return min(lows), max(highs)


def check_softmax_bound(model: GPT, tokens: torch.Tensor, bound: float) -> None:
    """Refuse the max-free softmax for a model whose attention logits leave [-bound, bound] on
    public calibration text (the server's plaintext check before serving anything)."""
    low, high = softmax_row_max_range(model, tokens)
    if low < -bound or high > bound:
        raise ValueError(
            f"softmax_form=max_free needs every attention row max in [-{bound:g}, {bound:g}], "
            f"but this model reaches [{low:.2f}, {high:.2f}] on calibration text: use "
            "softmax_form=tree (or stock)"
        )


def apply_var_scales(model: GPT, scales: list[float]) -> None:
    norms = layer_norms(model)
    if len(norms) != len(scales):
        raise ValueError(f"{len(scales)} LayerNorm scales for {len(norms)} LayerNorms")
    for norm, scale in zip(norms, scales, strict=True):
        norm.var_scale = float(scale)


def calibration_tokens(tokenizer_json: str, length: int, rows: int = 4) -> torch.Tensor:
    """Public calibration text: validation files of the Python standard library (present on every
    machine with Python), tokenized with the model's tokenizer; (rows, length) ids."""
    _, validation = split_documents(load_documents(None))
    ids = encode_documents(tokenizer_from_json(tokenizer_json), validation[: 4 * rows])
    needed = rows * length
    if len(ids) < needed:
        raise ValueError(f"calibration text has {len(ids)} tokens, {needed} needed")
    return torch.from_numpy(ids[:needed].astype("int64")).view(rows, length)


CALIBRATION_LENGTH = 128  # tokens per calibration row at most (a 1024 context needs no more)


def describe_model(
    checkpoint_path: str, approx: ApproxConfig, dealer: str, weights: str = ""
) -> PublicModel:
    """The public description of a checkpoint, with LayerNorm scales calibrated on public text;
    `weights` labels where the weights came from (default: the checkpoint's file name). A form
    the model leaves the valid range of (on its context, or on calibration text) is refused."""
    checkpoint = load_checkpoint(checkpoint_path)
    cfg = checkpoint.config
    model = inference_model(cfg, checkpoint.model_state)
    scales: list[float] = []
    length = min(cfg.block_size, CALIBRATION_LENGTH)
    if checkpoint.tokenizer_json:
        tokens = calibration_tokens(checkpoint.tokenizer_json, length)
    else:  # random weights have no tokenizer; random ids exercise them just as well
        tokens = torch.randint(
            0, cfg.vocab_size, (4, length), generator=torch.Generator().manual_seed(0)
        )
    try:
        check_context(approx, cfg.block_size)
        if cfg.norm == "layernorm":
            scales = calibrate_layernorms(model, tokens)
            form, bits = approx.layernorm_form, approx.precision_bits
            check_layernorm_range(model, tokens, scales, form, bits)
        if approx.softmax_form == "max_free":
            check_softmax_bound(model, tokens, approx.softmax_logit_bound)
    except ValueError as error:  # ApproxError is one too
        raise UserError(str(error)) from None
    return PublicModel(
        backend="crypten",
        config=cfg.to_dict(),
        settings=approx.to_dict(),
        tokenizer_json=checkpoint.tokenizer_json,
        dealer=dealer,
        layernorm_var_scales=scales,
        weights=weights or Path(checkpoint_path).name,
    )


def encrypt_parameters(model: GPT, crypten: Any, src: int = SERVER) -> None:
    """Replace every parameter by a CrypTensor shared from `src` (in module order, the same on
    every party). Sharing from the owner costs no communication: the other party's share is
    pseudo-random from a seed the two parties agreed on at start-up."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            del module._parameters[name]
            setattr(module, name, crypten.cryptensor(param.detach(), src=src))


def one_hot(ids: list[int], vocab_size: int) -> torch.Tensor:
    """(1, T, V) one-hot rows of the client's prompt."""
    return torch.nn.functional.one_hot(torch.tensor([ids]), vocab_size).float()
