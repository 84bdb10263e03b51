"""Load a Hugging Face GPT-2 state dict (GPT2LMHeadModel or GPT2Model) into the baseline."""

from __future__ import annotations

import torch

from models.config import ModelConfig
from models.errors import UserError
from models.gpt import GPT

# HF keys this model has no use for: causal-mask buffers of old versions.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
HEAD, TABLE = "lm_head.weight", "transformer.wte.weight"


class HFWeightsError(UserError, ValueError):
    """A GPT-2 state dict that does not fit the requested config."""


def load_hf_gpt2_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> GPT:
    """The baseline model with GPT-2 weights. Names and the (in, out) Conv1D layout already match;
    a bare GPT2Model's keys lack the `transformer.` prefix, which is added. The LM head must be
    tied to the token embedding (as GPT-2's is): an untied head is refused, never dropped."""
    if cfg.norm != "layernorm" or cfg.ffn_act != "gelu" or cfg.ffn_form != "standard":
        raise HFWeightsError(f"GPT-2 weights fit the baseline (SM+LN+G), not {cfg.arch}")
    renamed = {}
    for key, value in state.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        renamed[key if key.startswith(("transformer.", HEAD)) else "transformer." + key] = value
    head = renamed.pop(HEAD, None)
    if head is not None and not torch.equal(head, renamed.get(TABLE, head)):
        raise HFWeightsError(
            "the state dict's LM head is not tied to its token embedding: this model computes "
            "logits with the embedding table (GPT-2's tied head), so it cannot load it"
        )
    model = GPT(cfg)
    try:
        model.load_state_dict(renamed)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise HFWeightsError(f"GPT-2 state dict does not fit {cfg.arch}: {detail}") from None
    return model.eval()
