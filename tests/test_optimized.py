"""The optimized protocol profile, two real parties and a dealer: each optimization on its own
against plaintext and the analytic cost model, and weight masks reused across queries."""

from __future__ import annotations

import json

import pytest
import torch

from bench.collect import collect
from models.checkpoint import load_checkpoint
from models.config import resolve_config
from mpc.approx import PROFILES, ApproxConfig, profile_name
from mpc.cost.walk import predict_costs
from mpc.optimized.weight_masks import masked_weight_names
from mpc.session.local import local_parties
from mpc.session.secure_model import inference_model
from tests.test_costmodel import mismatches, server_flags, wait_for
from tests.test_secure_inference import LOGIT_TOLERANCE, plaintext_logits, prompt_ids

# Each knob alone, on the trained tiny baseline (LayerNorm, GELU, softmax: every op it touches).
KNOBS = {
    "weight_masks": {"weight_masks": True},
    "fast_matmul": {"fast_matmul": True},
    "packed_comparison": {"comparison": "packed"},
    "radix4_comparison": {"comparison": "packed4"},
    "tree_softmax": {"softmax_form": "tree"},
    "pair_channel": {"pair_channel": True},
    "offline_dealer": {"offline_dealer": True},
    "bracketed_reciprocal": {"softmax_form": "tree", "softmax_reciprocal": "bracketed"},
    "gelu_poly_parallel": {"gelu_form": "poly_parallel"},
    "fused_relu": {"fused_relu": True, "pair_channel": True, "comparison": "packed4"},
    "gelu_poly_relu": {"gelu_form": "poly_relu"},
    "fold_gains": {"fold_gains": True},
    "bracketed_layernorm": {"layernorm_form": "bracketed"},
}
KNOB_ARCH = {"fold_gains": "aero"}  # the scaled FFN's gains: a softmax-only model


def ask(parties, tmp_path, ids: list[int], number: int) -> dict:
    prompt = tmp_path / f"prompt-{number}.json"
    prompt.write_text(json.dumps(ids))
    return parties.client("--tokens", str(prompt))


def check_logits(record: dict, checkpoint, ids: list[int], what: str) -> None:
    expected = plaintext_logits(checkpoint, ids)[-1]
    actual = torch.tensor(record["logits"][0])[-1]
    error = (actual - expected).abs().max().item()
    assert error < LOGIT_TOLERANCE, f"{what}: max abs logit error {error:.4f}"
    top2 = expected.topk(2).values
    if top2[0] - top2[1] > 2 * LOGIT_TOLERANCE:  # a near-tie may flip within the tolerance
        assert record["generated_ids"][0] == int(expected.argmax()), f"{what}: top-1"


def check_costs(
    record: dict, server: dict, approx: ApproxConfig, length: int, what: str, arch="baseline"
) -> None:
    cfg = resolve_config(arch, "tiny")
    for party, steps in (("client", record["steps"]), ("server", server["steps"])):
        predicted = predict_costs(cfg, approx, length, "ttp", party)
        wrong = mismatches(steps[0]["ops"], predicted)
        assert not wrong, f"{what} {party}:\n  " + "\n  ".join(wrong)


@pytest.mark.parametrize("knob", list(KNOBS))
def test_each_optimization_alone(knob, tiny_checkpoints, tiny_data, tmp_path):
    arch = KNOB_ARCH.get(knob, "baseline")
    checkpoint, ids = tiny_checkpoints[arch], prompt_ids(tiny_data)
    approx = ApproxConfig(**KNOBS[knob])
    measure = tmp_path / "measure"
    flags = ("--measure-dir", str(measure), *server_flags(KNOBS[knob]))
    with local_parties(checkpoint, "ttp", server_args=flags, logs=str(tmp_path)) as parties:
        record = ask(parties, tmp_path, ids, 1)
        server = wait_for(measure / "server-1.json")
    profile_knob = set(KNOBS[knob]) & set(PROFILES["optimized"])  # else a form choice
    assert profile_name(approx) == ("custom" if profile_knob else "stock")
    assert record["approx"] == approx.to_dict(), "the record states the knobs that ran"
    check_logits(record, checkpoint, ids, knob)
    check_costs(record, server, approx, len(ids), knob, arch)
    if knob == "offline_dealer":  # the server's dealer requests all went before the query
        offline = server["steps"][0]["offline"]
        assert offline["requests"] > 0 and offline["rounds"] == 3 and offline["bytes"] > 0


def test_weight_masks_are_uploaded_once_and_reused(tiny_checkpoints, tiny_data, tmp_path):
    """Three queries to one server under the optimized profile: the dealer gets the server's
    mask shares B in the first session only (8 B per weight element), every query is right,
    and each costs what the model predicts with masks reused (no W - B opened)."""
    checkpoint = tiny_checkpoints["baseline"]
    approx = ApproxConfig(**PROFILES["optimized"])
    measure = tmp_path / "measure"
    flags = ("--measure-dir", str(measure), "--protocol", "optimized")
    prompts = [prompt_ids(tiny_data, length) for length in (10, 6, 10)]
    with local_parties(checkpoint, "ttp", server_args=flags, logs=str(tmp_path)) as parties:
        records = [ask(parties, tmp_path, ids, n) for n, ids in enumerate(prompts, start=1)]
        servers = [wait_for(measure / f"server-{n}.json") for n in (1, 2, 3)]
    loaded = load_checkpoint(checkpoint)
    model = inference_model(loaded.config, loaded.model_state)
    weights = sum(model.get_parameter(name).numel() for name in masked_weight_names(model))
    setups = [server["steps"][0].get("mask_setup", {}).get("bytes", 0.0) for server in servers]
    assert setups == [8.0 * weights, 0.0, 0.0]
    assert profile_name(ApproxConfig.from_dict(records[0]["approx"])) == "optimized"
    # bench.collect (the container run's report) labels the rows by the profile the records
    # name; it once wrote "stock" for every run.
    folder = tmp_path / "collected"
    for party, record in (("client", records[0]), ("server", servers[0])):
        (folder / party).mkdir(parents=True)
        (folder / party / f"{party}-1.json").write_text(json.dumps(record))
    assert {row.protocol for row in collect(folder, "tiny", "loopback", False)} == {"optimized"}
    for number, (ids, record, server) in enumerate(zip(prompts, records, servers, strict=True)):
        check_logits(record, checkpoint, ids, f"query {number + 1}")
        check_costs(record, server, approx, len(ids), f"query {number + 1}")


def test_max_free_softmax_is_refused_when_logits_leave_its_bound():
    """The server's plaintext check on calibration text: random small weights stay inside the
    bound; the same model with its query/key weights scaled up does not."""
    from models.checkpoint import random_checkpoint
    from mpc.session.secure_model import check_softmax_bound

    cfg = resolve_config("baseline", "tiny")
    model = inference_model(cfg, random_checkpoint(cfg).model_state)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    check_softmax_bound(model, tokens, bound=2.5)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(40.0)
    with pytest.raises(ValueError, match="max_free needs every attention row max"):
        check_softmax_bound(model, tokens, bound=2.5)
