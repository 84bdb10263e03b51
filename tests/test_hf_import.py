"""Real GPT-2 weights: a Hugging Face folder -> project checkpoint -> plaintext and secure logits.

No download: a small GPT-2 is built by transformers from a config (GPT-2's own settings, its
1024-token context included) and saved with save_pretrained, beside a byte-level BPE tokenizer
trained here; `python -m models.hf` turns the folder into a checkpoint, whose logits must equal
transformers' and which `mpc.server` then serves to `mpc.client` with a text prompt.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.data import EOT, load_documents, tokenizer_from_json, train_tokenizer
from models.errors import UserError
from models.hf import main as hf_main
from mpc.session.local import local_parties
from tests.conftest import assert_close

transformers = pytest.importorskip("transformers")

VOCAB, WIDTH, LAYERS, HEADS, CONTEXT = 300, 32, 2, 2, 1024
PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n    return"
SECURE = ("--softmax-form", "tree", "--layernorm-form", "range_reduced")  # valid at T = 1024


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A save_pretrained GPT-2 folder: config.json, model.safetensors, tokenizer.json, and the
    slow tokenizer's vocab.json and merges.txt."""
    folder = tmp_path_factory.mktemp("hf-gpt2")
    tokenizer = train_tokenizer([d.text for d in load_documents(None, max_files=20)], VOCAB)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer._tokenizer)
    fast.save_pretrained(folder)
    tokenizer.save_model(str(folder))  # vocab.json + merges.txt, as GPT-2's slow tokenizer
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2's init has zero biases and unit gains: perturb them all
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.transformer.wte.weight.mul_(20)  # logits of a trained model's spread
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(hf_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "gpt2.pt"
    assert hf_main([str(hf_folder), "--out", str(out)]) == 0
    return out


def hf_logits(folder, ids: list[int]) -> torch.Tensor:
    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_config_and_tokenizer_follow_the_folder(hf_folder, checkpoint):
    loaded = load_checkpoint(checkpoint)
    cfg = loaded.config
    assert (cfg.arch, cfg.ffn_act, cfg.norm) == ("SM+LN+G", "gelu", "layernorm")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (LAYERS, HEADS, WIDTH)
    assert (cfg.block_size, cfg.vocab_size, cfg.layer_norm_eps) == (CONTEXT, VOCAB, 1e-5)
    reference = transformers.AutoTokenizer.from_pretrained(hf_folder)
    ours = tokenizer_from_json(loaded.tokenizer_json)
    assert ours.encode(PROMPT).ids == reference(PROMPT)["input_ids"]
    assert ours.token_to_id(EOT) is not None and loaded.meta["source"] == "huggingface-gpt2"


def test_plaintext_logits_equal_transformers(hf_folder, checkpoint):
    ids = tokenizer_from_json(load_checkpoint(checkpoint).tokenizer_json).encode(PROMPT).ids
    ids = (ids * 40)[:CONTEXT]  # the whole 1024-token context: every position embedding
    model = load_checkpoint(checkpoint).build_model()
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    assert_close(ours, hf_logits(hf_folder, ids), 1e-4, "imported GPT-2 logits vs transformers")


def test_vocab_and_merges_make_the_same_tokenizer(hf_folder, checkpoint, tmp_path):
    slow = tmp_path / "slow"
    shutil.copytree(hf_folder, slow)
    (slow / "tokenizer.json").unlink()
    assert hf_main([str(slow), "--out", str(tmp_path / "slow.pt")]) == 0
    pair = [load_checkpoint(p).tokenizer_json for p in (checkpoint, tmp_path / "slow.pt")]
    ids = [tokenizer_from_json(text).encode(PROMPT).ids for text in pair]
    assert ids[0] == ids[1]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"activation_function": "relu"}, "tanh form"),
        ({"activation_function": "gelu"}, "tanh form"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),
        ({"scale_attn_weights": False}, "scale_attn_weights"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings"),
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"model_type": "gpt_neo"}, "only GPT-2"),
        ({"n_inner": 50}, "n_inner"),
        ({"n_embd": 64}, "does not fit"),
    ],
)
def test_unsupported_settings_are_refused(hf_folder, tmp_path, change, message):
    copy = tmp_path / "copy"
    shutil.copytree(hf_folder, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(UserError, match=message):
        hf_main([str(copy), "--out", str(tmp_path / "out.pt")])
    assert not (tmp_path / "out.pt").exists()


def test_command_line_failure_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    done = subprocess.run(
        [sys.executable, "-m", "models.hf", str(tmp_path), "--out", str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "no model.safetensors" in done.stderr


def test_server_refuses_the_stock_softmax_on_a_1024_context(checkpoint):
    done = subprocess.run(
        [sys.executable, "-m", "mpc.server", "--checkpoint", str(checkpoint), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "softmax_form=stock" in done.stderr and "--softmax-form tree" in done.stderr


def test_secure_query_with_text_prompt_matches_plaintext(hf_folder, checkpoint, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(PROMPT)
    with local_parties(checkpoint, "ttp", server_args=SECURE, logs=str(tmp_path)) as parties:
        record = parties.client("--prompt-file", str(prompt), "--max-new-tokens", "2")
    ids = record["prompt_ids"]
    assert ids == tokenizer_from_json(load_checkpoint(checkpoint).tokenizer_json).encode(PROMPT).ids
    expected = hf_logits(hf_folder, ids + record["generated_ids"])
    for step, revealed in enumerate(record["logits"]):
        position = len(ids) - 1 + step
        actual = torch.tensor(revealed)[-1]
        error = (actual - expected[position]).abs().max().item()
        print(
            f"step {step}: max abs logit error {error:.4f} (max |logit| {expected.abs().max():.1f})"
        )
        assert record["generated_ids"][step] == int(expected[position].argmax()), "top-1"
        assert error < 0.02 * expected[position].abs().max()
    assert record["generated_text"] is not None
