"""The model family: shapes, parameter counts per architecture, and the GPT-2 reference."""

from __future__ import annotations

import pytest
import torch

from models.config import VARIANTS, ModelConfig, resolve_config
from models.gpt import GPT, Softmax
from models.ops import TORCH_OPS, causal_keep, fill_masked
from tests.conftest import assert_close


def tiny(arch: str, **changes) -> ModelConfig:
    return resolve_config(arch, "tiny", **changes)


def expected_param_count(cfg: ModelConfig) -> int:
    """Parameter count written out from the architecture description, not from the code."""
    d, V, T, H = cfg.n_embd, cfg.vocab_size, cfg.block_size, cfg.n_head
    norm = 2 * d if cfg.norm == "layernorm" else 0
    total = V * d + T * d + norm  # token and position embeddings (LM head tied), final norm
    for layer in range(cfg.n_layer):
        total += norm + (3 * d * d + 3 * d) + (d * d + d)  # ln_1, c_attn, c_proj
        total += H * T if cfg.attn_temperature else 0
        if layer >= cfg.n_layer - cfg.pruned_ffn_layers:
            continue  # pruned: no ln_2, no FFN, no scalars
        total += norm
        if cfg.ffn_form == "fused":
            total += d * d + d
            outputs = [d]
        else:
            hidden = cfg.ffn_mult * d
            total += (d * hidden + hidden) + (hidden * d + d)
            outputs = [hidden, d]
        if cfg.ffn_weight_norm == "weight":
            total += sum(outputs)  # one gain per output unit of each FFN linear
        total += 2 if cfg.ffn_scaled else 0  # beta and 1/alpha
    return total


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_forward_shapes_and_one_hot_equals_ids(arch):
    cfg = tiny(arch)
    model = GPT(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    attention: list[torch.Tensor] = []
    with torch.no_grad():
        logits = model(tokens, attention)
        one_hot = torch.nn.functional.one_hot(tokens, cfg.vocab_size).float()
        last = model(one_hot, last_only=True)
    assert logits.shape == (2, cfg.block_size, cfg.vocab_size)
    assert len(attention) == cfg.n_layer
    assert attention[0].shape == (2, cfg.n_head, cfg.block_size, cfg.block_size)
    assert_close(last[:, 0], logits[:, -1], 1e-5, f"{arch}: one-hot last-token logits")
    rows = attention[-1].sum(-1)
    assert_close(rows, torch.ones_like(rows), 1e-5, "attention rows sum to one")
    future = attention[0].triu(diagonal=1)
    assert future.max() < 1e-20, "causal mask lets a query see a future key"


@pytest.mark.parametrize("arch", list(VARIANTS))
@pytest.mark.parametrize("n_layer", [2, 4])
@pytest.mark.parametrize("sharing", ["layer_head", "head"])
def test_parameter_count_matches_architecture(arch, n_layer, sharing):
    """Training-only thresholds: L x H (the paper's text) or H shared by every layer (the
    released code)."""
    cfg = tiny(arch, n_layer=n_layer, entropy_thresholds=sharing)
    model = GPT(cfg)
    assert model.num_params() == expected_param_count(cfg)
    rows = cfg.n_layer if sharing == "layer_head" else 1
    thresholds = rows * cfg.n_head if cfg.entropy_reg else 0
    assert model.num_params(include_training_only=True) == expected_param_count(cfg) + thresholds


def test_fused_ffn_is_d_by_d_and_pruned_layers_have_no_ffn():
    cfg = tiny("sm+scfuffn+prune", n_layer=4)
    model = GPT(cfg)
    blocks = model.transformer.h
    assert tuple(blocks[0].mlp.c_fc.weight.shape) == (cfg.n_embd, cfg.n_embd)
    assert [cfg.has_ffn(i) for i in range(4)] == [True, True, False, False]
    assert not list(blocks[3].mlp.parameters()) and not list(blocks[3].ffn_residual.parameters())
    assert {n for n, _ in blocks[0].ffn_residual.named_parameters()} == {
        "residual_gain",
        "ffn_gain",
    }


def test_pruned_layer_passes_the_residual_stream_through():
    cfg = tiny("sm+scfuffn+prune", n_layer=2, pruned_ffn_layers=2)
    block = GPT(cfg).transformer.h[1]
    x = torch.randn(1, 4, cfg.n_embd)
    with torch.no_grad():
        expected = x + block.attn(x)
        assert_close(block(x), expected, 1e-6, "pruned block = attention sub-block only")


def _hf_reference(cfg: ModelConfig):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=cfg.layer_norm_eps,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(hf_config).eval()


@pytest.mark.parametrize("n_layer, qk_scale", [(1, 1), (3, 1), (3, 32)])
def test_baseline_equals_huggingface_gpt2(n_layer, qk_scale):
    """GPT-2 masks exactly; so do we. With q and k weights x32 (attention logits x1024) some rows
    lie entirely below -64: the former finite fill (-64) gave those rows' weight to future keys
    (0.55 logit error here, 0.78 at x64); exact masking: 8e-7."""
    from models.hf import load_hf_gpt2_state_dict

    cfg = tiny("baseline", n_layer=n_layer)
    reference = _hf_reference(cfg)
    with torch.no_grad():  # GPT-2 init has zero biases and unit LN gains: perturb them all
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for block in reference.transformer.h:  # q and k are the first 2C columns of c_attn
            block.attn.c_attn.weight[:, : 2 * cfg.n_embd] *= qk_scale
    model = load_hf_gpt2_state_dict(reference.state_dict(), cfg)
    tokens = torch.randint(0, cfg.vocab_size, (3, cfg.block_size))
    with torch.no_grad():
        expected = reference(tokens).logits
        actual = model(tokens)
    assert_close(actual, expected, 1e-5, f"baseline logits vs GPT2LMHeadModel, q, k x{qk_scale}")


def _rows_far_below(length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(8, 2, T, T) logits: kept entries N(0, 9) around row offsets from -1 down to -1e4, future
    entries +50 (above every kept one); and the causal keep."""
    keep = causal_keep(length)
    generator = torch.Generator().manual_seed(0)
    offsets = -torch.logspace(0, 4, 8).reshape(-1, 1, 1, 1)
    kept = torch.randn(8, 2, length, length, generator=generator) * 3 + offsets
    return torch.where(keep.bool(), kept, torch.full_like(kept, 50.0)), keep


def test_masking_is_exact_for_rows_far_below_the_fill():
    """No future weight above 1e-6 for rows with logits down to -1e4, whatever the fill (the
    default and the former -64); every row equals the softmax of its kept prefix alone."""
    scores, keep = _rows_far_below()
    length = keep.size(0)
    expected = torch.zeros(scores.shape, dtype=torch.float64)
    for i in range(length):
        expected[..., i, : i + 1] = torch.softmax(scores[..., i, : i + 1].double(), dim=-1)
    for fill in (ModelConfig().mask_value, -64.0):
        probs = TORCH_OPS.softmax(fill_masked(scores, keep, fill), keep=keep)
        assert probs.masked_select(keep == 0).abs().max() <= 1e-6, f"fill {fill}"
        assert_close(probs, expected, 1e-6, f"masked softmax, fill {fill}")
    # the former finite fill alone: rows below -64 gave their attention to the future keys
    leaked = torch.softmax(fill_masked(scores, keep, -64.0), dim=-1).masked_fill(keep == 1, 0)
    assert leaked.sum(-1).max() > 0.99


def test_models_with_the_former_fill_give_the_same_results(monkeypatch):
    """A checkpoint from before exact masking holds mask_value = -64: where that fill was exact
    (every row keeps a logit above it, as in any trained model) the logits are unchanged."""
    for arch in ("baseline", "aero"):
        cfg = tiny(arch, mask_value=-64.0)
        torch.manual_seed(0)
        model = GPT(cfg).eval()
        tokens = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
        with torch.no_grad():
            exact = model(tokens)
            with monkeypatch.context() as patch:  # the former softmax: the fill was the mask
                patch.setattr(
                    Softmax, "forward", lambda self, scores, keep=None: scores.softmax(-1)
                )
                former = model(tokens)
        assert_close(exact, former, 1e-6, f"{arch}: exact masking vs the former -64 fill")


def test_hf_state_dict_with_an_untied_head_is_rejected():
    """It once dropped `lm_head.weight` unconditionally: an untied head then loaded without error
    and gave wrong logits."""
    from models.hf import HFWeightsError, load_hf_gpt2_state_dict

    cfg = tiny("baseline")
    state = dict(_hf_reference(cfg).state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 0.01
    with pytest.raises(HFWeightsError, match="not tied"):
        load_hf_gpt2_state_dict(state, cfg)


def test_hf_state_dict_with_wrong_shape_is_rejected():
    from models.hf import HFWeightsError, load_hf_gpt2_state_dict

    cfg = tiny("baseline")
    state = _hf_reference(cfg).state_dict()
    with pytest.raises(HFWeightsError, match="does not fit"):
        load_hf_gpt2_state_dict(state, cfg.replace(n_embd=64))


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_parameter_count_from_the_config_alone(arch):
    """`ModelConfig.n_params` (the client's size check before building a skeleton) counts the
    inference model's parameters exactly."""
    from mpc.session.secure_model import inference_model

    for preset in ("tiny", "small"):
        cfg = resolve_config(arch, preset)
        assert cfg.n_params == sum(p.numel() for p in inference_model(cfg).parameters())
