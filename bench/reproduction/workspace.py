"""One reproduction's folders: where each variant's checkpoint and stage records live."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.reproduction.budgets import Budget


def slug(arch: str) -> str:
    """A file-name form of a variant name: 'EReg(SM(t)+ScFuFFN)' -> 'ereg-sm-t-scfuffn'."""
    return re.sub(r"[^a-z0-9]+", "-", arch.lower()).strip("-")


@dataclass
class Run:
    """One reproduction: its budget, seed, folders and the variants it covers."""

    name: str
    budget: Budget
    seed: int
    out: Path
    work: Path
    data_dir: str
    corpus: str | None
    variants: list[str]
    device: str = "cpu"
    precision: str = "fp32"
    processes: int = 1  # training processes (torchrun, one per device) when more than one

    def checkpoint(self, arch: str) -> Path:
        return self.work / "checkpoints" / f"{slug(arch)}.pt"

    def record(self, stage: str, arch: str, suffix: str = ".json") -> Path:
        return self.work / stage / f"{slug(arch)}{suffix}"
