"""The reproduction's tables as frames: Table 4's layout per trained model, the paper's shapes
with the paper's costs beside them, the head distribution beside the paper's, and the findings.

Every number in the markdown is a formatted cell of a CSV row written next to it (tests check
this): `table4.csv` (one row per variant and protocol profile), `paper_shapes.csv`,
`head_distribution.csv` and `findings.csv` (each claim of the paper: our number, the paper's,
a verdict). The paper's numbers come from bench/reproduction/paper.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from bench.report import BASELINE, summary_table
from bench.reproduction.findings import findings
from bench.reproduction.markdown import findings_markdown, shapes_markdown, table4_markdown
from bench.reproduction.paper import (
    ATTENTION_T2D,
    ATTENTION_TD2,
    PAPER_COST,
    PAPER_HEADS,
    PAPER_PPL,
    TABLE4_SHAPE,
)
from models.config import resolve_config


@dataclass
class Tables:
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    markdown: dict[str, str] = field(default_factory=dict)


def op_counts(arch: str, preset: str, length: int) -> dict:
    """Nonlinear operations and FLOPs of one forward over `length` tokens (the paper's formulas:
    FFN 16 T d^2 per layer, fused 2 T d^2, attention 8 T d^2 + 3 T^2 d). LayerNorms include
    the final one (the paper's Table 4 counts 2 per layer)."""
    cfg = resolve_config(arch, preset)
    d, layers = cfg.n_embd, cfg.n_layer
    ffn_layers = sum(cfg.has_ffn(layer) for layer in range(layers))
    per_ffn = 2 * length * d * d if cfg.ffn_form == "fused" else 4 * length * d * cfg.ffn_hidden
    has_act = cfg.ffn_act in ("gelu", "relu")
    norm = cfg.norm == "layernorm"
    attention = ATTENTION_TD2 * length * d * d + ATTENTION_T2D * length**2 * d  # one layer's
    return {
        "softmax_ops": layers * cfg.n_head,
        "layernorm_ops": (layers + ffn_layers + 1) if norm else 0,
        "activation": cfg.ffn_act if has_act else "-",
        "activation_ops": ffn_layers if has_act else 0,
        "ffn_mflops": ffn_layers * per_ffn / 1e6,
        "attn_mflops": layers * attention / 1e6,
    }


def table4(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (variant, protocol): PPL, op counts, FLOPs, measured MPC cost and accuracy."""
    training, mpc = frames["training"], frames["mpc_results"]
    if training.empty:
        return pd.DataFrame()
    cost = summary_table(mpc) if not mpc.empty else pd.DataFrame(columns=["arch", "protocol"])
    rows = []
    protocols = sorted(set(cost.protocol), key=["stock", "optimized"].index) or ["-"]
    # one T for every row's op counts: the measured prompt length (else the training window)
    length = int(cost.seq_len.max()) if len(cost) else int(training.seq_len.max())
    for record in training.itertuples():
        for protocol in protocols:
            measured = cost[(cost.arch == record.arch) & (cost.protocol == protocol)]
            row = {"arch": record.arch, "protocol": protocol, "status": record.status}
            row |= {"eval_ppl": record.eval_ppl, "diverged_at_step": record.diverged_at_step}
            row |= {"paper_ppl": PAPER_PPL.get(record.arch, math.nan), "cost_seq_len": length}
            row |= op_counts(record.arch, record.preset, length)
            row |= _accuracy(frames["accuracy"], record.arch, protocol)
            row |= _cost(measured)
            paper = PAPER_COST[TABLE4_SHAPE].get(record.arch, (math.nan,) * 3)
            row |= {"paper_comm_gb": paper[1], "paper_latency_min": paper[2]}
            rows.append(row)
    table = pd.DataFrame(rows)
    base = PAPER_COST[TABLE4_SHAPE][BASELINE]
    table["paper_comm_saving_x"] = base[1] / table.paper_comm_gb
    table["paper_latency_saving_x"] = base[2] / table.paper_latency_min
    return table


def _accuracy(accuracy: pd.DataFrame, arch: str, protocol: str) -> dict:
    names = ["ppl_mpc", "ppl_plaintext_windows", "top1_agreement", "mpc_max_abs_logit_error"]
    if accuracy.empty:
        return dict.fromkeys(names, math.nan)
    hit = accuracy[(accuracy.arch == arch) & (accuracy.protocol == protocol)]
    if hit.empty:
        return dict.fromkeys(names, math.nan)
    first = hit.iloc[0]
    values = [first.ppl_mpc, first.ppl_plaintext, first.top1_agreement, first.max_abs_logit_error]
    return dict(zip(names, values, strict=True))


def _cost(measured: pd.DataFrame) -> dict:
    columns = {
        "comm_gb": "comm_gb", "dealer_gb": "dealer_gb", "rounds": "rounds",
        "measured_s": "wall_s", "projected_wan_min": "projected_wan_min",
        "comm_saving_x": "comm_saving_x", "wan_saving_x": "wan_saving_x",
        "cost_model_max_error": "max_prediction_error",
    }  # fmt: skip
    if measured.empty:
        return dict.fromkeys(columns, math.nan)
    first = measured.iloc[0]
    return {name: first[source] for name, source in columns.items()}


def shapes_with_paper(shapes: pd.DataFrame) -> pd.DataFrame:
    """The paper-shape costs with the paper's PPL, GB and minutes, and savings on both sides."""
    if shapes.empty:
        return shapes
    shapes = shapes.copy()
    pairs = zip(shapes["shape"], shapes.arch, strict=True)
    paper = pd.DataFrame([PAPER_COST[s].get(a, (math.nan,) * 3) for s, a in pairs])
    for index, column in enumerate(("paper_ppl", "paper_comm_gb", "paper_latency_min")):
        shapes[column] = paper[index].to_numpy()
    key = ["shape", "protocol", "source"]
    base = shapes[shapes.arch == BASELINE].set_index(key)
    for column, saving in (("comm_gb", "comm_saving_x"), ("comm_only_wan_min", "wan_saving_x")):
        shapes[saving] = shapes.join(base[column], on=key, rsuffix="_base")[f"{column}_base"]
        shapes[saving] /= shapes[column]
    for column, saving in (("paper_comm_gb", "paper_comm_saving_x"),
                           ("paper_latency_min", "paper_latency_saving_x")):  # fmt: skip
        paper_base = shapes["shape"].map({s: v[BASELINE] for s, v in PAPER_COST.items()})
        index = 1 if column == "paper_comm_gb" else 2
        shapes[saving] = paper_base.map(lambda v, i=index: v[i]) / shapes[column]
    return shapes


def head_distribution_table(entropy: pd.DataFrame) -> pd.DataFrame:
    """The four-bin head distribution of every variant (entropy_distribution.csv rows, binned by
    `models.entropy.head_distribution` in `models.analyze`) beside the paper's fractions."""
    if entropy.empty:
        return pd.DataFrame()
    table = entropy[["arch", "bin", "fraction_of_heads", "largest_entropy_nats"]].copy()
    position = table.groupby("arch").cumcount()
    table["paper_fraction_of_heads"] = [
        PAPER_HEADS[a][i] / 100 if a in PAPER_HEADS else math.nan
        for a, i in zip(table.arch, position, strict=True)
    ]
    return table


def assemble(frames: dict[str, pd.DataFrame], shapes: pd.DataFrame, name: str) -> Tables:
    """Every table of the run (frames and their markdown) from the stages' frames."""
    tables = Tables()
    tables.frames["table4"] = table4(frames)
    tables.frames["paper_shapes"] = shapes_with_paper(shapes)
    tables.frames["head_distribution"] = head_distribution_table(frames["entropy_distribution"])
    tables.frames["findings"] = findings(frames, tables.frames)
    tables.markdown["table4"] = table4_markdown(tables.frames["table4"], name)
    tables.markdown["paper_shapes"] = shapes_markdown(tables.frames["paper_shapes"])
    tables.markdown["findings"] = findings_markdown(tables.frames["findings"])
    return tables
