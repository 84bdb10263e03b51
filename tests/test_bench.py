"""The benchmark command end to end: real parties, tidy CSV, analytic agreement, plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.schema import TOTAL, ResultRow

REPO = Path(__file__).resolve().parents[1]


def bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "bench/run.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "run"
    done = bench(
        "--arch",
        "baseline",
        "sm+r",
        "--preset",
        "tiny",
        "--repeats",
        "2",
        "--seq-len",
        "6",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "MODEL MISMATCH" not in done.stdout
    return out


def test_csv_schema_and_rows(run_folder):
    frame = pd.read_csv(run_folder / "results.csv")
    assert list(frame.columns) == ResultRow.columns()
    assert set(frame.arch) == {"SM+LN+G", "SM+R"} and set(frame.party) == {"server", "client"}
    assert set(frame.repeat) == {0, 1} and set(frame.seq_len) == {6}
    assert set(frame.dealer) == {"ttp"} and set(frame.weights) == {"random"}
    relu = frame[(frame.arch == "SM+R") & (frame.category == "relu")]
    assert len(relu) == 2 * 2 * 2  # layers x parties x repeats
    assert frame[(frame.arch == "SM+R") & (frame.category == "gelu")].empty


def test_parts_add_up_to_totals_and_match_the_model(run_folder):
    frame = pd.read_csv(run_folder / "results.csv")
    keys = ["arch", "party", "repeat"]
    parts = frame[frame.category != TOTAL].groupby(keys)[["bytes", "rounds"]].sum()
    totals = frame[frame.category == TOTAL].set_index(keys)[["bytes", "rounds"]]
    pd.testing.assert_frame_equal(parts.sort_index(), totals.sort_index(), check_dtype=False)
    assert (frame.bytes == frame.predicted_bytes).all(), "measured bytes differ from the model"
    assert (frame.rounds == frame.predicted_rounds).all(), "measured rounds differ from the model"


def test_totals_carry_kernel_bytes_memory_accuracy_and_projections(run_folder):
    frame = pd.read_csv(run_folder / "results.csv")
    totals = frame[frame.category == TOTAL]
    assert (totals.os_bytes >= totals.bytes).all() and (totals.os_bytes < 1.5 * totals.bytes).all()
    assert (totals.peak_rss_mb > 50).all()
    client = totals[totals.party == "client"]
    assert (client.max_abs_logit_error < 0.05).all() and (client.top1_match == 1).all()
    assert (frame.projected_wan_s >= frame.projected_lan_s).all()
    assert (totals.projected_wan_s > totals.projected_lan_s).all()
    assert (totals.projected_wan_s >= totals.rounds * 0.08).all()


def test_folder_has_config_env_summary_and_plots(run_folder):
    config = json.loads((run_folder / "config.json").read_text())
    assert set(config["architectures"]) == {"SM+LN+G", "SM+R"}
    assert config["approx"]["precision_bits"] == 16
    env = json.loads((run_folder / "env.json").read_text())
    assert {"cpu", "packages", "git_revision", "torch_threads_per_party"} <= set(env)
    summary = (run_folder / "summary.md").read_text()
    assert "SM+LN+G" in summary and "SM+R" in summary
    plots = sorted(p.name for p in (run_folder / "plots").glob("*.png"))
    assert {"bytes_by_category.png", "savings.png"} <= set(plots)
    assert all((run_folder / "plots" / p).stat().st_size > 1000 for p in plots)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--arch", "gpt5"], "unknown architecture 'gpt5'"),
        (["--arch", "baseline", "--seq-len", "17"], "--seq-len 17 outside [1, 16]"),
        (["--checkpoint", "/nonexistent.pt"], "no checkpoint at /nonexistent.pt"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, fragment):
    out = tmp_path / "never"
    done = bench(*args, "--preset", "tiny", "--out", str(out), timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and fragment in done.stderr, done.stderr
    assert not (out / "results.csv").exists()
