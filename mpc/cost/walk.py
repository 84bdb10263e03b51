"""Analytic per-(layer, category) costs of one secure query, from shapes and settings alone.

`predict_costs` walks the forward pass of `models.gpt.GPT` as `mpc.session.party.run_queries`
runs it (share the one-hot prompt, forward with `last_only` unless all positions are revealed,
reveal the logits to the client) and charges each module's cost to the category `mpc.measure`
records it under, with the same EXCLUSIVE accounting: e.g. "scaling" holds only the multiplies of
`ScaledResidual` / `AttentionTemperature`, never the FFN they wrap. The result equals what
`CostRecorder` measures, byte for byte and round for round (tests/test_costmodel.py runs real
sessions and compares every row).

Primitive costs come from `mpc.cost.primitives.CrypTenCosts` (CrypTen 0.4.1 as installed, with
the protocol knobs of the ApproxConfig); each nonlinearity costs what its form in `mpc.forms` says,
beside its implementation. The linear parts below mirror `models.gpt` (the session tests fail
when they drift). Shapes: B = 1, T tokens, C width, H heads, hs = C / H.
"""

from __future__ import annotations

from collections import defaultdict

from models.config import ModelConfig
from mpc.approx import ApproxConfig
from mpc.cost.primitives import CrypTenCosts
from mpc.cost.types import ZERO, Cost, Shape
from mpc.forms import form
from mpc.measure import CATEGORIES, GLOBAL_LAYER

Costs = dict[tuple[int, str], tuple[float, float]]


def layer_norm(p: CrypTenCosts, shape: Shape) -> Cost:
    return form("layernorm", p.approx.layernorm_form).cost(p, shape)


def gelu(p: CrypTenCosts, shape: Shape) -> Cost:
    return form("gelu", p.approx.gelu_form).cost(p, shape)


def softmax(p: CrypTenCosts, shape: Shape) -> Cost:
    return form("softmax", p.approx.softmax_form).cost(p, shape)


def _attention(p: CrypTenCosts, cfg: ModelConfig, T: int, charge) -> None:
    C, H, hs = cfg.n_embd, cfg.n_head, cfg.head_size
    scores = (1, H, T, T)
    charge("qkv_proj", p.weight_matmul((1, T, C), (C, 3 * C)))
    charge("attn_qk", p.matmul((1, H, T, hs), (1, H, hs, T)))  # 1 / sqrt(hs), mask: public
    if cfg.attn_temperature:  # logits * inv_temperature[:, :T].unsqueeze(-1)
        charge("scaling", p.mul(scores, (H, T, 1)))
    charge("softmax", softmax(p, scores))
    charge("attn_av", p.matmul(scores, (1, H, T, hs)))
    charge("out_proj", p.weight_matmul((1, T, C), (C, C)))


def _feed_forward(p: CrypTenCosts, cfg: ModelConfig, T: int, charge) -> None:
    C, hidden = cfg.n_embd, cfg.ffn_hidden
    if cfg.ffn_form == "fused":
        charge("ffn_linear", p.weight_matmul((1, T, C), (C, C)))
    else:
        charge("ffn_linear", p.weight_matmul((1, T, C), (C, hidden)))
        if cfg.ffn_act == "gelu":
            charge("gelu", gelu(p, (1, T, hidden)))
        elif cfg.ffn_act == "relu":
            charge("relu", form("relu", "stock").cost(p, (1, T, hidden)))
        charge("ffn_linear", p.weight_matmul((1, T, hidden), (hidden, C)))
    if cfg.ffn_scaled:  # beta * h + (1 / alpha) * FFN(h): two (1, T, C) x (1,) multiplies
        folded = p.approx.fold_gains  # 1 / alpha is in the FFN's last linear: one multiply
        charge("scaling", (1 if folded else 2) * p.mul((1, T, C), (1,)))


def predict_costs(
    cfg: ModelConfig,
    approx: ApproxConfig,
    prompt_length: int,
    dealer: str,
    party: str,
    all_positions: bool = False,
) -> Costs:
    """(layer, category) -> (bytes, rounds) one party ("server" = rank 0, "client" = rank 1)
    logs for one query step of `prompt_length` tokens, under dealer "tfp" or "ttp". Keys are
    exactly the rows `CostRecorder` writes (zero-cost ones included: input_share, other)."""
    if not 1 <= prompt_length <= cfg.block_size:
        raise ValueError(f"prompt_length={prompt_length} not in [1, {cfg.block_size}]")
    p = CrypTenCosts(approx, dealer, party)
    T, C, V = prompt_length, cfg.n_embd, cfg.vocab_size
    totals: dict[tuple[int, str], Cost] = defaultdict(Cost)
    norm = cfg.norm == "layernorm"

    def charger(layer: int):
        def charge(category: str, cost: Cost) -> None:
            assert category in CATEGORIES, category
            totals[(layer, category)] += cost

        return charge

    charge = charger(GLOBAL_LAYER)
    charge("other", ZERO)  # every protocol call sits inside a category
    charge("input_share", ZERO)  # src=client sharing: a pseudo-random zero sharing, no traffic
    charge("embedding", p.weight_matmul((1, T, V), (V, C)))  # one-hot rows @ wte; + wpe free
    for layer in range(cfg.n_layer):
        charge = charger(layer)
        if norm:
            charge("layernorm", layer_norm(p, (1, T, C)))
        _attention(p, cfg, T, charge)
        if cfg.has_ffn(layer):
            if norm:
                charge("layernorm", layer_norm(p, (1, T, C)))
            _feed_forward(p, cfg, T, charge)
    charge = charger(GLOBAL_LAYER)
    if norm:
        charge("layernorm", layer_norm(p, (1, T, C)))  # ln_f runs on every position
    revealed = T if all_positions else 1
    charge("lm_head", p.weight_matmul((1, revealed, C), (C, V)))  # tied head: x @ wte^T
    charge("reveal", p.reveal_to_one((1, revealed, V)))
    return {key: (cost.bytes, cost.rounds) for key, cost in totals.items()}
