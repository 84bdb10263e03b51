"""The reproduction driver at the tiny budget: every stage runs, the outputs have their structure,
every markdown number is a cell of a CSV row, and a second call redoes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.reproduction.budgets import BUDGETS
from bench.reproduction.markdown import FINDING_COLUMNS, SHAPE_COLUMNS, TABLE4_COLUMNS
from bench.reproduction.shapes import paper_shapes
from bench.reproduction.tables import op_counts
from models.config import canonical_arch

REPO = Path(__file__).resolve().parents[1]
TINY = BUDGETS["tiny"]


def reproduce(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "bench/reproduce.py", "--budget", "tiny", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir, tiny_data) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reproduce")
    out, work = root / "out", root / "work"
    done = reproduce("--out", str(out), "--work", str(work), "--data-dir", data_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, work


def markdown_rows(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(section title, {header: cell}) for every body row of every table in a markdown file."""
    rows, section, headers = [], "", None
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            section, headers = line.lstrip("# "), None
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if headers is None:
                headers = cells
            elif not set(cells[0]) <= set("-:"):
                rows.append((section, dict(zip(headers, cells, strict=True))))
        else:
            headers = None
    return rows


def assert_cells_trace(md_rows, csv: pd.DataFrame, columns, key) -> None:
    assert md_rows, "the markdown has no table rows"
    for section, cells in md_rows:
        match = csv[key(csv, section, cells)]
        assert len(match) == 1, f"{section} {cells}: {len(match)} CSV rows"
        row = match.iloc[0]
        for header, column, fmt in columns:
            assert cells[header] == fmt(row[column]), f"{section} {header}: not {column}"


