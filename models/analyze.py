"""Entropy analysis of any checkpoint: per-head attention entropy, the paper's four-bin head
distribution, per-layer means; CSV plus a heatmap and a distribution bar chart.

    python -m models.analyze --checkpoint runs/SM+LN+G-small.pt --out results/entropy/baseline
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint
from models.cli import run_main
from models.data import PreparedData, data_of_checkpoint
from models.entropy import BIN_LABELS, head_distribution, head_entropies
from models.gpt import GPT


@torch.no_grad()
def measure_head_entropies(
    model: GPT, data: PreparedData, batches: int, batch_size: int, length: int, seed: int = 0
) -> torch.Tensor:
    """(L, H) mean attention entropy in nats over validation windows."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(model.config.n_layer, model.config.n_head)
    for _ in range(batches):
        x, _ = data.batch("val", batch_size, length, generator)
        attention: list[torch.Tensor] = []
        model(x, attention)
        total += head_entropies(attention)
    return total / batches


def entropy_tables(entropies: torch.Tensor, length: int, arch: str):
    """Tidy per-head rows, bin fractions and per-layer means as pandas DataFrames."""
    import pandas as pd

    largest = float(entropies.max())
    bins = torch.clamp((entropies / largest * 4).floor().long(), 0, 3)
    heads = pd.DataFrame(
        [
            {
                "arch": arch,
                "layer": layer,
                "head": head,
                "entropy_nats": float(entropies[layer, head]),
                "entropy_over_log_t": float(entropies[layer, head]) / math.log(length),
                "bin": BIN_LABELS[int(bins[layer, head])],
            }
            for layer in range(entropies.size(0))
            for head in range(entropies.size(1))
        ]
    )
    fractions = head_distribution(entropies, largest)
    distribution = pd.DataFrame(
        {
            "arch": arch,
            "bin": BIN_LABELS,
            "fraction_of_heads": fractions.tolist(),
            "largest_entropy_nats": largest,
        }
    )
    layers = heads.groupby(["arch", "layer"], as_index=False)["entropy_nats"].mean()
    return heads, distribution, layers


def draw_entropy_figures(heads, distribution, out: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = heads.pivot(index="layer", columns="head", values="entropy_nats")
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * grid.shape[1], 1.2 + 0.4 * grid.shape[0]))
    image = ax.imshow(grid.values, cmap="viridis", aspect="auto")
    ax.set(xlabel="head", ylabel="layer", title=f"{title}: attention entropy (nats)")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    fig.colorbar(image, ax=ax)
    heatmap = out / "entropy_heatmap.png"
    fig.tight_layout()
    fig.savefig(heatmap, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(distribution["bin"], 100 * distribution["fraction_of_heads"], color="#4c72b0")
    ax.set(ylabel="% of heads", title=f"{title}: head entropy distribution", ylim=(0, 100))
    bars = out / "entropy_distribution.png"
    fig.tight_layout()
    fig.savefig(bars, dpi=120)
    plt.close(fig)
    return [heatmap, bars]


def analyze_checkpoint(path: str, out: Path, data_dir: str, batches: int, batch_size: int) -> dict:
    checkpoint = load_checkpoint(path)
    model = checkpoint.build_model()
    data = data_of_checkpoint(checkpoint.meta, model.config.vocab_size, data_dir)
    length = checkpoint.meta.get("seq_len", model.config.block_size)
    entropies = measure_head_entropies(model, data, batches, batch_size, length)
    heads, distribution, layers = entropy_tables(entropies, length, model.config.arch)
    out.mkdir(parents=True, exist_ok=True)
    heads.to_csv(out / "entropy_heads.csv", index=False)
    distribution.to_csv(out / "entropy_distribution.csv", index=False)
    layers.to_csv(out / "entropy_layers.csv", index=False)
    draw_entropy_figures(heads, distribution, out, model.config.arch)
    return {"distribution": distribution["fraction_of_heads"].tolist(), "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.analyze", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True, help="folder for CSV and PNG files")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    result = analyze_checkpoint(
        args.checkpoint, Path(args.out), args.data_dir, args.batches, args.batch_size
    )
    shares = " / ".join(f"{100 * f:.0f}%" for f in result["distribution"])
    print(f"head distribution over {', '.join(BIN_LABELS)}: {shares}; written to {result['out']}")
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    cli()
