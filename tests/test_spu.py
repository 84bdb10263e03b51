"""SecretFlow SPU backend: the JAX forward equals the torch forward, and two real processes
(server with the weights, client with the prompt) compute the logits under SEMI2K and CHEETAH.

Tolerances: the JAX forward in plaintext is the same float32 arithmetic as torch (1e-5 on logits
of order 1). Under SPU (64-bit ring, 18 fraction bits) the error comes from SPU's exp, tanh,
reciprocal and inverse square root approximations: a few 1e-3 on the tiny preset's logits
(measured 6e-4 SEMI2K, 8e-3 CHEETAH), so 3e-2 and the same top-1 token.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from bench.run import main as bench_main
from bench.schema import TOTAL, ResultRow
from models.checkpoint import random_checkpoint
from models.config import VARIANTS, resolve_config
from mpc.roles import TRUST_LABELS
from mpc.session.secure_model import inference_model
from tests.conftest import assert_close

jax_model = pytest.importorskip("mpc.spu.jax_model", reason="the spu extra (jax) is not installed")
from mpc.spu.session import parse_profile  # noqa: E402
from mpc.spu.settings import SettingsError, SpuSettings, settings_label  # noqa: E402

PLAIN_ATOL = 1e-5
SPU_ATOL = 3e-2


def perturbed_state(cfg, seed: int = 0) -> dict:
    """Random weights with every gain, norm, temperature and bias moved off its init, so that
    a part the JAX forward forgot or misplaced shows in the logits."""
    generator = torch.Generator().manual_seed(seed)
    state = random_checkpoint(cfg, seed).model_state
    return {
        name: value + 0.2 * torch.randn(value.shape, generator=generator)
        if value.is_floating_point()
        else value
        for name, value in state.items()
    }


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_jax_forward_equals_torch(arch):
    cfg = resolve_config(arch, "tiny")
    state = perturbed_state(cfg)
    tokens = torch.randint(
        0, cfg.vocab_size, (cfg.block_size,), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        expected = inference_model(cfg, state)(tokens[None])[0, -1]
    weights = jax_model.export_weights(cfg, state)
    actual = jax_model.plain_logits(cfg, weights, tokens.tolist(), SpuSettings())
    assert expected.abs().max() > 0.1, "logits too small for the check to mean anything"
    assert_close(actual, expected, PLAIN_ATOL, f"{arch}: JAX vs torch logits")


def test_max_free_softmax_is_the_same_function():
    cfg = resolve_config("aero", "tiny")
    state = perturbed_state(cfg)
    weights = jax_model.export_weights(cfg, state)
    tokens = list(range(cfg.block_size))
    stock = jax_model.plain_logits(cfg, weights, tokens, SpuSettings())
    max_free = jax_model.plain_logits(cfg, weights, tokens, SpuSettings(softmax_form="max_free"))
    assert_close(max_free, stock, PLAIN_ATOL, "max-free vs stock softmax")


def test_the_gelu_form_setting_chooses_the_jax_activation():
    """SPU's `gelu_form` is read (it once was not: JAX always ran the tanh form): the piecewise
    polynomial form gives other logits than tanh, both within the form's 2e-4 of GPT-2's GELU
    per activation."""
    cfg = resolve_config("baseline", "tiny")
    state = perturbed_state(cfg)
    weights = jax_model.export_weights(cfg, state)
    tokens = list(range(cfg.block_size))
    tanh = jax_model.plain_logits(cfg, weights, tokens, SpuSettings(gelu_form="tanh"))
    poly = jax_model.plain_logits(cfg, weights, tokens, SpuSettings(gelu_form="poly"))
    assert not np.array_equal(np.asarray(tanh), np.asarray(poly)), "gelu_form was ignored"
    assert_close(poly, tanh, 5e-3, "poly vs tanh GELU logits")
    x = np.linspace(-30, 30, 2001, dtype=np.float32)
    exact = torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh")
    assert_close(np.array(jax_model.activation(cfg, SpuSettings(gelu_form="poly"))(x)), exact,
                 2e-4, "poly GELU in JAX")  # fmt: skip
    with pytest.raises(SettingsError, match="gelu_form"):
        SpuSettings(gelu_form="erf")  # registered for CrypTen only: no JAX version


def test_every_stage_has_a_benchmark_category():
    from mpc.measure import CATEGORIES

    for arch in VARIANTS:
        cfg = resolve_config(arch, "tiny")
        stages = jax_model.build_stages(cfg, cfg.block_size, SpuSettings())
        assert {s.category for s in stages} <= set(CATEGORIES)
        assert len({s.name for s in stages}) == len(stages)


def test_profile_log_is_parsed_per_run():
    log = (
        "x [info] [api.cc:1] [Profiling] SPU execution h.0.qk completed, input processing took "
        "1e-06s, execution took 0.5s, output processing took 1e-06s, total time 0.5s.\n"
        "x [info] [api.cc:2] - pphlo.dot, executed 1 times, duration 0.4s, send bytes 10 recv "
        "bytes 10, send actions 1, recv actions 1\n"
        "x [info] [api.cc:3] Link details: total send bytes 100, recv bytes 60, send actions 3, "
        "recv actions 2\n"
        "x [info] [api.cc:1] [Profiling] SPU execution lm_head completed, input processing took "
        "1e-06s, execution took 2.5e-01s, output processing took 1e-06s, total time 2.5e-01s.\n"
        "x [info] [api.cc:3] Link details: total send bytes 7, recv bytes 8, send actions 1, "
        "recv actions 1\n"
    )
    runs = parse_profile(log)
    assert [(r["name"], r["send"] + r["recv"], r["messages"]) for r in runs] == [
        ("h.0.qk", 160, 3),
        ("lm_head", 15, 1),
    ]


def test_settings_are_checked_and_labeled():
    with pytest.raises(SettingsError, match="exp_mode"):
        SpuSettings(exp_mode="limit")
    assert SpuSettings(protocol="cheetah").dealer == "none"
    assert SpuSettings().dealer == "tfp" and "INSECURE" in TRUST_LABELS[SpuSettings().dealer]
    assert settings_label(SpuSettings()) == "fxp18,exp-taylor8,gelu-tanh,softmax-stock,div-opt"
    cheaper = SpuSettings(protocol="cheetah", mul_lsb_error=True, trunc_msb_error=True)
    assert settings_label(cheaper).endswith(",div-opt,mul-lsb-err,trunc-msb-err")
    pytest.importorskip("spu")
    config = cheaper.runtime_config()
    assert config.cheetah_2pc_config.enable_mul_lsb_error and config.trunc_allow_msb_error
    plain = SpuSettings(protocol="cheetah").runtime_config()
    assert not plain.cheetah_2pc_config.enable_mul_lsb_error and not plain.trunc_allow_msb_error


@pytest.mark.parametrize("backend", ["spu-semi2k", "spu-cheetah"])
def test_two_processes_reveal_plaintext_logits_to_the_client(spu_run, backend):
    rows = spu_run[spu_run.backend == backend]
    client = rows[(rows.party == "client") & (rows.category == TOTAL)].iloc[0]
    assert client.max_abs_logit_error <= SPU_ATOL, client.max_abs_logit_error
    assert client.top1_match == 1.0
    assert client.dealer == ("tfp" if backend == "spu-semi2k" else "none")


@pytest.mark.parametrize("backend", ["spu-semi2k", "spu-cheetah"])
def test_csv_rows_add_up_and_match_the_kernel_count(spu_run, backend):
    assert list(spu_run.columns) == ResultRow.columns()
    rows = spu_run[spu_run.backend == backend]
    assert set(rows.protocol) == {"fxp18,exp-taylor8,gelu-tanh,softmax-stock,div-opt"}
    for party in ("server", "client"):
        mine = rows[rows.party == party]
        total = mine[mine.category == TOTAL].iloc[0]
        parts = mine[mine.category != TOTAL]
        assert np.isclose(parts.bytes.sum(), total.bytes) and total.bytes > 0
        assert {"embedding", "softmax", "layernorm", "gelu", "lm_head", "reveal"} <= set(
            parts.category
        )
        assert set(parts.layer) == {-1, 0, 1}
        # Kernel TCP bytes hold brpc's framing too: a few hundred bytes per message.
        assert total.bytes <= total.os_bytes <= 1.15 * total.bytes, (total.bytes, total.os_bytes)
    both = rows[rows.category != TOTAL].pivot_table(
        index=["layer", "category"], columns="party", values="bytes"
    )
    assert np.allclose(both.server, both.client), "the two parties' link counts differ"


def test_programs_dispatch_from_the_crypten_entry_points():
    for program in ("mpc.server", "mpc.client"):
        done = subprocess.run(
            [sys.executable, "-m", program, "--backend", "spu-cheetah", "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and f"mpc.spu.{program[4:]}" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["spu-semi2k", "spu-cheetah"])
def test_every_variant_runs_under_spu(tmp_path, backend):
    out = tmp_path / "run"
    argv = [
        "--arch",
        "all",
        "--preset",
        "tiny",
        "--backend",
        backend,
        "--no-plots",
        "--out",
        str(out),
        "--timeout",
        "600",
    ]
    assert bench_main(argv) == 0
    rows = pd.read_csv(out / "results.csv")
    client = rows[(rows.party == "client") & (rows.category == TOTAL)]
    assert len(client) == len(VARIANTS)
    assert (client.max_abs_logit_error <= SPU_ATOL).all() and (client.top1_match == 1.0).all()


def test_crypten_backend_flag_is_dropped_before_the_crypten_programs():
    from mpc.spu import spu_dispatch

    assert spu_dispatch("client", ["--backend", "crypten", "--port", "1"]) == (
        ["--port", "1"],
        None,
    )
    assert spu_dispatch("server", ["--backend=crypten"]) == ([], None)
    assert spu_dispatch("server", ["--port", "1"]) == (["--port", "1"], None)
