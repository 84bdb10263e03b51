"""From a checkpoint to the encrypted model: inference weights, LayerNorm calibration, sharing.

The encrypted model IS `models.gpt.GPT`: the same modules and forward pass, with `CryptenOps` and
every parameter replaced by a CrypTensor secret-shared from the server's rank. The client builds the
same skeleton from the public config (its weight values are never used: CrypTen takes only the shape
from a non-owner) and so never sees a weight.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils import parametrize

from models.config import ModelConfig
from models.data import encode_documents, load_documents, split_documents, tokenizer_from_json
from models.gpt import GPT, LayerNorm
from mpc.roles import SERVER


def inference_model(cfg: ModelConfig, state: dict[str, torch.Tensor] | None = None) -> GPT:
    """The plaintext model as inference runs it: training-only parts dropped, weight and spectral
    normalization folded into plain weights (free at inference: the server computes them once)."""
    model = GPT(cfg)
    if state is not None:
        model.load_state_dict(state)
    model.entropy_reg = None
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model.eval()


def layer_norms(model: GPT) -> list[LayerNorm]:
    return [m for m in model.modules() if isinstance(m, LayerNorm)]


@torch.no_grad()
def calibrate_layernorms(model: GPT, tokens: torch.Tensor) -> list[float]:
    """One public variance scale per LayerNorm: the median row variance of its input on
    calibration text, so that var / scale sits near 1 where CrypTen's inverse square root is
    accurate. Computed by the server in plaintext on public text, before any query."""
    scales: list[float] = []
    hooks = [
        norm.register_forward_pre_hook(
            lambda _, args: scales.append(float(args[0].var(-1, unbiased=False).median()))
        )
        for norm in layer_norms(model)
    ]
    try:
        model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return [max(scale, 1e-4) for scale in scales]


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
