"""Load a Hugging Face GPT-2 state dict (GPT2LMHeadModel or GPT2Model) into the baseline."""

from __future__ import annotations

import torch

from models.config import ModelConfig
from models.errors import UserError
from models.gpt import GPT

# HF keys this model has no use for: causal-mask buffers of old versions, and the tied LM head.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "lm_head.weight")


class HFWeightsError(UserError, ValueError):
    """A GPT-2 state dict that does not fit the requested config."""


def load_hf_gpt2_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> GPT:
    """The baseline model with GPT-2 weights. Names and the (in, out) Conv1D layout already match;
    a bare GPT2Model's keys lack the `transformer.` prefix, which is added."""
    if cfg.norm != "layernorm" or cfg.ffn_act != "gelu" or cfg.ffn_form != "standard":
        raise HFWeightsError(f"GPT-2 weights fit the baseline (SM+LN+G), not {cfg.arch}")
    renamed = {}
    for key, value in state.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        renamed[key if key.startswith("transformer.") else "transformer." + key] = value
    model = GPT(cfg)
    try:
        model.load_state_dict(renamed)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise HFWeightsError(f"GPT-2 state dict does not fit {cfg.arch}: {detail}") from None
    return model.eval()
