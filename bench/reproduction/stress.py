"""The stress budget's claims, each judged from every seed: entropy collapse and divergence of
the softmax-only model, what prevents them, and what the regularizer and the temperature do to
perplexity. One findings row per claim with the mean and spread over seeds and a verdict.

Each run is judged over its whole training history (every evaluation records the (layer, head)
attention entropies as fractions of log T, and the eval loss): a collapse that the model later
climbs out of is still a collapse.
  * collapsed layer: its heads' mean entropy below `COLLAPSED` (every head attends to about one
    key; single sharp heads, as trained LayerNorm models have, do not make a layer collapsed);
  * collapsed run: at some evaluation at least `COLLAPSED_SHARE` of the deeper half's layers
    collapsed;
  * blown-up run: at some evaluation the loss exceeded log V, worse than guessing uniformly;
  * failed run: diverged (a non-finite loss ended it), blown up or collapsed; failed at the
    end: diverged, or its last evaluation blown up or collapsed (it did not recover).
"""

from __future__ import annotations

import math
import statistics

import pandas as pd
import torch

from bench.reproduction.paper import AERO, PAPER_EREG_PPL_CHANGE
from models.entropy import head_distribution

# The paper's collapsed deep layers sit at 0.03-0.2 nats: 0.006-0.04 of log 128.
COLLAPSED = 0.05
COLLAPSED_SHARE = 0.25
SM, SCALED, FUSED, TEMPERATURE = "SM", "SM+ScFFN", "SM+ScFuFFN", "SM(t)+ScFuFFN"
BASELINE = "SM+LN+G"
FIXES = {  # the paper's remedies for collapse, each against the plain softmax-only model
    "scaled_ffn": (SCALED, "the scaled FFN"),
    "scaled_fused_ffn": (FUSED, "the scaled fused FFN"),
    "weight_norm": ("SM+WNormFFN", "weight normalization of the FFN"),
    "spectral_norm": ("SM+SNormFFN", "spectral normalization of the FFN"),
}
STRESS_VARIANTS = (SM, SCALED, FUSED, "SM+WNormFFN", "SM+SNormFFN", TEMPERATURE, AERO, BASELINE)


