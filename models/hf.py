"""Hugging Face GPT-2 weights as a project checkpoint.

    python -m models.hf IMPORT_DIR --out runs/gpt2.pt

IMPORT_DIR is a local folder as `save_pretrained` writes it: config.json, model.safetensors (or
its shards with model.safetensors.index.json, or pytorch_model.bin) and the tokenizer
(tokenizer.json, or vocab.json and merges.txt). The checkpoint holds the baseline (SM+LN+G, the
tanh GELU) at the folder's sizes, its context (n_positions) included, and the tokenizer as
`tokenizers` JSON. A setting this model does not implement is refused with one line, never
dropped: the logits would silently differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import Checkpoint, save_checkpoint
from models.config import ModelConfig, resolve_config
from models.data import EOT
from models.errors import UserError
from models.gpt import GPT

# HF keys this model has no use for: causal-mask buffers of old versions.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
HEAD, TABLE = "lm_head.weight", "transformer.wte.weight"
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # GPT-2's GELU, the tanh form this model uses
# HF settings that change the function; the value this model implements.
REQUIRED = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}


class HFWeightsError(UserError, ValueError):
    """A GPT-2 folder or state dict that does not fit the requested config."""


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
        model.load_state_dict({key: value.float() for key, value in renamed.items()})
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise HFWeightsError(f"GPT-2 state dict does not fit {cfg.arch}: {detail}") from None
    return model.eval()


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """The baseline config of a GPT-2 config.json; a setting the model lacks is refused."""
    if hf.get("model_type") != "gpt2":
        raise HFWeightsError(f"model_type {hf.get('model_type')!r}: only GPT-2 ('gpt2') imports")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in TANH_GELUS:
        raise HFWeightsError(
            f"activation_function {activation!r}: this model's GELU is the tanh form "
            f"({' or '.join(TANH_GELUS)})"
        )
    for name, value in REQUIRED.items():
        if hf.get(name, value) != value:
            raise HFWeightsError(f"{name}={hf[name]!r} is not implemented (needs {value!r})")
    n_embd, inner = hf.get("n_embd", 768), hf.get("n_inner")
    if inner is not None and inner % n_embd:
        raise HFWeightsError(f"n_inner={inner} is not a multiple of n_embd={n_embd}")
    sizes = {
        "n_layer": hf.get("n_layer", 12),
        "n_head": hf.get("n_head", 12),
        "n_embd": n_embd,
        "block_size": hf.get("n_positions", 1024),
        "vocab_size": hf.get("vocab_size", 50257),
        "layer_norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
        "ffn_mult": (inner or 4 * n_embd) // n_embd,
    }
    return resolve_config("baseline", "gpt2", **sizes)


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a save_pretrained folder: safetensors (one file or shards) or a .bin."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise HFWeightsError(f"{folder} has no model.safetensors(.index.json) or pytorch_model.bin")


def read_tokenizer(folder: Path, vocab_size: int) -> str:
    """The folder's tokenizer as `tokenizers` JSON: tokenizer.json as is, or GPT-2's byte-level
    BPE built from vocab.json and merges.txt. It must know <|endoftext|> (calibration text is
    separated by it) and produce ids inside the model's vocabulary."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import ByteLevelBPETokenizer

    if (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        bpe = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        tokenizer = Tokenizer.from_str(bpe.to_str())
    else:
        raise HFWeightsError(f"{folder} has no tokenizer.json, nor vocab.json with merges.txt")
    if tokenizer.token_to_id(EOT) is None:
        raise HFWeightsError(f"the tokenizer has no {EOT} token (GPT-2's document separator)")
    if tokenizer.get_vocab_size() > vocab_size:
        raise HFWeightsError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens, the model {vocab_size}"
        )
    return tokenizer.to_str()


def import_hf_gpt2(folder: str | Path) -> Checkpoint:
    """A project checkpoint of a local Hugging Face GPT-2 folder (nothing is downloaded)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HFWeightsError(f"{folder} has no config.json (a save_pretrained folder expected)")
    try:
        hf = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as error:
        raise HFWeightsError(f"{folder}/config.json is not JSON ({error})") from None
    cfg = config_from_hf(hf)
    model = load_hf_gpt2_state_dict(read_state(folder), cfg)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    meta = {
        "status": "imported",
        "source": "huggingface-gpt2",
        "import_dir": str(folder.resolve()),
        "hf_config": hf,
        "files_sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
    }
    return Checkpoint(cfg, model.state_dict(), read_tokenizer(folder, cfg.vocab_size), meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.hf", description=__doc__.split("\n")[0])
    parser.add_argument("import_dir", help="a local save_pretrained GPT-2 folder")
    parser.add_argument("--out", required=True, help="checkpoint to write, e.g. runs/gpt2.pt")
    args = parser.parse_args(argv)
    checkpoint = import_hf_gpt2(args.import_dir)
    save_checkpoint(args.out, checkpoint)
    cfg = checkpoint.config
    count = sum(t.numel() for t in checkpoint.model_state.values())
    print(
        f"hf: {args.out}: {cfg.arch}, {cfg.n_layer} layers, {cfg.n_head} heads, width "
        f"{cfg.n_embd}, context {cfg.block_size}, vocabulary {cfg.vocab_size}, "
        f"{count / 1e6:.1f} M parameters"
    )
    return 0


def cli() -> None:
    from models.cli import run_main

    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
