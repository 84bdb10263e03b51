"""The stress budget's judgments on synthetic outcomes: collapse measures, the prevention and
PPL verdicts over seeds, and the budget itself."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.reproduction.budgets import BUDGETS
from bench.reproduction.paper import AERO
from bench.reproduction.stress import (
    COLLAPSED,
    STRESS_VARIANTS,
    collapse_measures,
    noise_verdict,
    run_outcome,
    stress_findings,
)
from models.config import canonical_arch

REPO = Path(__file__).resolve().parents[1]


def test_collapse_measures_of_known_heads():
    heads = [[0.8, 0.8], [0.7, 0.6], [0.01, 0.5], [0.0, 0.02]]  # (L=4, H=2), m = 0.8
    measures = collapse_measures(heads)
    assert measures["collapsed_heads"] == 3 / 8  # 0.01, 0.0, 0.02 < COLLAPSED
    # layer 2 has one sharp head but a healthy one (mean 0.255): only layer 3 (0.01) collapsed
    assert measures["collapsed_layers_deep_half"] == 1 / 2
    assert measures["lowest_bin_heads"] == 3 / 8  # below m / 4 = 0.2
    assert measures["min_layer_entropy"] == pytest.approx(0.01)
    assert sum(measures[f"bin_{i}"] for i in range(4)) == pytest.approx(1.0)
    assert COLLAPSED == 0.05


def _point(heads, loss: float = 5.0, step: int = 100) -> dict:
    return {"step": step, "eval_loss": loss, "entropy_fraction_by_head": heads}


COLLAPSED_HEADS = [[0.8, 0.8], [0.0, 0.01]]
HEALTHY_HEADS = [[0.8, 0.7], [0.5, 0.4]]


def test_run_outcome_judges_the_whole_history():
    vocab = 512  # log V = 6.24: a loss above it is worse than guessing uniformly
    diverged = run_outcome("SM", 1, {"status": "diverged", "diverged_at_step": 120,
                                     "history": [_point(HEALTHY_HEADS)]}, vocab)  # fmt: skip
    assert diverged["failed"] and diverged["diverged"] and math.isnan(diverged["eval_ppl"])
    meta = {"status": "finished", "eval_ppl": 150.0, "history": [_point(HEALTHY_HEADS)]}
    fine = run_outcome("SM+ScFFN", 1, meta, vocab)
    assert not fine["failed"] and fine["eval_ppl"] == 150.0
    # collapsed at step 100, recovered by step 200: still a collapsed run
    meta["history"] = [_point(COLLAPSED_HEADS), _point(HEALTHY_HEADS, step=200)]
    recovered = run_outcome("SM", 1, meta, vocab)
    assert recovered["collapsed"] and recovered["failed"] and not recovered["blew_up"]
    assert not recovered["failed_at_end"]
    assert recovered["collapsed_layers_deep_half"] == 0.0  # the last evaluation is healthy
    assert recovered["peak_collapsed_layers_deep_half"] == 1.0
    meta["history"] = [_point(HEALTHY_HEADS, loss=900.0), _point(HEALTHY_HEADS, step=200)]
    blown = run_outcome("SM", 1, meta, vocab)
    assert blown["blew_up"] and blown["failed"] and blown["peak_eval_loss"] == 900.0
    meta["history"] = [_point(HEALTHY_HEADS), _point(COLLAPSED_HEADS, loss=7.0, step=200)]
    stuck = run_outcome("SM", 1, meta, vocab)
    assert stuck["failed_at_end"] and stuck["collapsed"] and stuck["blew_up"]


def test_noise_verdict_needs_agreeing_seeds_beyond_twice_the_standard_error():
    assert noise_verdict([-0.05, -0.06, -0.055]) == "better beyond seed noise"
    assert noise_verdict([0.05, 0.06, 0.04]) == "worse beyond seed noise"
    assert noise_verdict([-0.05, 0.01, -0.06]) == "within seed noise"  # seeds disagree
    assert noise_verdict([-0.001, -0.2, -0.003]) == "within seed noise"  # mean < 2 std errors
    assert noise_verdict([-0.05]) == "too few finite seeds"


def _outcomes(
    failing: dict[str, int], ppl: dict[str, list[float]], recovering: dict[str, int] | None = None
) -> pd.DataFrame:
    rows = []
    for arch in STRESS_VARIANTS:
        for seed in range(3):
            fails = seed < failing.get(arch, 0)
            stays = fails and seed >= (recovering or {}).get(arch, 0)
            rows.append({
                "arch": arch, "seed": seed, "diverged": stays, "blew_up": False,
                "collapsed": fails, "failed": fails, "failed_at_end": stays,
                "eval_ppl": math.nan if stays else ppl.get(arch, [100.0] * 3)[seed],
                "peak_collapsed_layers_deep_half": 0.5 if fails else 0.0,
                "min_layer_entropy": 0.3, "lowest_bin_heads": 0.1,
            })  # fmt: skip
    return pd.DataFrame(rows)


def test_findings_give_a_verdict_per_claim_from_every_seed():
    outcomes = _outcomes(
        {"SM": 3, "SM+WNormFFN": 1, "SM+SNormFFN": 3, "SM+ScFuFFN": 3},
        {AERO: [90.0, 91.0, 92.0], "SM(t)+ScFuFFN": [100.0, 99.0, 101.0]},
        recovering={"SM+ScFuFFN": 3},
    )
    findings = stress_findings(outcomes).set_index("key")
    assert findings.loc["sm_collapses", "verdict"] == "collapse shown"
    assert findings.loc["scaled_ffn_prevents_collapse", "verdict"].startswith("prevents")
    assert findings.loc["scaled_fused_ffn_prevents_collapse", "verdict"] == (
        "does not prevent, recovers: 0 of 3 seeds end failed (SM: 3 of 3)"
    )
    assert findings.loc["weight_norm_prevents_collapse", "verdict"] == "reduces, does not prevent"
    assert findings.loc["spectral_norm_prevents_collapse", "verdict"] == "does not prevent"
    assert findings.loc["ereg_improves_ppl", "verdict"] == "better beyond seed noise"
    assert findings.loc["ereg_improves_ppl", "mean_value"] == pytest.approx(-0.0902, abs=1e-3)
    assert findings.loc["temperature_matters", "verdict"] == "within seed noise"
    assert (findings.n_seeds == 3).all()


def test_findings_call_prevention_untestable_without_collapse():
    findings = stress_findings(_outcomes({}, {})).set_index("key")
    assert findings.loc["sm_collapses", "verdict"] == "no reliable collapse in this regime"
    assert findings.loc["scaled_ffn_prevents_collapse", "verdict"].startswith("untestable")


def test_stress_budget_trains_every_claimed_variant_at_three_seeds():
    budget = BUDGETS["stress"]
    assert {canonical_arch(a) for a in budget.variants} == set(STRESS_VARIANTS)
    assert len(budget.seeds) >= 3
    assert {"mpc", "accuracy", "shapes"} <= set(budget.skip_stages)


def test_several_seed_run_writes_findings_over_seeds(tmp_path, data_dir, tiny_data):
    """The driver's several-seed path (what `--budget stress` runs) on the tiny budget: every
    variant at each seed in its own work folder, then per-seed rows, findings and figures."""
    out, work = tmp_path / "out", tmp_path / "work"
    command = [sys.executable, "bench/reproduce.py", "--budget", "tiny", "--seeds", "1", "2"]
    command += ["--variants", "sm", "sm+scffn", "--steps", "4", "--stages", "train", "table"]
    command += ["--out", str(out), "--work", str(work), "--data-dir", data_dir]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in work.glob("seed-*")) == ["seed-1", "seed-2"]
    training = pd.read_csv(out / "training.csv")
    assert sorted(zip(training.arch, training.seed, strict=True)) == [
        ("SM", 1),
        ("SM", 2),
        ("SM+ScFFN", 1),
        ("SM+ScFFN", 2),
    ]
    collapse = pd.read_csv(out / "collapse.csv")
    assert len(collapse) == 4 and collapse.eval_ppl.gt(0).all()
    findings = pd.read_csv(out / "findings.csv").set_index("key")
    assert findings.loc["scaled_ffn_prevents_collapse", "n_seeds"] == 2
    assert (out / "findings.md").read_text().count("| SM") >= 2
    for png in ("entropy_trajectory.png", "head_distribution.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
