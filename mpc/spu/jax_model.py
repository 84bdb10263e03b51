"""The AERO GPT-2 family in JAX, as a chain of stages: one per operation category.

The same architecture as `models.gpt` (which stays the one source of truth; tests hold the two to
1e-5 on every registered variant), written for SPU: SPU compiles JAX, not torch. Each `Stage` is a
pure function from named variables to named variables and carries its benchmark layer and
category (`mpc.measure.CATEGORIES`). Run in order in plaintext (`plain_logits`) they give the
model's logits; compiled one executable per stage and chained on one SPU Runtime (`mpc.spu.session`)
they give the per-category cost of secure inference. The sequence is (T, C) for one prompt; the LM
head computes the last position only, as the secure CrypTen forward does; the embedding and the
head run in vocabulary slices sized to a memory budget (`mpc.spu.vocab`).

Weights come from a torch checkpoint through `mpc.session.secure_model.inference_model`
(training-only parts dropped, weight and spectral norms folded), named as its state dict without
`transformer.`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from mpc.forms import form
from mpc.measure import GLOBAL_LAYER
from mpc.spu.settings import SpuSettings
from mpc.spu.vocab import vocab_slice_for, vocab_slices

TOKENS = "tokens"  # the client's one-hot prompt (T, V); every other input is a server weight
LOGITS = "logits"  # (1, V): the last position's logits


@dataclass(frozen=True)
class Stage:
    name: str  # unique in the chain, also the SPU executable's name
    layer: int
    category: str
    fn: Callable
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def export_weights(cfg: ModelConfig, state: dict) -> dict[str, np.ndarray]:
    """The plain inference weights of a torch state dict as float32 numpy arrays."""
    from mpc.session.secure_model import inference_model

    model = inference_model(cfg, state)
    return {
        name.removeprefix("transformer."): tensor.detach().numpy().astype(np.float32)
        for name, tensor in model.state_dict().items()
    }


def layer_norm(x, weight, bias, eps: float):
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)  # biased, as torch
    return centred * jax.lax.rsqrt(var + eps) * weight + bias


def softmax(scores, form: str, keep=None):
    """Row softmax. 'stock' subtracts the row max (the kept entries' max: masked ones hold the
    fill, below it); 'max_free' does not (valid while the logits stay small, see SpuSettings).
    Where the public boolean `keep` is False the weight is exactly 0: a public select of the
    exponentials (no communication), whatever exp made of the masked entries."""
    if form == "stock":
        scores = scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True))
    e = jnp.exp(scores)
    if keep is not None:
        e = jnp.where(keep, e, 0.0)
    return e / e.sum(-1, keepdims=True)


def _heads(x, n_head: int):
    T, C = x.shape
    return x.reshape(T, n_head, C // n_head).transpose(1, 0, 2)  # (nh, T, hs)


class _Chain:
    """Builds the stage list; `current` is the variable holding the residual stream."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []

    def add(self, layer, category, name, fn, inputs, outputs) -> None:
        self.stages.append(Stage(name, layer, category, fn, tuple(inputs), tuple(outputs)))


