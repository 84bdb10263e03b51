"""Analytic per-(layer, category) costs of one secure query, from shapes and settings alone.

`predict_costs` walks the forward pass of `models.gpt.GPT` as `mpc.party.run_queries` runs it
(share the one-hot prompt, forward with `last_only` unless all positions are revealed, reveal the
logits to the client) and charges each module's protocol cost to the category `mpc.measure`
records it under, with the same EXCLUSIVE accounting: e.g. "scaling" holds only the multiplies of
`ScaledResidual` / `AttentionTemperature`, never the FFN they wrap. The result equals what
`CostRecorder` measures, byte for byte and round for round (tests/test_costmodel.py runs real
sessions and compares every row).

Costs come from a protocol profile (`mpc.cost_profiles`): "crypten" is CrypTen 0.4.1 as installed.
The compositions below mirror `mpc.ops.CryptenOps` line by line: when that file changes, this one
must too (the session tests fail otherwise). Shapes: B = 1, T tokens, C width, H heads, hs = C / H.
"""

from __future__ import annotations

from collections import defaultdict

from models.config import ModelConfig
from mpc.approx import ApproxConfig
from mpc.cost_profiles import PROFILES, ZERO, Cost, CrypTenProfile, Shape
from mpc.measure import CATEGORIES, GLOBAL_LAYER
from mpc.ops import GELU_DEGREE

Costs = dict[tuple[int, str], tuple[float, float]]


def layer_norm(p: CrypTenProfile, shape: Shape) -> Cost:
    """`CryptenOps.layer_norm` on (..., C): centering and the public variance scale are free;
    the square of the centered rows (|x|), the mean (free), inv_sqrt on the (..., 1) variances,
    centered * inv_std (|x| + |rows| opened), * weight (|x| + C opened); + bias is free.
    C = 768, T = 16, 3 iterations: 49.5 B/elem, 20 rounds."""
    rows = (*shape[:-1], 1)
    approx = p.approx
    return (
        p.square(shape)
        + p.inv_sqrt(rows, approx.sqrt_iterations, approx.exp_iterations)
        + p.mul(shape, rows)
        + p.mul(shape, shape[-1:])
    )


def gelu(p: CrypTenProfile, shape: Shape) -> Cost:
    """`CryptenOps.gelu` in the configured form.
    "poly": |x| = x sign(x) (ltz + mul); relu(x) = (x + |x|) / 2 free; clip = |x| - (|x| - 4)
        (|x| >= 4) (ltz + mul); v affine (free); p(v) of degree GELU_DEGREE (public constant
        free): 1072 B/elem, 21 rounds at degree 8.
    "tanh": x^2 (square), x (a x^2 + b) (mul), sigmoid, x * sigmoid (mul): 832 B/elem, 26 rounds.
    "erf": erf(x / sqrt 2) (public scale free), x * (erf / 2 + 1 / 2) (mul): 784 B/elem,
        35 rounds."""
    form = p.approx.gelu_form
    if form == "poly":
        clip = p.ltz(shape) + p.mul(shape, shape)
        return p.abs(shape) + clip + p.polynomial(shape, GELU_DEGREE)
    if form == "tanh":
        return p.square(shape) + 2 * p.mul(shape, shape) + p.sigmoid(shape)
    return p.erf(shape, p.approx.erf_iterations) + p.mul(shape, shape)


def softmax(p: CrypTenProfile, shape: Shape) -> Cost:
    """`CryptenOps.softmax` along the last dim of `shape`, in the configured form.
    "stock" (CrypTen's): a row of one entry is the constant 1 (free); else the row max
        (`max_log_reduction`), exp(x - max), the reciprocal of the row sums (all positive) and
        the product e * (1 / sum) ((..., n) times (..., 1)). Row 128: 1488 B/elem, 116 rounds.
    "tree": the same with `tree_max` for the row max (620 B/elem, 100 rounds at row 128).
    "max_free": z + z^2 / 2^(n+1) (a square), exp, the row sums times a public constant, their
        reciprocal (all positive), e * (1 / sum) (mul); public rescale free. Row 128: 165 B/elem,
        38 rounds."""
    approx = p.approx
    rows = (*shape[:-1], 1)
    exp_iterations = approx.exp_iterations
    denominator = p.exp(shape, exp_iterations) + p.reciprocal(
        rows, approx.reciprocal_method, approx.reciprocal_iterations, exp_iterations
    )
    normalize = p.mul(shape, rows)
    if approx.softmax_form == "max_free":
        return p.square(shape) + denominator + normalize
    if shape[-1] == 1:
        return ZERO
    row_max = p.tree_max(shape) if approx.softmax_form == "tree" else p.max_log_reduction(shape)
    return row_max + denominator + normalize


def _attention(p: CrypTenProfile, cfg: ModelConfig, T: int, charge) -> None:
    C, H, hs = cfg.n_embd, cfg.n_head, cfg.head_size
    scores = (1, H, T, T)
    charge("qkv_proj", p.weight_matmul((1, T, C), (C, 3 * C)))
    charge("attn_qk", p.matmul((1, H, T, hs), (1, H, hs, T)))  # 1 / sqrt(hs), mask: public
    if cfg.attn_temperature:  # logits * inv_temperature[:, :T].unsqueeze(-1)
        charge("scaling", p.mul(scores, (H, T, 1)))
    charge("softmax", softmax(p, scores))
    charge("attn_av", p.matmul(scores, (1, H, T, hs)))
    charge("out_proj", p.weight_matmul((1, T, C), (C, C)))


def _feed_forward(p: CrypTenProfile, cfg: ModelConfig, T: int, charge) -> None:
    C, hidden = cfg.n_embd, cfg.ffn_hidden
    if cfg.ffn_form == "fused":
        charge("ffn_linear", p.weight_matmul((1, T, C), (C, C)))
    else:
        charge("ffn_linear", p.weight_matmul((1, T, C), (C, hidden)))
        if cfg.ffn_act == "gelu":
            charge("gelu", gelu(p, (1, T, hidden)))
        elif cfg.ffn_act == "relu":
            charge("relu", p.relu((1, T, hidden)))
        charge("ffn_linear", p.weight_matmul((1, T, hidden), (hidden, C)))
    if cfg.ffn_scaled:  # beta * h + (1 / alpha) * FFN(h): two (1, T, C) x (1,) multiplies
        charge("scaling", 2 * p.mul((1, T, C), (1,)))


def predict_costs(
    cfg: ModelConfig,
    approx: ApproxConfig,
    prompt_length: int,
    dealer: str,
    party: str,
    all_positions: bool = False,
    profile: str = "crypten",
) -> Costs:
    """(layer, category) -> (bytes, rounds) one party ("server" = rank 0, "client" = rank 1)
    logs for one query step of `prompt_length` tokens, under dealer "tfp" or "ttp". Keys are
    exactly the rows `CostRecorder` writes (zero-cost ones included: input_share, other)."""
    if not 1 <= prompt_length <= cfg.block_size:
        raise ValueError(f"prompt_length={prompt_length} not in [1, {cfg.block_size}]")
    p = PROFILES[profile](approx, dealer, party)
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
