"""The reproduction's budgets: model size, tokens, and how much secure inference each measures.

`tiny` is the test's; `small` fits 2 CPU cores; `paper` is the paper's GPT-2-small recipe
(steps and batch from bench/reproduction/paper.py), for a machine with an accelerator
(`--device cuda`; each step's sequences as 4 micro-batches).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.reproduction.paper import PAPER_BATCH_SIZE, PAPER_STEPS
from models.config import ALIASES, VARIANTS


@dataclass(frozen=True)
class Budget:
    """Everything one reproduction run is sized by; saved as budget.json with the results."""

    preset: str
    steps: int
    batch_size: int  # sequences per optimizer step
    variants: tuple[str, ...]
    eval_interval: int
    eval_batches: int
    max_files: int | None = None  # corpus slice (None: the whole corpus)
    entropy_batches: int = 8
    entropy_batch_size: int = 8
    cost_seq_len: int | None = None  # T of the per-model MPC cost (None: the context)
    protocols: tuple[str, ...] = ("stock", "optimized")
    accuracy_prompts: int = 2
    accuracy_length: int | None = 64
    accuracy_protocols: tuple[str, ...] = ("optimized",)
    measure_paper_shapes: bool = False
    timeout_s: float = 1800.0
    grad_accum: int = 1  # micro-batches per step (memory only: the gradient is the batch's)

    def token_budget(self, seq_len: int) -> int:
        return self.steps * self.batch_size * seq_len


BUDGETS: dict[str, Budget] = {
    # The test's budget: two variants, a few steps, a slice of the corpus, one profile.
    "tiny": Budget(
        preset="tiny",
        steps=12,
        batch_size=8,
        variants=(ALIASES["baseline"], ALIASES["aero"]),
        eval_interval=12,
        eval_batches=2,
        max_files=60,
        entropy_batches=2,
        entropy_batch_size=4,
        cost_seq_len=8,
        protocols=("optimized",),
        accuracy_prompts=1,
        accuracy_length=8,
        timeout_s=600.0,
    ),
    # 2 CPU cores: 4 layers, 4 heads, width 128, T = 128, 4096-token BPE; 800 steps of 16
    # sequences = 1,638,400 tokens per variant (~4 min each on 2 idle cores; LN-free attention
    # stays uniform for the first ~0.5 M tokens, so less shows no entropy structure at all).
    # MPC cost at T = 64 (both profiles), accuracy on 2 validation windows of 32 tokens under
    # the optimized profile.
    "small": Budget(
        preset="small",
        steps=800,
        batch_size=16,
        variants=tuple(VARIANTS),
        eval_interval=100,
        eval_batches=10,
        cost_seq_len=64,
        accuracy_prompts=2,
        accuracy_length=32,
    ),
    # The paper's recipe (bench/reproduction/paper.py): GPT-2 small at T = 128, PAPER_TOKENS.
    "paper": Budget(
        preset="gpt2",
        steps=PAPER_STEPS,
        batch_size=PAPER_BATCH_SIZE,
        variants=tuple(VARIANTS),
        eval_interval=2000,
        eval_batches=50,
        accuracy_prompts=8,
        accuracy_length=128,
        accuracy_protocols=("stock", "optimized"),
        measure_paper_shapes=True,
        timeout_s=7200.0,
        grad_accum=4,
    ),
}
