"""The analytic cost model against real sessions: measured bytes and rounds equal the model.

Sessions are real server / dealer / client processes on 127.0.0.1 serving random tiny weights;
every (layer, category) row of both parties, every generation step, must equal
`mpc.cost.walk.predict_costs`. The model is exact for every category, the TTP server's dealer
traffic included (its sys.getsizeof sizes are computed as CrypTen computes them), so the check is
equality; the fast tests pin the composed formulas to the cost table in the shared notes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.config import VARIANTS, resolve_config
from mpc.approx import PROFILES, ApproxConfig
from mpc.cost.primitives import CrypTenCosts, ttp_request_bytes
from mpc.cost.walk import gelu, layer_norm, predict_costs, softmax
from mpc.session.local import local_parties, wait_for_json

# ---- composed formulas against figures measured on CrypTen 0.4.1 (no MPC run) ---------------


def per_element(cost, elements: int) -> tuple[float, float]:
    return cost.bytes / elements, cost.rounds


@pytest.fixture
def client_profile():
    return lambda **approx: CrypTenCosts(ApproxConfig(**approx), "tfp", "client")


def test_primitive_costs_match_the_notes(client_profile):
    p, n = client_profile(), 1000
    assert per_element(p.mul((n,), (n,)), n) == (32, 1)
    assert per_element(p.square((n,)), n) == (16, 1)
    assert p.matmul((128, 768), (768, 64)).bytes == 16 * (128 * 768 + 768 * 64)
    assert per_element(p.ltz((n,)), n) == (432, 8)
    assert per_element(p.relu((n,)), n) == (464, 9)
    assert per_element(p.exp((n,), 8), n) == (128, 8)
    assert per_element(p.reciprocal((n,), "NR", 10, 8), n) == (608, 28)
    assert per_element(p.inv_sqrt((n,), 3, 8), n) == (368, 17)


def test_function_costs_match_the_notes(client_profile):
    shape, n = (1, 128, 3072), 128 * 3072
    assert per_element(gelu(client_profile(gelu_form="tanh"), shape), n) == (832, 26)
    assert per_element(gelu(client_profile(gelu_form="erf"), shape), n) == (784, 35)
    assert per_element(gelu(client_profile(gelu_form="poly"), shape), n) == (1072, 21)
    scores, n = (1, 12, 128, 128), 12 * 128 * 128
    stock, row_max = client_profile(), client_profile().max_log_reduction(scores)
    assert round(softmax(stock, scores).bytes / n) == 1488
    assert softmax(stock, scores).rounds == 116
    assert (round(row_max.bytes / n), row_max.rounds) == (1340, 79)
    without_max = softmax(stock, scores).bytes - row_max.bytes
    assert round(without_max / n) == 149
    max_free = softmax(client_profile(softmax_form="max_free"), scores)
    assert (round(max_free.bytes / n), max_free.rounds) == (165, 38)  # mpc.ops docstring
    norm = layer_norm(client_profile(sqrt_iterations=3), (1, 16, 768))
    assert per_element(norm, 16 * 768) == (49.5, 20)


def test_range_reduced_layernorm_costs(client_profile):
    """mpc.forms.layernorm's docstrings: 93.4 B/elem and 28 rounds at C = 768, T = 16 (5 Newton
    steps), against 49.7 and 26 for public_scale; 3 steps save 6 rounds; the packed comparison
    (optimized profile) makes its 21 thresholds cheaper."""
    shape, n = (1, 16, 768), 16 * 768
    ranged = layer_norm(client_profile(layernorm_form="range_reduced"), shape)
    public = layer_norm(client_profile(), shape)
    assert (round(ranged.bytes / n, 1), ranged.rounds) == (93.4, 28)
    assert (round(public.bytes / n, 1), public.rounds) == (49.7, 26)
    fewer = layer_norm(client_profile(layernorm_form="range_reduced", sqrt_iterations=3), shape)
    assert fewer.rounds == 22
    packed = layer_norm(client_profile(layernorm_form="range_reduced", comparison="packed"), shape)
    assert (round(packed.bytes / n, 1), packed.rounds) == (84.0, 28)


def test_ttp_dealer_traffic_is_charged_to_the_server_only():
    approx, n = ApproxConfig(), 1000
    server = CrypTenCosts(approx, "ttp", "server")
    client = CrypTenCosts(approx, "ttp", "client")
    tfp_server = CrypTenCosts(approx, "tfp", "server")
    assert client.mul((n,), (n,)) == tfp_server.mul((n,), (n,))
    dealt = server.mul((n,), (n,))
    assert dealt.bytes == 32 * n + ttp_request_bytes((n,)) and dealt.rounds == 1 + 3
    assert 8 * n < ttp_request_bytes((n,)) < 8 * n + 300  # "about +8 B per triple element"
    cfg = resolve_config("baseline", "tiny")
    both = [predict_costs(cfg, approx, 10, "tfp", party) for party in ("server", "client")]
    assert both[0] == both[1]


# ---- real sessions ---------------------------------------------------------------------------

SERVER_FILE_WAIT_S = 20.0


def server_flags(approx: dict) -> list[str]:
    return [
        arg for key, value in approx.items() for arg in ("--" + key.replace("_", "-"), str(value))
    ]


def wait_for(path: Path) -> dict:
    """The server writes its record just after the client has its answer: wait for it."""
    return wait_for_json(path, SERVER_FILE_WAIT_S, "the server")


def run_session(tmp_path, arch: str, dealer: str, approx: dict, queries) -> list[tuple]:
    """One server (random tiny weights of `arch`) answering each query (prompt length, new
    tokens, all positions); returns (query, client steps, server steps) per query."""
    measure = tmp_path / "measure"
    args = ("--random-arch", arch, "--preset", "tiny", "--measure-dir", str(measure))
    answers = []
    with local_parties(None, dealer, server_args=(*args, *server_flags(approx))) as parties:
        for number, (length, new_tokens, all_positions) in enumerate(queries, start=1):
            prompt = tmp_path / f"prompt-{number}.json"
            prompt.write_text(json.dumps([(7 * i + 3) % 500 for i in range(length)]))
            flags = ["--tokens", str(prompt), "--max-new-tokens", str(new_tokens)]
            record = parties.client(*flags, *(["--all-positions"] if all_positions else []))
            server = wait_for(measure / f"server-{number}.json")
            answers.append(((length, new_tokens, all_positions), record["steps"], server["steps"]))
    return answers


def mismatches(measured_ops: list[dict], predicted: dict) -> list[str]:
    measured = {(op["layer"], op["category"]): (op["bytes"], op["rounds"]) for op in measured_ops}
    return [
        f"{key}: measured {measured.get(key)} predicted {predicted.get(key)}"
        for key in sorted(set(measured) | set(predicted))
        if measured.get(key) != predicted.get(key)
    ]


def check_session(tmp_path, arch: str, dealer: str, approx: dict, queries) -> None:
    cfg, settings = resolve_config(arch, "tiny"), ApproxConfig(**approx)
    for query, client_steps, server_steps in run_session(tmp_path, arch, dealer, approx, queries):
        length, new_tokens, all_positions = query
        assert len(client_steps) == len(server_steps) == new_tokens
        for step in range(new_tokens):
            for party, steps in (("client", client_steps), ("server", server_steps)):
                predicted = predict_costs(
                    cfg, settings, length + step, dealer, party, all_positions
                )
                wrong = mismatches(steps[step]["ops"], predicted)
                where = f"{arch} {dealer} {approx} {party}, query {query}, step {step}"
                assert not wrong, where + ":\n  " + "\n  ".join(wrong)


OPTIMIZED = PROFILES["optimized"]

# Every category and op form at least once: LayerNorm, each GELU form's path (poly, tanh through
# the sigmoid), relu, both softmax forms (stock with its one-entry shortcut at T = 1), both kinds
# of "scaling", pruned layers, fused FFNs, all-positions reveal, both dealers, both parties.
DEFAULT_SESSIONS = {
    "baseline-ttp": ("baseline", "ttp", {}, [(10, 2, False)]),
    "baseline-tfp-tanh-maxfree": (
        "baseline",
        "tfp",
        {"gelu_form": "tanh", "softmax_form": "max_free"},
        [(9, 1, False)],
    ),
    "sm+ln+r-ttp-allpositions": ("sm+ln+r", "ttp", {}, [(6, 1, True)]),
    "aero-ttp-maxfree": ("aero", "ttp", {"softmax_form": "max_free"}, [(11, 1, False)]),
    "sm+scfuffn+prune-tfp-from1": ("sm+scfuffn+prune", "tfp", {}, [(1, 2, False)]),
    # The optimized profile (tests/test_optimized.py covers ttp with a trained baseline).
    "sm+ln+r-tfp-optimized-allpositions": ("sm+ln+r", "tfp", OPTIMIZED, [(6, 1, True)]),
    "aero-ttp-optimized-from1": ("aero", "ttp", OPTIMIZED, [(1, 2, False)]),
    # The range-reduced LayerNorm, with CrypTen's comparison and with the packed one.
    "baseline-ttp-rangeln": (
        "baseline",
        "ttp",
        {"layernorm_form": "range_reduced"},
        [(7, 2, False)],
    ),
    "sm+ln+r-ttp-optimized-rangeln": (
        "sm+ln+r",
        "ttp",
        {**OPTIMIZED, "layernorm_form": "range_reduced"},
        [(5, 1, True)],
    ),
}


@pytest.mark.parametrize("name", list(DEFAULT_SESSIONS))
def test_measured_costs_equal_the_model(name, tmp_path):
    arch, dealer, approx, queries = DEFAULT_SESSIONS[name]
    check_session(tmp_path, arch, dealer, approx, queries)


def _slow_cases() -> list:
    cases = []
    for arch in VARIANTS:
        gelu_forms = (
            ("poly", "tanh", "erf") if resolve_config(arch, "tiny").ffn_act == "gelu" else ("poly",)
        )
        for gelu_form in gelu_forms:
            for softmax_form in ("stock", "max_free"):
                approx = {"gelu_form": gelu_form, "softmax_form": softmax_form}
                cases.append(pytest.param(arch, approx, id=f"{arch}-{gelu_form}-{softmax_form}"))
        cases.append(pytest.param(arch, OPTIMIZED, id=f"{arch}-optimized"))
        if resolve_config(arch, "tiny").norm == "layernorm":
            ranged = {"layernorm_form": "range_reduced"}
            cases.append(pytest.param(arch, ranged, id=f"{arch}-range-reduced-layernorm"))
    other = {"gelu_form": "tanh", "sigmoid_tanh_method": "chebyshev", "reciprocal_method": "log"}
    cases.append(pytest.param("baseline", other, id="baseline-chebyshev-log"))
    return cases


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "approx"), _slow_cases())
def test_every_variant_and_form_costs_equal_the_model(arch, approx, tmp_path):
    check_session(tmp_path, arch, "ttp", approx, [(8, 2, False)])