def test_outputs_structure(tiny_run):
    out, work = tiny_run
    for name in ("training", "table4", "paper_shapes", "findings", "entropy_heads",
                 "entropy_distribution", "head_distribution", "mpc_results", "accuracy",
                 "entropy_trajectory", "entropy_layers"):  # fmt: skip
        assert (out / f"{name}.csv").is_file(), name
    for name in ("table4.md", "paper_shapes.md", "findings.md", "budget.json",
                 "entropy_heatmaps.png", "head_distribution.png", "perplexity.png",
                 "entropy_trajectory.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert list((out / "plots").glob("*.png"))
    assert not list(out.rglob("*.pt")), "checkpoints belong in --work, never in the results"
    training = pd.read_csv(out / "training.csv")
    assert list(training.arch) == [canonical_arch(a) for a in TINY.variants]
    assert set(training.status) <= {"finished", "diverged"}
    assert training.token_budget.nunique() == 1  # the same token budget for every variant
    assert (training.token_budget == TINY.steps * TINY.batch_size * 16).all()
    table = pd.read_csv(out / "table4.csv")
    assert len(table) == len(TINY.variants) * len(TINY.protocols)
    assert table.comm_gb.gt(0).all() and table.rounds.gt(0).all()
    assert table.cost_model_max_error.eq(0).all()  # measured bytes/rounds equal the model
    assert table.top1_agreement.between(0, 1).all()
    heads = pd.read_csv(out / "entropy_heads.csv")
    assert len(heads) == len(TINY.variants) * 2 * 2  # layers x heads of the tiny preset
    trajectory = pd.read_csv(out / "entropy_trajectory.csv")
    evaluations = TINY.steps // TINY.eval_interval
    assert len(trajectory) == len(TINY.variants) * evaluations * 2  # x layers
    assert trajectory.entropy_fraction_of_log_t.between(0, 1).all()


def test_markdown_numbers_trace_to_csv_rows(tiny_run):
    out, _ = tiny_run
    table = pd.read_csv(out / "table4.csv")
    assert_cells_trace(
        markdown_rows(out / "table4.md"),
        table,
        TABLE4_COLUMNS,
        lambda t, section, cells: (
            (t.arch == cells["arch"]) & (t.protocol == section.removeprefix("Protocol: "))
        ),
    )
    shapes = pd.read_csv(out / "paper_shapes.csv")
    assert_cells_trace(
        markdown_rows(out / "paper_shapes.md"),
        shapes,
        SHAPE_COLUMNS,
        lambda t, section, cells: (
            (t.arch == cells["arch"])
            & (t["shape"] + ", " + t.protocol + " protocol" == section)
            & (t.source == cells["source"])
        ),
    )
    findings = pd.read_csv(out / "findings.csv", keep_default_na=False)
    assert_cells_trace(
        markdown_rows(out / "findings.md"),
        findings,
        FINDING_COLUMNS,
        lambda t, section, cells: t.key == cells["key"],
    )


def test_second_call_redoes_nothing(tiny_run):
    out, work = tiny_run
    done = reproduce(
        "--out", str(out), "--work", str(work), "--by-variant",
        "--stages", "train", "entropy", "mpc", "accuracy",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "..." not in done.stdout, done.stdout  # no stage started for any variant


def test_op_counts_match_the_paper_at_gpt2_small():
    baseline = op_counts("baseline", "gpt2", 128)
    assert baseline["softmax_ops"] == 144 and baseline["activation_ops"] == 12
    assert baseline["layernorm_ops"] == 25  # the paper's 24 plus the final LayerNorm
    assert baseline["ffn_mflops"] == pytest.approx(12 * 16 * 128 * 768**2 / 1e6)
    fused = op_counts("SM+ScFuFFN", "gpt2", 128)
    assert fused["ffn_mflops"] * 8 == pytest.approx(baseline["ffn_mflops"])
    assert fused["layernorm_ops"] == fused["activation_ops"] == 0
    pruned = op_counts("SM+ScFuFFN+Prune", "gpt2", 128)
    assert pruned["ffn_mflops"] * 2 == pytest.approx(fused["ffn_mflops"])


def test_paper_shapes_model_equals_the_committed_measurements(tmp_path):
    """Today's cost model, under the settings each committed GPT-2 run was measured with, gives
    its measured bytes and rounds exactly (the profiles' knobs have grown since some runs)."""
    shapes = paper_shapes(False, tmp_path)
    measured = shapes[shapes.source.str.startswith("measured")]
    assert len(measured) >= 3
    for row in measured.itertuples():
        assert row.comm_gb == pytest.approx(row.model_comm_gb, rel=1e-12), row
        assert row.rounds == row.model_rounds, row


def test_a_work_folder_of_another_recipe_is_refused(tiny_run):
    out, work = tiny_run
    done = reproduce("--out", str(out), "--work", str(work), "--seed", "7", "--stages", "table")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "another recipe (seed 1337 -> 7)" in done.stderr


def test_uniform_exit_reads_the_entropy_trajectory():
    from bench.reproduction.findings import uniform_exit, uniform_fraction

    uniform = uniform_fraction(128)
    assert uniform == pytest.approx(0.7993, abs=1e-4)  # the 0.80 log T of the AERO notes
    rows = []
    for arch, drops_at in (("SM+LN+G", 200_000), ("SM+G", 800_000), ("SM", None)):
        for tokens in (100_000, 200_000, 400_000, 800_000):
            low = drops_at is not None and tokens >= drops_at
            for layer, fraction in enumerate((uniform, uniform - (0.2 if low else 0.01))):
                rows.append(dict(arch=arch, tokens=tokens, layer=layer,
                                 entropy_fraction_of_log_t=fraction))  # fmt: skip
    training = pd.DataFrame({"arch": ["SM+LN+G", "SM+G", "SM"], "seq_len": [128] * 3})
    (row,) = uniform_exit(pd.DataFrame(rows), training)
    assert row["ours"] == "SM+LN+G 0.20 M; SM+G 0.80 M; SM never"
    assert row["verdict"] == "LN-free later in 2 of 2" and row["ours_value"] == 4.0
