"""Shared fixtures: tiny prepared data (a slice of the stdlib corpus) and one tolerance checker."""

from __future__ import annotations

import pytest
import torch

from models.data import prepare_data
from models.train import main as train_main

TINY_VOCAB = 512
TINY_FILES = 60  # enough text for a 512-token BPE and a few thousand validation tokens


def assert_close(actual, expected, atol: float, what: str) -> None:
    """Max-abs-error check with the tolerance and the quantity named in the failure message."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    error = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert error <= atol, f"{what}: max abs error {error:.3g} > tolerance {atol:.3g}"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_data(data_dir):
    return prepare_data(data_dir, TINY_VOCAB, max_files=TINY_FILES)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, data_dir, tiny_data):
    """Tiny trained checkpoints of the four architectures the secure path must serve."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for arch in ("baseline", "sm+ln+r", "sm+r", "aero"):
        out = folder / f"{arch}.pt"
        code = train_main(
            [
                "--arch",
                arch,
                "--preset",
                "tiny",
                "--steps",
                "60",
                "--eval-interval",
                "60",
                "--eval-batches",
                "2",
                "--data-dir",
                data_dir,
                "--max-files",
                str(TINY_FILES),
                "--out",
                str(out),
            ]
        )
        assert code == 0
        paths[arch] = out
    return paths


@pytest.fixture(scope="session")
def spu_run(tmp_path_factory):
    """bench/run.py with both SPU protocols on the tiny baseline: real server and client
    processes over TCP (brpc), random weights."""
    pytest.importorskip("spu")
    import pandas as pd

    from bench.run import main as bench_main

    out = tmp_path_factory.mktemp("spu-bench") / "run"
    argv = [
        "--arch",
        "baseline",
        "--preset",
        "tiny",
        "--backend",
        "spu-semi2k",
        "spu-cheetah",
        "--no-plots",
        "--out",
        str(out),
        "--timeout",
        "300",
    ]
    assert bench_main(argv) == 0
    return pd.read_csv(out / "results.csv")
