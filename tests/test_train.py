"""Training lowers validation loss; checkpoints round-trip, resume, and fail clearly when corrupt."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import train as trainer
from models.checkpoint import CheckpointError, load_checkpoint
from models.gpt import GPT
from tests.conftest import TINY_FILES, TINY_VOCAB, assert_close

REPO = Path(__file__).resolve().parents[1]


def _train(tmp_path: Path, data_dir: str, arch: str, steps: int, *extra: str) -> tuple[int, Path]:
    out = tmp_path / f"{arch}.pt"
    argv = [
        "--arch",
        arch,
        "--preset",
        "tiny",
        "--steps",
        str(steps),
        "--eval-interval",
        "40",
        "--eval-batches",
        "4",
        "--batch-size",
        "16",
        "--data-dir",
        data_dir,
        "--max-files",
        str(TINY_FILES),
        "--out",
        str(out),
        *extra,
    ]
    return trainer.main(argv), out


@pytest.mark.parametrize("arch", ["baseline", "aero"])
def test_tiny_training_lowers_validation_loss(tmp_path, data_dir, tiny_data, arch):
    code, out = _train(tmp_path, data_dir, arch, 80)
    assert code == 0
    checkpoint = load_checkpoint(out)
    settings = trainer.TrainSettings(eval_batches=4, batch_size=16)
    torch.manual_seed(1337)
    untrained = GPT(checkpoint.config)
    before = trainer.evaluate(untrained, tiny_data, settings, checkpoint.config.block_size)
    after = checkpoint.meta["eval_loss"]
    assert after < before - 0.5, f"eval loss {before:.3f} -> {after:.3f}"
    assert checkpoint.meta["status"] == "finished"
    assert checkpoint.meta["tokens_seen"] == 80 * 16 * 16
    assert math.isclose(checkpoint.meta["eval_ppl"], math.exp(after))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradient_accumulation_gives_the_whole_batch_gradient(tiny_data, reduction):
    """K micro-batches add up to the gradient of one batch, entropy penalty included (the paper's
    sum reduction adds as is, a mean is weighted by the micro-batch's share)."""
    from models.config import resolve_config

    cfg = resolve_config("aero", "tiny", vocab_size=tiny_data.vocab_size)
    cfg = cfg.replace(entropy_reduction=reduction, entropy_lambda=0.05)
    x, y = tiny_data.batch("train", 12, 16, torch.Generator().manual_seed(0))
    gradients, losses = [], []
    for accum in (1, 3, 4):
        torch.manual_seed(0)
        model = GPT(cfg)
        settings = trainer.TrainSettings(batch_size=12, grad_accum=accum)
        losses.append(trainer.accumulate_gradients(model, x, y, settings, "fp32"))
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert losses[2] == pytest.approx(losses[0], rel=1e-6)
    for name, whole in gradients[0].items():
        assert whole.abs().sum() > 0, name  # the penalty reaches the thresholds too
        for split in gradients[1:]:
            torch.testing.assert_close(split[name], whole, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("accum", [1, 3, 4])
def test_released_trainer_normalization_is_the_sum_over_k_micro_batches(tiny_data, accum):
    """entropy_accumulation="average" (the released trainer: loss / K, mean over devices) gives
    the summed penalty's gradient divided by K: the thresholds' gradient (penalty only) is the
    sum's / K, and every gradient equals the sum's at lambda / K (lambda_ours = lambda_theirs /
    (K x devices); the devices are in tests/test_distributed.py)."""
    from models.config import resolve_config

    cfg = resolve_config("aero", "tiny", vocab_size=tiny_data.vocab_size, entropy_lambda=0.05)
    x, y = tiny_data.batch("train", 12, 16, torch.Generator().manual_seed(0))
    settings = trainer.TrainSettings(batch_size=12, grad_accum=accum)

    def gradients(**changes) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = GPT(cfg.replace(**changes))
        trainer.accumulate_gradients(model, x, y, settings, "fp32")
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    summed = gradients()
    averaged = gradients(entropy_accumulation="average")
    equivalent = gradients(entropy_lambda=0.05 / accum)
    theta = "entropy_reg.thresholds"
    assert summed[theta].abs().sum() > 0
    torch.testing.assert_close(averaged[theta] * accum, summed[theta], rtol=1e-5, atol=1e-9)
    for name, value in averaged.items():
        torch.testing.assert_close(value, equivalent[name], rtol=1e-4, atol=1e-7)


def test_evaluations_record_the_attention_entropy_trajectory(tmp_path, data_dir, tiny_data):
    code, out = _train(tmp_path, data_dir, "sm+g", 80, "--grad-accum", "2")
    assert code == 0
    history = load_checkpoint(out).meta["history"]
    assert [point["step"] for point in history] == [40, 80]
    assert [point["tokens"] for point in history] == [40 * 16 * 16, 80 * 16 * 16]
    for point in history:
        fractions = point["entropy_fraction_by_layer"]
        assert len(fractions) == 2 and all(0 < f <= 1 for f in fractions)
        heads = torch.tensor(point["entropy_fraction_by_head"])  # (L, H) for the head bins
        assert heads.shape == (2, 2)
        assert_close(heads.mean(1), fractions, 1e-4, "layer fraction = mean of its heads")
    assert history[-1]["eval_loss"] == load_checkpoint(out).meta["eval_loss"]


def test_checkpoint_round_trips(tmp_path, data_dir, tiny_data):
    code, out = _train(tmp_path, data_dir, "sm+scfuffn", 5)
    assert code == 0
    checkpoint = load_checkpoint(out)
    model = checkpoint.build_model()
    tokens = torch.randint(0, checkpoint.config.vocab_size, (1, 8))
    reloaded = load_checkpoint(out).build_model()
    with torch.no_grad():
        assert torch.equal(model(tokens), reloaded(tokens))
    assert checkpoint.config.vocab_size == tiny_data.vocab_size == TINY_VOCAB
    assert checkpoint.tokenizer_json == tiny_data.tokenizer_json
    assert {"git_revision", "tokens_seen", "eval_loss", "train_settings", "data"} <= set(
        checkpoint.meta
    )
    assert checkpoint.meta["data"]["corpus_sha256"] == tiny_data.manifest["corpus_sha256"]


def test_resume_continues_from_the_saved_step(tmp_path, data_dir, tiny_data):
    _train(tmp_path, data_dir, "sm+ln+r", 40)
    code, out = _train(tmp_path, data_dir, "sm+ln+r", 60, "--resume")
    assert code == 0
    meta = load_checkpoint(out).meta
    assert meta["step"] == 60 and meta["tokens_seen"] == 60 * 16 * 16


def test_non_finite_loss_ends_with_diverged_status(tmp_path, data_dir, tiny_data, monkeypatch):
    real_init = GPT.__init__

    def poisoned_init(self, cfg, *args, **kwargs):  # a weight that makes the first loss NaN
        real_init(self, cfg, *args, **kwargs)
        with torch.no_grad():
            self.transformer.wpe.weight[0, 0] = float("nan")

    monkeypatch.setattr(GPT, "__init__", poisoned_init)
    code, out = _train(tmp_path, data_dir, "sm", 10)
    assert code == trainer.EXIT_DIVERGED
    assert load_checkpoint(out).meta["status"] == "diverged"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable"),
        (lambda p: p.write_bytes(b"garbage" * 100), "not a readable"),
        (lambda p: torch.save({"format": "other"}, p), "not an aero-pi checkpoint"),
    ],
)
def test_corrupt_checkpoint_is_one_clear_error(tmp_path, data_dir, tiny_data, damage, message):
    _, out = _train(tmp_path, data_dir, "baseline", 2)
    damage(out)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(out)


