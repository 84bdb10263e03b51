"""`mpc.optimized.packed_compare.packed_ltz` against plaintext, stock CrypTen and its own cost formula.

Two real CrypTen parties (and, for TTP, the dealer process) run with
`crypten.mpc.context.run_multiprocess`. One multi-party run per dealer does every check, because
process start-up dominates; parties return plain counts, and the parent does no torch work before
it forks (torch state in a forking parent can hang the children).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from mpc.approx import ApproxConfig
from mpc.compat import import_crypten
from mpc.cost.primitives import CrypTenCosts
from mpc.optimized.packed_compare import (
    _STOCK_LTZ,
    answer_products,
    packed_ltz,
    use_packed_ltz,
    use_radix,
)

crypten = import_crypten()
MPCTensor = crypten.mpc.MPCTensor

SHAPES = [(), (1,), (7,), (64,), (3, 65), (2, 3, 129)]


def packed_ltz_cost(
    shape: tuple[int, ...], dealer: str, party: str, comparison: str = "packed"
) -> tuple[float, float]:
    """(bytes, rounds) the cost model gives one party for one packed comparison of `shape`."""
    cost = CrypTenCosts(ApproxConfig(comparison=comparison), dealer, party).ltz(shape)
    return cost.bytes, cost.rounds


INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
SPECIAL = [0, 1, -1, 2**62, -(2**62), 2**62 - 1, -(2**62) + 1, 2**62 + 1, -(2**62) - 1]
SPECIAL += [INT64_MAX, INT64_MIN, 65536, -65536, 0, 0]
# Share layouts: random (PRZS) shares, and one party holding all-ones low bits, so the carry out
# of bit 62 depends on bit 0 of the other share (the longest propagate chain the tree can see).
# Precision 0 (an unscaled input, such as another comparison's result) is run on random shares.
CASES = [("random", None), ("rank0_ones", None), ("rank1_ones", None), ("random", 0)]


def encoded_values(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Ring elements of every magnitude (random 64-bit values shifted right by 0..63), exact
    zeros, +-1 LSB, values at +-2^62 +- 1 and the ring's extremes, in random positions."""
    count = math.prod(shape)
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(INT64_MIN, INT64_MAX, (count,), generator=generator)
    values >>= torch.randint(0, 64, (count,), generator=generator)
    values[torch.rand(count, generator=generator) < 0.1] = 0
    special = torch.tensor(SPECIAL[:count])
    values[torch.randperm(count, generator=generator)[: len(special)]] = special
    return values.view(shape)


def shared(values: torch.Tensor, layout: str, precision: int | None = None) -> MPCTensor:
    x = crypten.cryptensor(torch.zeros(values.shape), precision=precision)  # random shares of 0
    rank = crypten.communicator.get().get_rank()
    if layout == "random":
        x.share = x.share + values if rank == 0 else x.share
    else:
        ones_rank = 0 if layout == "rank0_ones" else 1
        ones = torch.full(values.shape, INT64_MAX)
        x.share = ones if rank == ones_rank else values - ones  # int64 wraps: shares sum to values
    return x


def mismatches(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a != b).sum())


def max_gap(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a - b).abs().max()) if a.numel() else 0


def same_form(packed: MPCTensor, stock: MPCTensor) -> bool:
    """Type, ptype, share shape and encoder of the result as stock `_ltz` returns them."""
    return (
        type(packed) is type(stock)
        and packed.ptype == stock.ptype
        and packed.share.shape == stock.share.shape
        and packed.encoder.scale == stock.encoder.scale
        and packed.encoder._precision_bits == stock.encoder._precision_bits
    )


def consequences(x: MPCTensor) -> list[torch.Tensor]:
    """Encoded results of CrypTen functions built on `_ltz`."""
    results = [x.relu(), x.sign(), x.abs(), x.lt(x.flip(0) if x.dim() else -x), x.max()]
    if x.dim():
        results.append(x.max(dim=-1)[0])
    return [result.reveal() for result in results]


def party_checks(dealer: str, comparison: str) -> dict:
    """Everything one party can check; returns plain numbers only."""
    torch.set_num_threads(1)
    use_radix(4 if comparison == "packed4" else 2)
    comm = crypten.communicator.get()
    party = "server" if comm.get_rank() == 0 else "client"
    crypten.cfg.communicator.verbose = True
    report = {"wrong_bits": 0, "stock_differs": 0, "form_differs": 0, "gap": 0, "costs": []}
    for seed, shape in enumerate(SHAPES):
        values = encoded_values(shape, seed)
        for layout, precision in CASES:
            x = shared(values, layout, precision)
            comm.reset_communication_stats()
            packed = packed_ltz(x)
            stats = comm.get_communication_stats()
            if layout == "random" and precision is None:
                logged = (stats["bytes"], stats["rounds"])
                predicted = packed_ltz_cost(shape, dealer, party, comparison)
                report["costs"].append((logged, predicted))
            stock = _STOCK_LTZ(x)
            report["wrong_bits"] += mismatches(packed.reveal(), (values < 0).long())
            report["stock_differs"] += mismatches(packed.reveal(), stock.reveal())
            report["form_differs"] += not same_form(packed, stock)
        x = shared(values, "random")
        with use_packed_ltz(False):
            stock_results = consequences(x)
        with use_packed_ltz(True):
            packed_results = consequences(x)
        for stock_result, packed_result in zip(stock_results, packed_results, strict=True):
            report["gap"] = max(report["gap"], max_gap(stock_result, packed_result))
    return report


