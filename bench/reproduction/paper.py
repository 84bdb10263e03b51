"""The paper's reference numbers: Jha & Reagen, "AERO: Entropy-Guided Framework for Private LLM
Inference" (arXiv 2410.13060; v2 titled "AERO: Softmax-Only LLMs for Efficient Private Inference").

Every paper number the reproduction computes with (compares against, or sizes a run by) lives
here and nowhere else.
Setting of all of them: GPT-2 (width 768, 12 heads) trained from scratch on CodeParrot for
2.1 B tokens; perplexity on CodeParrot's validation split; private-inference cost on SecretFlow's
two-party protocols over a WAN of 100 Mbit/s and 80 ms, for one output token from a T-token prompt.
Table and figure numbers are the paper's, as the README cites them: Table 4 (PPL, nonlinear
operations, FLOPs, communication and latency per architecture), Figure 3 (per-head entropy
heatmaps) and Figure 4 (the four-bin head-entropy distribution).
"""

from __future__ import annotations

import math

from models.config import ALIASES

AERO = ALIASES["aero"]  # the paper's final architecture: EReg(SM(t)+ScFuFFN)

# ---------------------------------------------------------------- training (the paper's setup)

# GPT-2 12L at T = 128: 512 sequences a step for about 32,000 steps, 2.1 B tokens per model
# (the paper's training setup; the `paper` budget of bench/reproduction/budgets.py).
PAPER_BATCH_SIZE = 512
PAPER_STEPS = 32_000
PAPER_TOKENS = 2.1e9

# ---------------------------------------------------------------- perplexity

# Validation PPL, GPT-2 12L, T = 128. The first six: the nonlinearity ablation (three decimals;
# SM diverges: NaN); SM+ScFFN to EReg(SM(t)+ScFuFFN): Table 4's PPL column; SM+WNormFFN and
# SM+SNormFFN: the static FFN normalizations the paper compares with FFN scaling.
PAPER_PPL = {
    "SM+LN+G": 2.688, "SM+LN+R": 2.757, "SM+LN": 3.38, "SM+G": 3.197, "SM+R": 2.936,
    "SM": math.nan, "SM+ScFFN": 3.50, "SM+ScFuFFN": 3.48, "SM+ScFuFFN+Prune": 3.54,
    AERO: 3.21, "SM+WNormFFN": 3.64, "SM+SNormFFN": 3.63,
}  # fmt: skip
# The nonlinearity ablation, in the paper's order: LayerNorm and the FFN activation removed.
ABLATION = ("SM+LN+G", "SM+LN+R", "SM+LN", "SM+G", "SM+R", "SM")
# Entropy regularization improves softmax-only PPL by 6-8 % (the paper's headline result for
# EReg(SM(t)+ScFuFFN) against SM(t)+ScFuFFN): the relative change the findings compare with,
# and its wording.
PAPER_EREG_PPL_CHANGE = -0.07
PAPER_EREG_PPL_GAIN = "6-8 % better"

# ---------------------------------------------------------------- private-inference cost

# shape -> arch -> (PPL, communication GB, latency minutes). "12L T=128": Table 4, whose rows are
# these six architectures; "12L T=256" (longer context) and "18L T=128" (deeper model): the
# paper's scaling results in Table 4's columns, for the architectures it reports there.
PAPER_COST = {
    "12L T=128": {
        "SM+LN+G": (2.69, 25.32, 8.21), "SM+LN+R": (2.76, 9.44, 6.06),
        "SM+ScFFN": (3.50, 6.95, 5.68), "SM+ScFuFFN": (3.48, 6.43, 4.76),
        "SM+ScFuFFN+Prune": (3.54, 6.29, 4.23), AERO: (3.21, 6.43, 4.76),
    },
    "12L T=256": {
        "SM+LN+G": (2.35, 58.51, 16.57), "SM+LN+R": (2.41, 26.73, 12.59),
        AERO: (2.92, 20.72, 10.45),
    },
    "18L T=128": {"SM+LN+G": (2.56, 37.17, 10.77), AERO: (3.13, 8.83, 6.07)},
}  # fmt: skip
TABLE4_SHAPE = "12L T=128"  # the shape of Table 4
TABLE4_VARIANTS = tuple(PAPER_COST[TABLE4_SHAPE])  # Table 4's rows, in its order
# The shapes of PAPER_COST: name -> (layers, T, k), k the deepest FFNs pruned in
# SM+ScFuFFN+Prune (the paper's k: 6 of 12 layers, 4 of 18).
PAPER_SHAPES = {
    "12L T=128": (12, 128, 6),
    "12L T=256": (12, 256, 6),
    "18L T=128": (18, 128, 4),
}
# Attention FLOPs per layer for one forward over T tokens, the paper's formula behind Table 4's
# FLOPs columns: 8 T d^2 + 3 T^2 d. The FFN's, 16 T d^2 (fused: 2 T d^2), are plain matmul counts.
ATTENTION_TD2 = 8
ATTENTION_T2D = 3

# ---------------------------------------------------------------- attention entropy

# % of heads in the four entropy bins [0, m/4), [m/4, m/2), [m/2, 3m/4), [3m/4, m], m the model's
# largest head entropy (Figure 4, GPT-2 12L, T = 128). SM+G's top bin is entropic overload,
# SM's lowest entropy collapse.
PAPER_HEADS = {
    "SM+LN+G": (4, 14, 74, 8), "SM+LN+R": (6, 16, 74, 3), "SM+G": (1, 18, 23, 58),
    "SM+R": (3, 20, 53, 24), "SM": (33, 10, 12, 45),
}  # fmt: skip
# Entropy collapse of SM: the head entropies of its deep layers (9-11) in nats, as the paper
# reports them with its per-head entropy heatmaps (Figure 3).
PAPER_SM_DEEP_ENTROPY_NATS = (0.03, 0.2)