def test_cli_errors_are_one_line_and_non_zero(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for argv in (
        ["-m", "models.train", "--arch", "gpt5"],
        ["-m", "models.train", "--arch", "aero", "--batch-size", "16", "--grad-accum", "3"],
        ["-m", "models.train", "--arch", "aero", "--device", "tpu9"],
        ["-m", "models.train", "--arch", "aero", "--device", "cuda:0"],  # none on this machine
        ["-m", "models.analyze", "--checkpoint", str(bad), "--out", str(tmp_path)],
    ):
        result = subprocess.run(
            [sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


def test_entropy_analysis_writes_csv_and_figures(tmp_path, data_dir, tiny_data):
    import pandas as pd

    from models.analyze import main as analyze

    _, out = _train(tmp_path, data_dir, "sm+g", 5)
    folder = tmp_path / "entropy"
    assert (
        analyze(
            [
                "--checkpoint",
                str(out),
                "--out",
                str(folder),
                "--data-dir",
                data_dir,
                "--batches",
                "2",
            ]
        )
        == 0
    )
    heads = pd.read_csv(folder / "entropy_heads.csv")
    assert len(heads) == 2 * 2 and heads["entropy_nats"].between(0, math.log(16)).all()
    bins = pd.read_csv(folder / "entropy_distribution.csv")
    assert math.isclose(bins["fraction_of_heads"].sum(), 1.0)
    for png in ("entropy_heatmap.png", "entropy_distribution.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"


def test_bf16_autocast_trains_with_fp32_weights(tmp_path, data_dir, tiny_data):
    code, out = _train(tmp_path, data_dir, "aero", 4, "--precision", "bf16", "--device", "auto")
    assert code == 0
    checkpoint = load_checkpoint(out)
    assert checkpoint.meta["precision"] == "bf16" and checkpoint.meta["device"] == "cpu"
    assert all(
        t.dtype == torch.float32 for t in checkpoint.model_state.values() if t.is_floating_point()
    )
    assert math.isfinite(checkpoint.meta["eval_loss"])
