"""The SPU embedding and LM head in vocabulary slices (`mpc.spu.vocab`): the same function as the
whole-vocabulary products, in plaintext exactly and under SEMI2K and CHEETAH between two real
processes; the slice size follows the memory budget.

Tolerances: the plaintext chain is the same float32 sums in another order (1e-5); under SPU each
run's fixed-point truncations are fresh randomness, so a sliced and an unsliced run agree to the
protocol's error against plaintext (test_spu's 3e-2 on the tiny preset), not bit for bit.
"""

from __future__ import annotations

import pandas as pd
import pytest

from bench.run import main as bench_main
from bench.schema import TOTAL
from models.config import resolve_config
from tests.conftest import assert_close
from tests.test_spu import PLAIN_ATOL, SPU_ATOL, perturbed_state

jax_model = pytest.importorskip("mpc.spu.jax_model", reason="the spu extra (jax) is not installed")
from mpc.spu.settings import SettingsError, SpuSettings, settings_label  # noqa: E402
from mpc.spu.vocab import (  # noqa: E402
    GB,
    MIN_SLICE,
    product_bytes,
    vocab_slice_for,
    vocab_slices,
)

SLICE = 100  # the tiny preset's 512 words in 6 slices, the last one short


@pytest.mark.parametrize("arch", ["baseline", "aero"])
def test_sliced_chain_equals_the_whole_vocabulary_in_plaintext(arch):
    cfg = resolve_config(arch, "tiny")
    weights = jax_model.export_weights(cfg, perturbed_state(cfg))
    tokens = list(range(cfg.vocab_size - cfg.block_size, cfg.vocab_size))  # last slice's words
    whole = jax_model.plain_logits(cfg, weights, tokens, SpuSettings())
    sliced = jax_model.plain_logits(cfg, weights, tokens, SpuSettings(vocab_slice=SLICE))
    assert_close(sliced, whole, PLAIN_ATOL, f"{arch}: sliced vs whole vocabulary")
    names = [s.name for s in jax_model.build_stages(cfg, 16, SpuSettings(vocab_slice=SLICE))]
    assert names[:6] == ["embed", *(f"embed.{i}" for i in range(1, 6))]
    assert names[-7:] == [*(f"lm_head.{i}" for i in range(6)), "lm_head.join"]


def test_slices_cover_the_vocabulary_once():
    assert vocab_slices(512, 100) == [(0, 100), (100, 200), (200, 300), (300, 400), (400, 500),
                                      (500, 512)]  # fmt: skip
    assert vocab_slices(512, 512) == [(0, 512)]


def test_slice_size_adapts_to_the_memory_budget():
    T, C, V = 128, 768, 50257
    sizes = [
        vocab_slice_for(SpuSettings(protocol="cheetah", memory_budget_gb=b), T, C, V)
        for b in (4, 8, 16, 1000)
    ]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4, sizes
    assert sizes[-1] == V  # a budget that holds the whole product: one slice
    for budget, words in zip((4, 8, 16), sizes, strict=False):
        settings = SpuSettings(protocol="cheetah", memory_budget_gb=budget)
        assert product_bytes(settings, T, C, words) <= budget * GB
        assert product_bytes(settings, T, C, words + 1) > budget * GB  # the largest that fits
    tight = SpuSettings(protocol="cheetah", memory_budget_gb=0.001)
    assert vocab_slice_for(tight, T, C, V) == MIN_SLICE
    fixed = SpuSettings(protocol="cheetah", vocab_slice=4096, memory_budget_gb=0.001)
    assert vocab_slice_for(fixed, T, C, V) == 4096  # an explicit slice wins over the budget
    assert vocab_slice_for(SpuSettings(vocab_slice=4096), 16, 64, 512) == 512
    with pytest.raises(SettingsError, match="vocab_slice"):
        SpuSettings(vocab_slice=-1)
    assert settings_label(SpuSettings(vocab_slice=SLICE)).endswith(",vocab-slice100")
    assert settings_label(SpuSettings(memory_budget_gb=8)).endswith(",mem8GB")


@pytest.fixture(scope="module")
def sliced_run(tmp_path_factory):
    """bench/run.py, tiny baseline, both SPU protocols, vocabulary in slices of 100 words: a real
    server and client process per protocol over brpc."""
    pytest.importorskip("spu")
    out = tmp_path_factory.mktemp("spu-sliced") / "run"
    argv = [
        "--arch", "baseline", "--preset", "tiny", "--backend", "spu-semi2k", "spu-cheetah",
        "--spu-set", f"vocab_slice={SLICE}", "--no-plots", "--out", str(out), "--timeout", "300",
    ]  # fmt: skip
    assert bench_main(argv) == 0
    return pd.read_csv(out / "results.csv")


@pytest.mark.parametrize("backend", ["spu-semi2k", "spu-cheetah"])
def test_sliced_vocabulary_under_two_processes(sliced_run, spu_run, backend):
    sliced = sliced_run[sliced_run.backend == backend]
    whole = spu_run[spu_run.backend == backend]
    client = sliced[(sliced.party == "client") & (sliced.category == TOTAL)].iloc[0]
    assert client.max_abs_logit_error <= SPU_ATOL and client.top1_match == 1.0
    assert client.protocol.endswith(f",vocab-slice{SLICE}")
    parts = sliced[(sliced.category != TOTAL) & (sliced.layer < 0)].set_index(["party", "category"])
    for party in ("server", "client"):
        for category in ("embedding", "lm_head"):
            assert parts.loc[(party, category), "bytes"] > 0
            assert parts.loc[(party, category), "peak_rss_mb"] > 50  # sampled per stage
    if backend == "spu-semi2k":  # CHEETAH's bytes vary from run to run by a few per cent
        # The blocks do not change with the slicing: their bytes match the unsliced run's.
        pd.testing.assert_series_equal(block_bytes(sliced), block_bytes(whole))


def block_bytes(rows: pd.DataFrame) -> pd.Series:
    inside = rows[(rows.layer >= 0) & (rows.party == "client")]
    return inside.set_index(["layer", "category"]).bytes.sort_index()