def _attention(chain: _Chain, cfg: ModelConfig, layer: int, x: str, settings: SpuSettings) -> str:
    p, nh, C = f"h.{layer}.", cfg.n_head, cfg.n_embd
    a = x
    if cfg.norm == "layernorm":
        a = p + "ln_1"
        eps = cfg.layer_norm_eps
        chain.add(
            layer,
            "layernorm",
            a,
            lambda x, w, b: layer_norm(x, w, b, eps),
            [x, p + "ln_1.weight", p + "ln_1.bias"],
            [a],
        )

    def qkv(a, w, b):
        out = a @ w + b  # (T, 3C)
        return tuple(_heads(out[:, i * C : (i + 1) * C], nh) for i in range(3))

    chain.add(
        layer,
        "qkv_proj",
        p + "qkv",
        qkv,
        [a, p + "attn.c_attn.weight", p + "attn.c_attn.bias"],
        [p + "q", p + "k", p + "v"],
    )
    scale = 1.0 / math.sqrt(cfg.head_size)
    chain.add(
        layer,
        "attn_qk",
        p + "qk",
        lambda q, k: (q @ k.transpose(0, 2, 1)) * scale,
        [p + "q", p + "k"],
        [p + "scores"],
    )  # (nh, T, T)
    scores = p + "scores"
    if cfg.attn_temperature:
        scores = p + "scores_t"
        chain.add(
            layer,
            "scaling",
            p + "temperature",
            lambda s, t: s * t[:, : s.shape[-1], None],
            [p + "scores", p + "attn.temperature.inv_temperature"],
            [scores],
        )

    def masked_softmax(s):
        T = s.shape[-1]
        keep = np.tril(np.ones((T, T), dtype=bool))  # public: selects, no communication
        return softmax(jnp.where(keep, s, cfg.mask_value), settings.softmax_form, keep)

    chain.add(layer, "softmax", p + "softmax", masked_softmax, [scores], [p + "probs"])
    chain.add(
        layer,
        "attn_av",
        p + "av",
        lambda pr, v: (pr @ v).transpose(1, 0, 2).reshape(v.shape[1], C),
        [p + "probs", p + "v"],
        [p + "y"],
    )  # (T, C)
    h = p + "h"
    chain.add(
        layer,
        "out_proj",
        p + "out_proj",
        lambda y, w, b, x: x + (y @ w + b),
        [p + "y", p + "attn.c_proj.weight", p + "attn.c_proj.bias", x],
        [h],
    )
    return h


def activation(cfg: ModelConfig, settings: SpuSettings) -> Callable:
    """The FFN activation in JAX: the registered form (`mpc.forms`) `settings.gelu_form` for
    GELU, ReLU's for ReLU."""
    kind, name = ("gelu", settings.gelu_form) if cfg.ffn_act == "gelu" else ("relu", "stock")
    return form(kind, name).jax


def _ffn(chain: _Chain, cfg: ModelConfig, layer: int, h: str, settings: SpuSettings) -> str:
    p = f"h.{layer}."
    if not cfg.has_ffn(layer):
        return h  # pruned: the residual stream passes through
    z = h
    if cfg.norm == "layernorm":
        z = p + "ln_2"
        eps = cfg.layer_norm_eps
        chain.add(
            layer,
            "layernorm",
            z,
            lambda x, w, b: layer_norm(x, w, b, eps),
            [h, p + "ln_2.weight", p + "ln_2.bias"],
            [z],
        )
    u = p + "fc"
    chain.add(
        layer,
        "ffn_linear",
        u,
        lambda z, w, b: z @ w + b,
        [z, p + "mlp.c_fc.weight", p + "mlp.c_fc.bias"],
        [u],
    )
    if cfg.ffn_form == "standard":
        if cfg.ffn_act != "identity":
            act = activation(cfg, settings)
            chain.add(layer, cfg.ffn_act, p + cfg.ffn_act, act, [u], [p + "act"])
            u = p + "act"
        f = p + "fc_out"
        chain.add(
            layer,
            "ffn_linear",
            f,
            lambda u, w, b: u @ w + b,
            [u, p + "mlp.c_proj.weight", p + "mlp.c_proj.bias"],
            [f],
        )
        u = f
    out = p + "out"
    if cfg.ffn_scaled:
        chain.add(
            layer,
            "scaling",
            p + "scaled_residual",
            lambda h, f, beta, g: h * beta + f * g,
            [h, u, p + "ffn_residual.residual_gain", p + "ffn_residual.ffn_gain"],
            [out],
        )
    else:  # the plain residual add is local: charged to the FFN's last linear
        last = chain.stages.pop()
        chain.add(
            layer,
            last.category,
            last.name,
            lambda *a, fn=last.fn: a[-1] + fn(*a[:-1]),
            [*last.inputs, h],
            [out],
        )
    return out


def build_stages(cfg: ModelConfig, seq_len: int, settings: SpuSettings) -> list[Stage]:
    """The whole forward pass for a T-token prompt as a chain of stages."""
    chain = _Chain()
    slices = vocab_slices(
        cfg.vocab_size, vocab_slice_for(settings, seq_len, cfg.n_embd, cfg.vocab_size)
    )
    x = _embedding(chain, slices)
    for layer in range(cfg.n_layer):
        x = _ffn(chain, cfg, layer, _attention(chain, cfg, layer, x, settings), settings)
    if cfg.norm == "layernorm":
        eps = cfg.layer_norm_eps
        chain.add(
            GLOBAL_LAYER,
            "layernorm",
            "ln_f",
            lambda x, w, b: layer_norm(x, w, b, eps),
            [x, "ln_f.weight", "ln_f.bias"],
            ["final"],
        )
        x = "final"
    _lm_head(chain, x, slices)
    return chain.stages