def two_party_reports(provider: str, comparison: str) -> list[dict] | None:
    """Both parties' reports; run in a fresh interpreter (`reports_in_fresh_process`). CrypTen's
    own TTP server deals here: it learns the radix-4 tree's one request of ours."""
    from crypten.mpc.provider.ttp_provider import TTPServer

    TTPServer.products = lambda server, size, subsets: answer_products(server, size, subsets)
    with crypten.cfg.temp_override({"mpc.provider": provider}):
        run = crypten.mpc.context.run_multiprocess(world_size=2)(party_checks)
        return run(provider.lower(), comparison)


def reports_in_fresh_process(provider: str, comparison: str) -> list[dict] | None:
    """`run_multiprocess` forks its parties from the calling process and, if CrypTen was
    initialized there, re-initializes it afterwards from the environment: inside a pytest
    process where other tests ran CrypTen that re-init waited forever for a peer. A fresh
    interpreter with a clean environment has neither problem."""
    code = (
        "import json, sys; from tests.test_fast_compare import two_party_reports; "
        f"print('REPORTS' + json.dumps(two_party_reports({provider!r}, {comparison!r})))"
    )
    skip = ("WORLD_SIZE", "RANK", "RENDEZVOUS", "DISTRIBUTED_BACKEND", "MASTER_ADDR", "MASTER_PORT")
    env = {key: value for key, value in os.environ.items() if key not in skip}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORTS")]
    assert done.returncode == 0 and lines, f"party run failed:\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len("REPORTS") :])


@pytest.mark.parametrize("comparison", ["packed", "packed4"])
@pytest.mark.parametrize("provider", ["TTP", "TFP"])
def test_packed_ltz_two_parties(provider: str, comparison: str) -> None:
    """Exact against plaintext and stock on every layout and special value, and the bytes and
    rounds each party logs equal the cost model, for both carry trees (radix 2 and 4)."""
    reports = reports_in_fresh_process(provider, comparison)
    assert reports is not None, "a party failed: see the log above"
    for rank, report in enumerate(reports):
        assert report["wrong_bits"] == 0, f"rank {rank}: {report['wrong_bits']} wrong x < 0 bits"
        assert report["stock_differs"] == 0, f"rank {rank}: packed and stock _ltz differ"
        assert report["form_differs"] == 0, f"rank {rank}: result type/encoder differs from stock"
        assert report["gap"] <= 1, f"rank {rank}: relu/sign/max {report['gap']} LSB off stock"
        for shape, (logged, predicted) in zip(SHAPES, report["costs"], strict=True):
            assert logged == predicted, f"rank {rank} {provider} {shape}: logged {logged}"


def test_cost_formula_figures() -> None:
    """78 B/element and 8 rounds online; the TTP server adds its dealer requests."""
    shape = (128, 3072)
    assert packed_ltz_cost(shape, "tfp", "server") == (4992 * 128 * 3072 // 64, 8)
    assert packed_ltz_cost(shape, "ttp", "client") == packed_ltz_cost(shape, "tfp", "client")
    server_bytes, server_rounds = packed_ltz_cost(shape, "ttp", "server")
    assert server_rounds == 8 + 3 * 8
    assert server_bytes > 4992 * 6144 + 8 * (186 * 6144 + 128 * 3072)
    with pytest.raises(ValueError):
        packed_ltz_cost(shape, "ot", "server")


def test_radix4_cost_formula_figures() -> None:
    """57 B/element and 4 rounds online for the radix-4 carry tree."""
    shape = (128, 3072)
    assert packed_ltz_cost(shape, "tfp", "server", "packed4") == (3632 * 128 * 3072 // 64, 4)
    assert packed_ltz_cost(shape, "ttp", "server", "packed4")[1] == 4 + 3 * 4


def test_stock_ltz_restored() -> None:
    assert MPCTensor._ltz is _STOCK_LTZ
    with use_packed_ltz():
        assert MPCTensor._ltz is packed_ltz
        with use_packed_ltz(False):
            assert MPCTensor._ltz is _STOCK_LTZ
        assert MPCTensor._ltz is packed_ltz
    assert MPCTensor._ltz is _STOCK_LTZ
    with pytest.raises(RuntimeError), use_packed_ltz():
        raise RuntimeError("restored even when the block fails")
    assert MPCTensor._ltz is _STOCK_LTZ
