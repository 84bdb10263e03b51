"""torchrun with 2 CPU processes (gloo, DistributedDataParallel) takes the same steps as one
process on the same global batch: loss, evaluation and weights agree to float32 summation order.

Each run is a real torchrun launch of `python -m models.train` (tiny preset, 3 steps of 8
sequences, the aero model so the entropy penalty and its learnable thresholds are in the step,
with lambda = 0.05: at the default 1e-5 a penalty counted twice or half moves no weight by more
than 4e-8, below any tolerance; at 0.05 it moves them by 4e-4).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import train as trainer
from models.checkpoint import load_checkpoint
from models.gpt import GPT
from tests.conftest import TINY_FILES

REPO = Path(__file__).resolve().parents[1]
# Measured differences after 3 AdamW steps: weights <= 1.7e-7, Adam's first moment <= 2.4e-7
# (entries up to 1.2), losses <= 4e-8 relative (the gradients' sums run in another order); the
# tolerances sit ~10x above.
WEIGHT_ATOL, MOMENT_ATOL, LOSS_RTOL = 2e-6, 2e-6, 5e-7


def _argv(data_dir: str, out: Path, grad_accum: int, *extra: str) -> list[str]:
    return [
        "--arch", "aero", "--preset", "tiny", "--steps", "3", "--batch-size", "8",
        "--grad-accum", str(grad_accum), "--eval-interval", "3", "--eval-batches", "2",
        "--data-dir", data_dir, "--max-files", str(TINY_FILES), "--threads", "1",
        "--grad-clip", "1e6",  # clipping would hide a gradient scaled by the wrong world size
        "--out", str(out), *extra,
    ]  # fmt: skip


def _torchrun(argv: list[str]) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "models.train", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _assert_same_training(single: Path, distributed: Path) -> None:
    one, two = load_checkpoint(single), load_checkpoint(distributed)
    assert two.meta["processes"] == 2 and one.meta["processes"] == 1
    assert two.meta["step"] == one.meta["step"] == 3
    assert two.meta["tokens_seen"] == one.meta["tokens_seen"] == 3 * 8 * 16
    for key in ("train_loss", "eval_loss"):
        assert two.meta[key] == pytest.approx(one.meta[key], rel=LOSS_RTOL), key
    entropy = [c.meta["history"][-1]["entropy_fraction_by_layer"] for c in (one, two)]
    assert entropy[1] == pytest.approx(entropy[0], abs=2e-4)  # recorded to 4 digits
    torch.manual_seed(one.meta["train_settings"]["seed"])
    initial = GPT(one.config).state_dict()
    assert one.model_state.keys() == two.model_state.keys() == initial.keys()
    for name, weight in one.model_state.items():
        torch.testing.assert_close(two.model_state[name], weight, rtol=0, atol=WEIGHT_ATOL)
    moved = max(float((one.model_state[n] - w).abs().max()) for n, w in initial.items())
    assert moved > 1e-4, "the weights did not move: the comparison would mean nothing"
    # AdamW's steps hardly change when every gradient is scaled alike; its first moment does
    for index, state in one.optimizer_state["state"].items():
        other = two.optimizer_state["state"][index]["exp_avg"]
        torch.testing.assert_close(other, state["exp_avg"], rtol=0, atol=MOMENT_ATOL)


@pytest.mark.parametrize(
    "accumulation, single_accum, distributed_accum",
    [
        ("sum", 1, 2),  # the paper-style sum adds up over 2 ranks x 2 micro-batches
        ("average", 2, 1),  # the released trainer's / (K x devices): K x devices = 2 both ways
    ],
)
def test_two_processes_train_as_one(
    tmp_path, data_dir, tiny_data, accumulation, single_accum, distributed_accum
):
    setting = ["--set", f"entropy_accumulation={accumulation}", "--set", "entropy_lambda=0.05"]
    single, distributed = tmp_path / "single.pt", tmp_path / "distributed.pt"
    assert trainer.main(_argv(data_dir, single, single_accum, *setting)) == 0
    _torchrun(_argv(data_dir, distributed, distributed_accum, *setting))
    _assert_same_training(single, distributed)


def test_uneven_split_is_one_clear_error(data_dir, tiny_data, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "models.train"]
    command += _argv(data_dir, tmp_path / "x.pt", 3)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "must divide evenly into 2 process(es) x --grad-accum 3" in result.stderr


def test_reproduction_trains_through_torchrun(tmp_path, data_dir, tiny_data):
    """`bench/reproduce.py --nproc-per-node 2` (what the paper budget does on several GPUs)
    prints the torchrun command and records a variant trained by two processes."""
    work = tmp_path / "work"
    command = [sys.executable, "bench/reproduce.py", "--budget", "tiny", "--variants", "sm"]
    command += ["--nproc-per-node", "2", "--steps", "2", "--stages", "train"]
    command += ["--work", str(work), "--out", str(tmp_path / "out"), "--data-dir", data_dir]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node 2 -m models.train" in result.stdout
    meta = load_checkpoint(work / "checkpoints" / "sm.pt").meta
    assert meta["processes"] == 2 and meta["status"] == "finished" and meta["step"] == 2