def _embedding(chain: _Chain, slices: list[tuple[int, int]]) -> str:
    """h = one-hot @ wte + wpe, one stage per vocabulary slice, each adding its slice's product
    to the running sum (`mpc.spu.vocab`); one stage named 'embed' when the slice is the whole
    vocabulary."""
    total = "h.in"
    for i, (start, stop) in enumerate(slices):
        last = i == len(slices) - 1
        out, name = (total if last else f"h.in.{i}"), ("embed" if i == 0 else f"embed.{i}")

        def part(onehot, wte, start=start, stop=stop):
            return onehot[:, start:stop] @ wte[start:stop]

        if i == 0:
            fn = lambda onehot, wte, wpe, part=part: part(onehot, wte) + wpe[: onehot.shape[0]]
            inputs = [TOKENS, "wte.weight", "wpe.weight"]
        else:
            fn = lambda onehot, wte, h, part=part: h + part(onehot, wte)
            inputs = [TOKENS, "wte.weight", f"h.in.{i - 1}"]
        chain.add(GLOBAL_LAYER, "embedding", name, fn, inputs, [out])
    return total


def embedding_stages(slices: list[tuple[int, int]]) -> list[Stage]:
    """The embedding alone, in these vocabulary slices (what `mpc.spu.vocab_memory` measures)."""
    chain = _Chain()
    _embedding(chain, slices)
    return chain.stages


def _lm_head(chain: _Chain, x: str, slices: list[tuple[int, int]]) -> None:
    """The last position's logits (1, V): one stage per vocabulary slice, then one that puts
    the slices side by side (local); one stage named 'lm_head' when the slice is the whole
    vocabulary."""
    if len(slices) == 1:
        chain.add(
            GLOBAL_LAYER, "lm_head", "lm_head", lambda x, wte: x[-1:] @ wte.T,
            [x, "wte.weight"], [LOGITS],
        )  # fmt: skip
        return
    parts = [f"logits.{i}" for i in range(len(slices))]
    for i, (start, stop) in enumerate(slices):
        chain.add(
            GLOBAL_LAYER, "lm_head", f"lm_head.{i}",
            lambda x, wte, start=start, stop=stop: x[-1:] @ wte[start:stop].T,
            [x, "wte.weight"], [parts[i]],
        )  # fmt: skip
    chain.add(
        GLOBAL_LAYER, "lm_head", "lm_head.join", lambda *p: jnp.concatenate(p, axis=-1),
        parts, [LOGITS],
    )  # fmt: skip


def one_hot(tokens: list[int], vocab_size: int) -> np.ndarray:
    rows = np.zeros((len(tokens), vocab_size), dtype=np.float32)
    rows[np.arange(len(tokens)), tokens] = 1.0
    return rows


def run_plain(stages: list[Stage], env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate the chain in plaintext JAX; returns every variable."""
    env = dict(env)
    for stage in stages:
        out = stage.fn(*(env[name] for name in stage.inputs))
        out = out if isinstance(out, tuple) else (out,)
        env.update(zip(stage.outputs, (np.asarray(o) for o in out), strict=True))
    return env


def plain_logits(
    cfg: ModelConfig, weights: dict[str, np.ndarray], tokens: list[int], settings: SpuSettings
) -> np.ndarray:
    """The last position's logits (V,) of the JAX forward in plaintext."""
    stages = build_stages(cfg, len(tokens), settings)
    env = run_plain(stages, {**weights, TOKENS: one_hot(tokens, cfg.vocab_size)})
    return env[LOGITS][0]


def input_names(stages: list[Stage]) -> list[str]:
    """Variables no stage produces: the weights and the prompt, in first-use order."""
    produced, needed = set(), []
    for stage in stages:
        needed += [n for n in stage.inputs if n not in produced and n not in needed]
        produced.update(stage.outputs)
    return needed