def collapse_measures(heads: list[list[float]]) -> dict[str, float]:
    """Collapse measures of one evaluation's (L, H) head entropies (fractions of log T)."""
    table = torch.tensor(heads)
    layers = table.mean(dim=1)
    deep = layers[table.size(0) // 2 :]
    bins = head_distribution(table) if float(table.max()) > 0 else torch.tensor([1.0, 0, 0, 0])
    return {
        "lowest_bin_heads": float(bins[0]),  # the paper's [0, m/4), m the largest head entropy
        "collapsed_heads": float((table < COLLAPSED).float().mean()),
        "collapsed_layers_deep_half": float((deep < COLLAPSED).float().mean()),
        "min_layer_entropy": float(layers.min()),
        **{f"bin_{i}": float(b) for i, b in enumerate(bins)},
    }


def run_outcome(arch: str, seed: int, meta: dict, vocab_size: int) -> dict:
    """One (variant, seed) row: status, final PPL, the collapse measures of the last evaluation
    (a diverged run: its last before the non-finite loss) and the worst over all of them."""
    history = [p for p in meta.get("history", []) if "entropy_fraction_by_head" in p]
    diverged = meta["status"] == "diverged"
    row = {"arch": arch, "seed": seed, "status": meta["status"], "diverged": diverged}
    row |= {"diverged_at_step": meta.get("diverged_at_step", math.nan)}
    row |= {"eval_ppl": math.nan if diverged else meta.get("eval_ppl", math.nan)}
    if not history:
        return row | {"blew_up": False, "collapsed": False, "failed": diverged,
                      "failed_at_end": diverged}  # fmt: skip
    row |= {"last_eval_step": history[-1]["step"]}
    row |= collapse_measures(history[-1]["entropy_fraction_by_head"])
    peak = max(collapse_measures(p["entropy_fraction_by_head"])["collapsed_layers_deep_half"]
               for p in history)  # fmt: skip
    losses = [p["eval_loss"] for p in history]
    worst = max(losses) if all(math.isfinite(v) for v in losses) else math.inf
    row |= {"peak_collapsed_layers_deep_half": peak, "peak_eval_loss": worst}
    row |= {"blew_up": worst > math.log(vocab_size), "collapsed": peak >= COLLAPSED_SHARE}
    ended_badly = history[-1]["eval_loss"] > math.log(vocab_size) or not math.isfinite(
        history[-1]["eval_loss"]
    )
    ended_collapsed = row["collapsed_layers_deep_half"] >= COLLAPSED_SHARE
    row |= {"failed": diverged or row["blew_up"] or row["collapsed"]}
    return row | {"failed_at_end": diverged or ended_badly or ended_collapsed}


def _spread(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.mean(finite):.3g} ± {spread:.2g}"


def _finding(key, claim, ours, verdict, mean, spread, seeds, source) -> dict:
    return dict(
        key=key, claim=claim, ours=ours, verdict=verdict, mean_value=mean,
        spread_value=spread, n_seeds=seeds, source=source,
    )  # fmt: skip


def _of(outcomes: pd.DataFrame, arch: str) -> pd.DataFrame:
    return outcomes[outcomes.arch == arch].sort_values("seed")


def _failures(part: pd.DataFrame) -> str:
    return (
        f"{int(part.failed.sum())} of {len(part)} seeds failed ({int(part.diverged.sum())} "
        f"diverged, {int(part.blew_up.sum())} blew up, {int(part.collapsed.sum())} collapsed; "
        f"{int(part.failed_at_end.sum())} still failed at the end); "
        f"peak deep-half collapsed layers {_spread(list(part.peak_collapsed_layers_deep_half))}, "
        f"final lowest layer entropy {_spread(list(part.min_layer_entropy))} log T"
    )


def collapse_findings(outcomes: pd.DataFrame) -> list[dict]:
    """Does the regime show collapse (SM fails, the baseline trains), and does each fix stop it?"""
    rows = []
    sm, base = _of(outcomes, SM), _of(outcomes, BASELINE)
    if len(sm):
        shown = sm.failed.mean() >= 2 / 3 and (not len(base) or not base.failed.any())
        verdict = "collapse shown" if shown else "no reliable collapse in this regime"
        rows.append(
            _finding("sm_collapses", "softmax-only SM collapses or diverges; the baseline trains",
                     f"SM: {_failures(sm)}" + (f"; {BASELINE}: {_failures(base)}" if len(base)
                                                else ""),
                     verdict, float(sm.failed.mean()),
                     float(sm.peak_collapsed_layers_deep_half.std()), len(sm), "collapse.csv")
        )  # fmt: skip
    for key, (arch, what) in FIXES.items():
        fix = _of(outcomes, arch)
        if not len(fix) or not len(sm):
            continue
        if not sm.failed.any():
            verdict = "untestable: SM does not fail here"
        elif not fix.failed.any():
            verdict = f"prevents ({int(sm.failed.sum())} of {len(sm)} SM seeds failed, none here)"
        elif fix.failed.mean() < sm.failed.mean():
            verdict = "reduces, does not prevent"
        elif fix.failed_at_end.mean() < sm.failed_at_end.mean():
            verdict = (
                f"does not prevent, recovers: {int(fix.failed_at_end.sum())} of {len(fix)} seeds "
                f"end failed (SM: {int(sm.failed_at_end.sum())} of {len(sm)})"
            )
        else:
            verdict = "does not prevent"
        rows.append(
            _finding(f"{key}_prevents_collapse", f"{what} prevents entropy collapse/divergence",
                     f"{arch}: {_failures(fix)}; SM: {_failures(sm)}", verdict,
                     float(fix.failed.mean()), float(fix.peak_collapsed_layers_deep_half.std()),
                     len(fix), "collapse.csv")
        )  # fmt: skip
    return rows


def paired_change(outcomes: pd.DataFrame, arch: str, reference: str) -> list[float]:
    """Per seed, PPL of `arch` / PPL of `reference` - 1 (seeds where both are finite)."""
    mine = _of(outcomes, arch).set_index("seed").eval_ppl
    theirs = _of(outcomes, reference).set_index("seed").eval_ppl
    seeds = [s for s in mine.index if s in theirs.index]
    changes = [mine[s] / theirs[s] - 1 for s in seeds]
    return [c for c in changes if math.isfinite(c)]


def noise_verdict(changes: list[float]) -> str:
    """'better'/'worse' when every seed agrees and the mean change exceeds twice its standard
    error (the seed-to-seed noise of the paired change); 'within noise' otherwise."""
    if len(changes) < 2:
        return "too few finite seeds"
    mean, spread = statistics.mean(changes), statistics.stdev(changes)
    agree = all(c < 0 for c in changes) or all(c > 0 for c in changes)
    if agree and abs(mean) > 2 * spread / math.sqrt(len(changes)):
        return f"{'better' if mean < 0 else 'worse'} beyond seed noise"
    return "within seed noise"


def ppl_findings(outcomes: pd.DataFrame) -> list[dict]:
    rows = []
    for key, arch, reference, claim, paper in (
        ("ereg_improves_ppl", AERO, TEMPERATURE, "entropy regularization improves PPL",
         f" (paper: {PAPER_EREG_PPL_CHANGE:+.0%})"),
        ("temperature_matters", TEMPERATURE, FUSED, "the learnable temperature changes PPL", ""),
    ):  # fmt: skip
        changes = paired_change(outcomes, arch, reference)
        if not changes:
            continue
        both = f"{arch} {_spread(list(_of(outcomes, arch).eval_ppl))}, {reference} "
        both += f"{_spread(list(_of(outcomes, reference).eval_ppl))}"
        text = f"PPL change {_spread([100 * c for c in changes])} % per seed{paper}; {both}"
        spread = statistics.stdev(changes) if len(changes) > 1 else math.nan
        rows.append(
            _finding(key, claim, text, noise_verdict(changes), statistics.mean(changes), spread,
                     len(changes), "collapse.csv eval_ppl (paired by seed)")
        )  # fmt: skip
    return rows


def stress_findings(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Every claim's row; a verdict from fewer than 3 seeds (a smoke run) is marked so."""
    findings = pd.DataFrame(collapse_findings(outcomes) + ppl_findings(outcomes))
    if not findings.empty:
        few = findings.n_seeds < 3
        findings.loc[few, "verdict"] += " (fewer than 3 seeds: provisional)"
    return findings


def findings_markdown(findings: pd.DataFrame, outcomes: pd.DataFrame) -> str:
    lines = ["# Stress budget: findings over seeds (mean ± standard deviation)", ""]
    lines += ["| key | claim | ours | verdict | seeds |", "|---|---|---|---|---:|"]
    for row in findings.itertuples():
        lines.append(f"| {row.key} | {row.claim} | {row.ours} | {row.verdict} | {row.n_seeds} |")
    lines += ["", "## Per variant", ""]
    lines += [
        "| arch | failed | diverged | blew up | collapsed | failed at end | final PPL | "
        "peak deep-half collapsed layers | final lowest-bin heads |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    counted = ("diverged", "blew_up", "collapsed", "failed_at_end")
    for arch, part in outcomes.groupby("arch", sort=False):
        counts = " | ".join(str(int(part[c].sum())) for c in counted)
        lines.append(
            f"| {arch} | {int(part.failed.sum())}/{len(part)} | {counts} | "
            f"{_spread(list(part.eval_ppl))} | "
            f"{_spread(list(part.peak_collapsed_layers_deep_half))} | "
            f"{_spread(list(part.lowest_bin_heads))} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"
