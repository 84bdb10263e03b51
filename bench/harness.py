"""The measuring library behind `bench/run.py`: targets, the per-query loop every backend shares,
predictions and accuracy beside the measurements, and the results folder.

A backend (`bench.backends`) knows how to start its server and run one client query; everything
else, the same for every backend, is here: which prompts, which rows, what the cost model
predicts, how far the revealed logits are from plaintext, progress lines, results.csv.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.schema import TOTAL, ResultRow, measured_rows
from models.atomic import atomic_write_json, atomic_write_text
from models.checkpoint import Checkpoint, save_checkpoint
from mpc.approx import ApproxConfig
from mpc.cost.walk import predict_costs


@dataclass
class Target:
    """One model to measure: its checkpoint (and the file the server loads), and a label."""

    checkpoint: Checkpoint
    weights: str  # "random" or the checkpoint's file name
    path: Path | None = None  # the checkpoint on disk (None: random weights, saved per session)
    _model: Any = field(default=None, repr=False)

    @property
    def config(self):
        return self.checkpoint.config

    def file(self, folder: Path) -> Path:
        """The checkpoint file to hand to a server: the one path across the process boundary, so
        bench and server hold the very same weights. Weights without a file of their own (random
        ones) are saved into `folder`, the session's scratch folder, each time."""
        if self.path is not None:
            return self.path
        path = folder / f"{self.weights}-{self.config.arch}.pt".replace("/", "-")
        save_checkpoint(path, self.checkpoint)
        return path

    def plaintext_model(self):
        """The plaintext model, built once per target."""
        if self._model is None:
            self._model = self.checkpoint.build_model()
        return self._model


@dataclass
class PartyRecord:
    """One party's measured query, whatever the backend: its (layer, category) rows and totals."""

    ops: list[dict]
    total: dict  # the counters of the whole query, plus os_bytes and peak_rss_mb
    extra: dict = field(default_factory=dict)  # backend-specific figures (e.g. mask set-up)


def prompt_tokens(target: Target, length: int, repeat: int) -> list[int]:
    generator = torch.Generator().manual_seed(1000 * length + repeat)
    return torch.randint(0, target.config.vocab_size, (length,), generator=generator).tolist()


def add_predictions(
    rows: list[ResultRow], target: Target, approx: ApproxConfig, dealer: str
) -> None:
    cache: dict = {}
    for row in rows:
        key = (row.party, row.seq_len)
        if key not in cache:
            cache[key] = predict_costs(target.config, approx, row.seq_len, dealer, row.party)
        predicted = cache[key]
        if row.category == TOTAL:
            row.predicted_bytes = sum(b for b, _ in predicted.values())
            row.predicted_rounds = sum(r for _, r in predicted.values())
        else:
            row.predicted_bytes, row.predicted_rounds = predicted.get(
                (row.layer, row.category), (0.0, 0.0)
            )


def add_accuracy(rows: list[ResultRow], target: Target, tokens: list[int], last: list) -> None:
    """Max abs error and top-1 agreement of the revealed last-position logits `last`."""
    with torch.no_grad():
        expected = target.plaintext_model()(torch.tensor([tokens]))[0, -1]
    revealed = torch.tensor(last)
    for row in rows:
        if row.party == "client" and row.category == TOTAL:
            row.max_abs_logit_error = float((revealed - expected).abs().max())
            row.top1_match = float(int(revealed.argmax()) == int(expected.argmax()))


def query_rows(
    client: PartyRecord, server: PartyRecord, base: dict, repeat: int
) -> list[ResultRow]:
    """Both parties' rows of one query; the server's total row carries its offline phase."""
    rows = measured_rows(server.ops, server.total, "server", base, repeat)
    if offline := server.extra.get("offline"):
        rows[-1].offline_bytes = offline["bytes"]
        rows[-1].offline_s = offline["wall_s"] + offline["rehearsal_s"]
    return [*measured_rows(client.ops, client.total, "client", base, repeat), *rows]


def report_progress(base: dict, repeat: int, repeats: int, rows, started: float) -> None:
    client = next(r for r in rows if r.party == "client" and r.category == TOTAL)
    print(
        f"  {base['arch']:22s} {base['backend']:11s} {base['protocol'][:9]:9s} "
        f"T={base['seq_len']:<4d} repeat {repeat + 1}/{repeats}: {client.bytes / 1e9:.3f} GB, "
        f"{client.rounds:.0f} rounds, {client.wall_s:.1f} s (query "
        f"{time.perf_counter() - started:.1f} s), max |logit err| {client.max_abs_logit_error:.2e}",
        flush=True,
    )


def flag_mismatches(rows: list[ResultRow]) -> list[str]:
    """Categories whose measured bytes or rounds differ from the analytic model by > 1 %."""
    flagged = []
    for row in rows:
        for kind in ("bytes", "rounds"):
            measured, predicted = getattr(row, kind), getattr(row, f"predicted_{kind}")
            if math.isnan(predicted) or measured == predicted:
                continue
            if abs(measured - predicted) > 0.01 * max(predicted, 1e-9):
                flagged.append(
                    f"{row.arch} T={row.seq_len} {row.party} layer {row.layer} "
                    f"{row.category}: {kind} measured {measured:.0f}, predicted "
                    f"{predicted:.0f}"
                )
    return flagged


def write_results(folder: Path, rows: list[ResultRow], config: dict, draw: bool) -> None:
    """results.csv (atomically), config.json, summary.md and the plots."""
    import pandas as pd

    frame = pd.DataFrame([vars(row) for row in rows], columns=ResultRow.columns())
    atomic_write_text(folder / "results.csv", frame.to_csv(index=False))
    atomic_write_json(folder / "config.json", config)
    if draw:
        from bench.figures import draw_all
        from bench.profiles import profile_markdown
        from bench.report import summary_markdown

        comparison = profile_markdown(frame)
        summary = summary_markdown(frame) + (f"\n{comparison}\n" if comparison else "")
        atomic_write_text(folder / "summary.md", summary)
        draw_all(frame, folder / "plots")
