"""The report reads a results table right: hand-computed summary numbers, the prediction flag,
every figure a non-empty PNG, and `bench/plot.py` exit codes on good and bad CSVs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import figures, report
from bench.plot import cli
from bench.schema import TOTAL, ResultRow, projected_seconds

REPO = Path(__file__).resolve().parents[1]
BASE, RELU, AERO = "SM+LN+G", "SM+LN+R", "EReg(SM(t)+ScFuFFN)"
# Client megabytes per block at T=16, and outside the blocks (layer -1). Attention grows with T^2.
BLOCK_MB = {
    BASE: {"qkv_proj": 10, "attn_qk": 5, "softmax": 40, "attn_av": 5, "out_proj": 5,
           "layernorm": 20, "ffn_linear": 30, "gelu": 80},  # 195 MB
    RELU: {"qkv_proj": 10, "attn_qk": 5, "softmax": 40, "attn_av": 5, "out_proj": 5,
           "layernorm": 20, "ffn_linear": 30, "relu": 20},  # 135 MB
    AERO: {"qkv_proj": 10, "attn_qk": 5, "scaling": 1, "softmax": 40, "attn_av": 5,
           "out_proj": 5, "ffn_linear": 10},  # 76 MB
}  # fmt: skip
OUTSIDE_MB = {"embedding": 2, "layernorm": 20, "lm_head": 50, "input_share": 1, "reveal": 1,
              "other": 1}  # fmt: skip
NO_LN_OUTSIDE = {k: v for k, v in OUTSIDE_MB.items() if k != "layernorm"}  # 55 MB
ROUNDS = {"softmax": 30, "layernorm": 20, "gelu": 40, "relu": 10}  # other categories: 2
QUADRATIC = ("attn_qk", "softmax", "attn_av")
LAYERS, REPEATS, SEQ_LENS = 2, 2, (16, 64)
DEALER_MB = 100  # the server's extra traffic with the ttp dealer
PREDICTION_MISS = {RELU: 1.02, AERO: 1.005}  # measured / predicted client softmax bytes


def part_rows(arch: str, seq_len: int, party: str, repeat: int) -> list[ResultRow]:
    common = dict(run_id="r1", arch=arch, preset="tiny", weights="random", backend="crypten",
                  protocol="stock", dealer="ttp", network="loopback", seq_len=seq_len,
                  party=party, repeat=repeat)  # fmt: skip
    outside = NO_LN_OUTSIDE if arch == AERO else OUTSIDE_MB
    costs = [(layer, c, mb) for layer in range(LAYERS) for c, mb in BLOCK_MB[arch].items()]
    costs += [(-1, c, mb) for c, mb in outside.items()]
    if party == "server":
        costs.append((-1, "other", DEALER_MB))
    rows = []
    for layer, category, mb in costs:
        growth = (seq_len / 16) ** (2 if category in QUADRATIC else 1)
        bytes_ = mb * 1e6 * growth
        wall = mb * growth * 1e-3 * (1 + 0.1 * repeat)  # 1 ms per MB, repeat 1 is 10 % slower
        miss = PREDICTION_MISS.get(arch, 1.0) if (party, category) == ("client", "softmax") else 1
        rounds = ROUNDS.get(category, 2)
        rows.append(ResultRow(**common, layer=layer, category=category, bytes=bytes_,
                              rounds=rounds, comm_s=wall / 2, wall_s=wall, cpu_s=wall / 3,
                              calls=1, predicted_bytes=bytes_ / miss,
                              predicted_rounds=rounds).project())  # fmt: skip
    return rows


def total_row(parts: list[ResultRow], repeat: int) -> ResultRow:
    first = parts[0]
    sums = {k: sum(getattr(p, k) for p in parts) for k in ("bytes", "rounds", "comm_s", "wall_s",
                                                            "cpu_s", "calls")}  # fmt: skip
    extra = dict(peak_rss_mb=2000.0 + 10 * repeat if first.party == "server" else 1500.0,
                 os_bytes=sums["bytes"] * 1.01)  # fmt: skip
    if first.party == "client":
        extra.update(max_abs_logit_error=0.01 * (repeat + 1), top1_match=float(repeat == 0))
    common = {k: getattr(first, k) for k in ResultRow.columns()[:10]} | {"repeat": repeat}
    return ResultRow(**common, layer=-1, category=TOTAL, **sums, **extra).project()


def synthetic_results() -> pd.DataFrame:
    rows = []
    for arch in BLOCK_MB:
        for seq_len in SEQ_LENS:
            for party in ("server", "client"):
                for repeat in range(REPEATS):
                    parts = part_rows(arch, seq_len, party, repeat)
                    rows += [*parts, total_row(parts, repeat)]
    return pd.DataFrame([vars(r) for r in rows], columns=ResultRow.columns())


@pytest.fixture(scope="module")
def results() -> pd.DataFrame:
    return synthetic_results()


@pytest.fixture(scope="module")
def summary(results) -> pd.DataFrame:
    return report.summary_table(results).set_index(["seq_len", "arch"])


def test_categories_match_the_recorder():
    measure = pytest.importorskip("mpc.measure")
    assert set(report.GROUP_OF) == set(measure.CATEGORIES)


def test_summary_numbers_by_hand(summary):
    base, relu, aero = (summary.loc[(16, arch)] for arch in (BASE, RELU, AERO))
    # client total at T=16: 2 blocks x (195 | 135 | 76) MB + 75 MB outside (55 without LayerNorm)
    assert base.comm_gb == pytest.approx(0.465)
    assert relu.comm_gb == pytest.approx(0.345)
    assert aero.comm_gb == pytest.approx(0.207)
    assert base.dealer_gb == pytest.approx(0.1)
    assert base.repeats == 2
    assert base.comm_saving_x == 1.0
    assert relu.comm_saving_x == pytest.approx(465 / 345)
    assert aero.comm_saving_x == pytest.approx(465 / 207)
    # wall: 1 ms per MB, repeats at x1.0 and x1.1 average to x1.05
    assert base.wall_s == pytest.approx(0.465 * 1.05)
    assert aero.wall_saving_x == pytest.approx(465 / 207)
    base_rounds = 2 * (5 * 2 + 30 + 20 + 40) + (2 * 5 + 20)  # 2 blocks + embedding..other, final LN
    assert base.rounds == base_rounds
    wan = projected_seconds(0.465 * 1.05 / 2, 465e6, base_rounds, "wan")
    assert base.projected_wan_s == pytest.approx(wan)
    assert base.projected_wan_min == pytest.approx(wan / 60)
    assert base.server_peak_rss_mb == 2010 and base.client_peak_rss_mb == 1500
    assert base.max_abs_logit_error == pytest.approx(0.02)
    assert base.top1_match == pytest.approx(0.5)
    # at T=64 attention (50 MB a block at T=16) grows 16x, everything else 4x
    big = summary.loc[(64, BASE)]
    assert big.comm_gb == pytest.approx((2 * (145 * 4 + 50 * 16) + 75 * 4) / 1e3)


def test_prediction_flag(summary):
    assert summary.loc[(16, BASE)].max_prediction_error == pytest.approx(0.0)
    assert not summary.loc[(16, BASE)].prediction_flag
    assert summary.loc[(16, RELU)].max_prediction_error == pytest.approx(0.02)
    assert summary.loc[(16, RELU)].prediction_flag
    assert summary.loc[(16, RELU)].worst_prediction == "client softmax bytes"
    assert summary.loc[(16, AERO)].max_prediction_error == pytest.approx(0.005)
    assert not summary.loc[(16, AERO)].prediction_flag


def test_category_shares(results):
    table = report.category_table(results).set_index(["seq_len", "arch", "group"])
    assert table.loc[(16, BASE, "GELU")].bytes == pytest.approx(160e6)
    assert table.loc[(16, BASE, "GELU")].bytes_share == pytest.approx(160 / 465)
    assert table.loc[(16, BASE, "Linear")].bytes == pytest.approx(2 * 55e6)
    assert table.loc[(16, AERO, "Scaling")].bytes == pytest.approx(2e6)
    shares = table.groupby(["seq_len", "arch"])[["bytes_share", "wall_s_share"]].sum()
    assert shares.to_numpy() == pytest.approx(1.0)


def test_markdown(results):
    text = report.summary_markdown(results)
    assert "Setting: crypten, stock protocol, ttp dealer, loopback, preset tiny." in text
    assert "| T | arch | repeats | comm GB | dealer GB | rounds |" in text
    assert "| 16 | SM+LN+R | 2 | 0.345 | 0.1 | 170 |" in text
    assert "| 16 | EReg(SM(t)+ScFuFFN) | 2.25x | 2.25x |" in text
    assert "2.0 % **> 1 %** (client softmax bytes)" in text
    # Figure 1 data: Linear 2 x 55 MB, Embedding+LM head 52 MB of 465 MB; no ReLU in the baseline
    assert (
        "| SM+LN+G | 0.11 (23.7 %) | 0.052 (11.2 %) | 0.08 (17.2 %) | 0.06 (12.9 %) | 0.16 (34.4 %) | - |"
        in text
    )


EXPECTED_FIGURES = {
    "bytes_by_category.png", "latency_measured_by_category.png", "latency_wan_by_category.png",
    "savings.png", "per_layer_T16.png", "per_layer_T64.png", "seq_len_sweep.png",
}  # fmt: skip


@pytest.fixture(scope="module")
def plotted(results, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`bench/plot.py` run once, as a script, on the synthetic results written to a CSV."""
    folder = tmp_path_factory.mktemp("plot")
    results.to_csv(folder / "results.csv", index=False)
    out = folder / "figures"
    command = [sys.executable, "bench/plot.py", str(folder / "results.csv"), "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    return done, out


def test_plot_command(plotted):
    done, out = plotted
    assert done.returncode == 0 and done.stderr == "", done.stderr
    written = {Path(line).name for line in done.stdout.split()}
    assert written == EXPECTED_FIGURES | {"summary.md"}
    summary = (out / "summary.md").read_text()
    assert "| 16 | SM+LN+R | 2 | 0.345 |" in summary and "![savings](plots/savings.png)" in summary


def test_figures(plotted, results, tmp_path):
    _, out = plotted
    assert {path.name for path in (out / "plots").iterdir()} == EXPECTED_FIGURES
    for name in EXPECTED_FIGURES:
        assert (out / "plots" / name).stat().st_size > 0, name
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert figures.plot_seq_len_sweep(results[results.seq_len == 16], tmp_path) == []
    assert figures.plot_savings(results[results.arch != BASE], tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def text_in_bytes(df: pd.DataFrame) -> pd.DataFrame:
    bad = df.astype({"bytes": object})
    bad.loc[1, "bytes"] = "many"  # data row 2 is line 3 of the file
    return bad


BAD_CSVS = {  # what is wrong: (how to write it, what the one-line error says)
    "no file": (None, "no such results file"),
    "empty file": (lambda path, df: path.write_text(""), "not a readable CSV"),
    "other columns": (
        lambda path, df: path.write_text("run_id,arch,bytes\nr1,SM,12\n"),
        "missing column(s) preset, weights, backend and 13 more; not a bench results.csv",
    ),
    "text in bytes": (
        lambda path, df: text_in_bytes(df).to_csv(path, index=False),
        "line 3: bad bytes value 'many'",
    ),
    "unknown party": (
        lambda path, df: df.assign(party="dealer").to_csv(path, index=False),
        "unknown party 'dealer'",
    ),
}


@pytest.mark.parametrize("case", BAD_CSVS)
def test_bad_csv(results, tmp_path, capsys, case):
    write, fragment = BAD_CSVS[case]
    csv = tmp_path / "results.csv"
    if write is not None:
        write(csv, results)
    assert cli([str(csv), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not (tmp_path / "out").exists()
