"""Checkpoints: weights, resolved config, tokenizer and training metadata in one file.

Saved atomically (temporary file, then rename) and loaded with `weights_only=True`, so loading
never executes pickled code. Every failure to load is one `CheckpointError` with a one-line reason.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.atomic import atomic_write
from models.config import ConfigError, ModelConfig
from models.errors import UserError
from models.gpt import GPT

FORMAT = "aero-pi-checkpoint/1"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, corrupt, or does not match its config."""


@dataclass
class Checkpoint:
    config: ModelConfig
    model_state: dict[str, torch.Tensor]
    tokenizer_json: str
    meta: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict | None = None

    def build_model(self) -> GPT:
        """The model with these weights, in eval mode."""
        model = GPT(self.config)
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0:2]
            raise CheckpointError(f"weights do not match the config: {' '.join(first)}") from None
        return model.eval()


def random_checkpoint(cfg: ModelConfig, seed: int = 0) -> Checkpoint:
    """Randomly initialised weights of an architecture, for cost measurements (the costs of
    secure inference do not depend on weight values). It has no tokenizer: prompts are token ids."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    meta = {"status": "random-init", "random_weights": True, "seed": seed}
    return Checkpoint(cfg, model.state_dict(), "", meta)


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "config": checkpoint.config.to_dict(),
        "model": checkpoint.model_state,
        "tokenizer": checkpoint.tokenizer_json,
        "meta": checkpoint.meta,
        "optimizer": checkpoint.optimizer_state,
    }
    atomic_write(path, lambda temporary: torch.save(payload, temporary))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file; all mean "corrupt"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint: {reason[:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an aero-pi checkpoint (format {FORMAT} expected)")
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{path} holds an invalid config: {error}") from None
    checkpoint = Checkpoint(
        config, payload["model"], payload["tokenizer"], payload["meta"], payload.get("optimizer")
    )
    checkpoint.build_model()  # validates every weight's name and shape against the config
    return checkpoint
