"""The entropy regularizer against a hand computation, and the head-distribution bins."""

from __future__ import annotations

import math

import pytest
import torch

from models.config import resolve_config
from models.entropy import EntropyRegularizer, head_distribution, head_entropies, row_entropy
from tests.conftest import assert_close

T = 4
LOG_T = math.log(T)


def _rows() -> torch.Tensor:
    """Attention (B=1, H=2, T=4, T=4): head 0 one-hot rows (entropy 0); head 1 causal-uniform."""
    one_hot = torch.zeros(T, T)
    one_hot[:, 0] = 1.0
    uniform = torch.tril(torch.ones(T, T))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    return torch.stack([one_hot, uniform]).unsqueeze(0)


def _regularizer(reduction: str, gamma: float, thresholds: list[list[float]]):
    cfg = resolve_config(
        "aero",
        "tiny",
        n_layer=len(thresholds),
        n_head=2,
        entropy_gamma=gamma,
        entropy_reduction=reduction,
        entropy_lambda=0.5,
    )
    reg = EntropyRegularizer(cfg)
    with torch.no_grad():
        reg.thresholds.copy_(torch.tensor(thresholds))
    return reg


def test_row_entropy_of_known_rows():
    entropy = row_entropy(_rows())[0]  # (H, T)
    assert_close(entropy[0], torch.zeros(T), 1e-6, "one-hot rows")
    assert_close(entropy[1], [math.log(i + 1) for i in range(T)], 1e-6, "causal uniform rows")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_regularizer_value_and_gradient_by_hand(reduction):
    # Layer 0 thresholds (0.5, 0.5), layer 1 (0.0, 0.6), gamma 0.2: tol = 0.2 log 4.
    thresholds = [[0.5, 0.5], [0.0, 0.6]]
    reg = _regularizer(reduction, 0.2, thresholds)
    probs = _rows()
    tol = 0.2 * LOG_T
    entropies = {0: [0.0] * T, 1: [math.log(i + 1) for i in range(T)]}
    value, grad = 0.0, [[0.0, 0.0], [0.0, 0.0]]
    for layer in range(2):
        for head in range(2):
            deltas = [e - thresholds[layer][head] * LOG_T for e in entropies[head]]
            kept = [d for d in deltas if abs(d) > tol]  # the dead zone contributes nothing
            scale = 1.0 if reduction == "sum" else 1.0 / T
            value += scale * sum(d * d for d in kept) / 2 / 2  # / H, then / L
            grad[layer][head] = scale * sum(-2 * d * LOG_T for d in kept) / 2 / 2
    # Layer 1 head 0 has threshold 0 and one-hot rows: every delta is 0, inside the dead zone.
    assert grad[1][0] == 0.0
    loss = reg([probs, probs])
    loss.backward()
    assert_close(loss.item(), 0.5 * value, 1e-6, "lambda * penalty")
    assert_close(reg.thresholds.grad, 0.5 * torch.tensor(grad), 1e-6, "d penalty / d theta")


def test_shared_thresholds_are_one_vector_for_every_layer():
    """The released code's sharing: the penalty of each layer uses the same H thresholds, so it
    equals the per-layer regularizer with every row set to that vector, and the shared vector's
    gradient is the sum of the rows' gradients."""
    per_layer = _regularizer("sum", 0.2, [[0.3, 0.6], [0.3, 0.6], [0.3, 0.6]])
    cfg = resolve_config(
        "aero", "tiny", n_layer=3, n_head=2, entropy_lambda=0.5, entropy_thresholds="head"
    )
    shared = EntropyRegularizer(cfg)
    assert tuple(shared.thresholds.shape) == (1, 2)
    with torch.no_grad():
        shared.thresholds.copy_(torch.tensor([[0.3, 0.6]]))
    probs = [_rows(), _rows().flip(1), _rows()]  # head 0 uniform in layer 1, one-hot elsewhere
    expected, got = per_layer(probs), shared(probs)
    expected.backward()
    got.backward()
    assert_close(got.item(), expected.item(), 1e-6, "shared vs per-layer penalty")
    assert_close(shared.thresholds.grad[0], per_layer.thresholds.grad.sum(0), 1e-6, "gradient")
    assert per_layer.thresholds.grad.abs().sum() > 0


def test_dead_zone_gives_zero_penalty_and_gradient():
    reg = _regularizer("sum", 0.2, [[0.0, 0.0]])
    one_hot = _rows()[:, :1].expand(1, 2, T, T).clone().requires_grad_(True)
    loss = reg([one_hot])
    loss.backward()
    assert loss.item() == 0.0
    assert reg.thresholds.grad.abs().max() == 0.0


def test_gradient_reaches_the_attention_probabilities():
    reg = _regularizer("mean", 0.0, [[0.9, 0.9]])
    logits = torch.randn(1, 2, T, T, requires_grad=True)
    reg([torch.softmax(logits, -1)]).backward()
    assert logits.grad.abs().sum() > 0


def test_head_distribution_bins():
    uniform = torch.full((3, 4), 2.0)  # every head equal: all in the top bin [3m/4, m]
    assert head_distribution(uniform).tolist() == [0.0, 0.0, 0.0, 1.0]
    spread = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 0.99, 2.5, 3.99]])  # m = 4
    assert head_distribution(spread).tolist() == [0.25, 0.125, 0.25, 0.375]


def test_head_entropies_uniform_and_one_hot():
    entropies = head_entropies([_rows(), _rows()])
    expected_uniform = sum(math.log(i + 1) for i in range(T)) / T
    assert_close(entropies, [[0.0, expected_uniform]] * 2, 1e-6, "mean entropy per head")
    with pytest.raises(ValueError, match="all head entropies are zero"):
        head_distribution(torch.zeros(2, 2))
