"""Figures of the reproduction, drawn from its CSV frames only: entropy heatmaps (the paper's
Figure 3 shape), head-entropy distributions beside the paper's (Figure 4 shape), perplexity per
variant, and the benchmark's per-operation figures of the trained models (Figure 1 shape); for
a several-seed run, the entropy trajectories per layer averaged over seeds (the paper's collapse
story) and the final head distributions."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.reproduction.paper import AERO, PAPER_HEADS, PAPER_TOKENS
from models.entropy import BIN_LABELS

BIN_COLOURS = ("#d62728", "#ff9896", "#98df8a", "#1f77b4")


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False).ravel()


def entropy_heatmaps(heads: pd.DataFrame, out: Path) -> Path:
    """One layer x head heatmap per variant, one colour scale (nats) for all."""
    archs = list(dict.fromkeys(heads.arch))
    cols = min(5, len(archs))
    rows = math.ceil(len(archs) / cols)
    fig, axes = _figure(2.6 * cols + 1, 2.2 * rows + 0.6, rows, cols)
    top = float(heads.entropy_nats.max())
    image = None
    for ax, arch in zip(axes, archs, strict=False):
        grid = heads[heads.arch == arch].pivot(index="layer", columns="head", values="entropy_nats")
        image = ax.imshow(grid.values, cmap="viridis", vmin=0, vmax=top, aspect="auto")
        ax.set_title(arch, fontsize=9)
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
    for ax in axes[len(archs) :]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[: len(archs)]), label="attention entropy (nats)")
    fig.suptitle("Per-head attention entropy (mean over queries), validation windows")
    path = out / "entropy_heatmaps.png"
    fig.savefig(path, dpi=110)
    return path


def head_distribution_chart(distribution: pd.DataFrame, out: Path) -> Path:
    """Stacked bars of the four entropy bins per variant; the paper's beside where published."""
    bars = []
    for arch, part in distribution.groupby("arch", sort=False):
        bars.append((arch, part.fraction_of_heads.tolist()))
        paper = part.paper_fraction_of_heads
        if paper.notna().all():
            bars.append((f"{arch} (paper)", paper.tolist()))
    fig, (ax,) = _figure(7.5, 0.32 * len(bars) + 1.6)
    labels = [label for label, _ in bars]
    left = [0.0] * len(bars)
    for index, (name, colour) in enumerate(zip(BIN_LABELS, BIN_COLOURS, strict=True)):
        widths = [100 * fractions[index] for _, fractions in bars]
        ax.barh(labels, widths, left=left, color=colour, label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("% of heads (bins of [0, m], m = the model's largest head entropy)")
    ax.set_xlim(0, 100)
    ax.legend(ncols=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    path = out / "head_distribution.png"
    fig.savefig(path, dpi=110)
    return path


def perplexity_chart(table4: pd.DataFrame, out: Path) -> Path:
    """Validation PPL per variant, this run beside the paper's 12-layer values (own panels: the
    scales differ by two orders of magnitude); diverged or unreported values are marked."""
    table = table4.drop_duplicates("arch")
    fig, axes = _figure(11, 3.8, 1, 2)
    x = list(range(len(table)))
    for ax, column, title, colour in (
        (axes[0], "eval_ppl", "this run", "#4c72b0"),
        (axes[1], "paper_ppl", f"paper (GPT-2 12L, {PAPER_TOKENS / 1e9:.1f} B tokens)", "#dd8452"),
    ):
        values = table[column]
        ax.bar(x, values.fillna(0), color=colour)
        for i, value, status in zip(x, values, table.status, strict=True):
            if pd.isna(value):
                own = "diverged" if status == "diverged" else "-"
                label = "NaN / n.r." if column == "paper_ppl" else own
                ax.text(i, 0, label, rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, table.arch, rotation=40, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("validation perplexity")
    path = out / "perplexity.png"
    fig.savefig(path, dpi=110)
    return path


def entropy_trajectory_chart(trajectory: pd.DataFrame, out: Path) -> Path:
    """Per variant, each layer's mean head entropy (fraction of log T) against tokens trained:
    when attention leaves the uniform start (dashed, about 0.80) and where it goes."""
    archs = list(dict.fromkeys(trajectory.arch))
    cols = min(5, len(archs))
    rows = math.ceil(len(archs) / cols)
    fig, axes = _figure(2.6 * cols + 0.6, 2.1 * rows + 0.6, rows, cols)
    for ax, arch in zip(axes, archs, strict=False):
        part = trajectory[trajectory.arch == arch]
        for layer, line in part.groupby("layer"):
            ax.plot(line.tokens / 1e6, line.entropy_fraction_of_log_t, label=f"layer {layer}")
        ax.axhline(0.80, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, 1)
        ax.set_title(arch, fontsize=9)
        ax.set_xlabel("M tokens", fontsize=8)
        ax.set_ylabel("entropy / log T", fontsize=8)
    for ax in axes[len(archs) :]:
        ax.set_visible(False)
    if archs:
        axes[0].legend(fontsize=6)
    fig.suptitle("Attention entropy during training (dashed: uniform causal attention)")
    path = out / "entropy_trajectory.png"
    fig.savefig(path, dpi=110)
    return path


def draw_figures(frames: dict, tables: dict, out: Path) -> list[Path]:
    paths = []
    if not frames["entropy_trajectory"].empty:
        paths.append(entropy_trajectory_chart(frames["entropy_trajectory"], out))
    if not frames["entropy_heads"].empty:
        paths.append(entropy_heatmaps(frames["entropy_heads"], out))
    if not tables["head_distribution"].empty:
        paths.append(head_distribution_chart(tables["head_distribution"], out))
    if not tables["table4"].empty:
        paths.append(perplexity_chart(tables["table4"], out))
    if not frames["mpc_results"].empty:
        from bench.figures import draw_all

        paths += draw_all(frames["mpc_results"], out / "plots")
    return paths


STORY = ("SM", "SM+ScFFN", AERO)  # collapse, the fix, the regularizer (Figures 3 and 6)


def seed_trajectory_chart(trajectory: pd.DataFrame, collapse: pd.DataFrame, out: Path) -> Path:
    """Each layer's mean head entropy against tokens, averaged over the seeds still training at
    that evaluation, for SM, SM+ScFFN and EReg (the others if those are absent); deep layers
    dark. Dotted: the collapse line (`stress.COLLAPSED`)."""
    from matplotlib import colormaps

    from bench.reproduction.stress import COLLAPSED

    archs = [a for a in STORY if a in set(trajectory.arch)] or list(dict.fromkeys(trajectory.arch))
    fig, axes = _figure(3.6 * len(archs) + 0.8, 3.2, 1, len(archs))
    for ax, arch in zip(axes, archs, strict=True):
        part = trajectory[trajectory.arch == arch]
        layers = sorted(set(part.layer))
        means = part.groupby(["layer", "tokens"]).entropy_fraction_of_log_t.mean().reset_index()
        for layer, line in means.groupby("layer"):
            colour = colormaps["viridis_r"](0.1 + 0.85 * layer / max(1, len(layers) - 1))
            ax.plot(line.tokens / 1e6, line.entropy_fraction_of_log_t, color=colour,
                    marker=".", markersize=3, label=f"layer {layer}")  # fmt: skip
        ax.axhline(COLLAPSED, color="red", linestyle=":", linewidth=0.8)
        runs = collapse[collapse.arch == arch]
        ax.set_title(f"{arch}: {int(runs.diverged.sum())} of {len(runs)} seeds diverged",
                     fontsize=9)  # fmt: skip
        ax.set_ylim(0, 1)
        ax.set_xlabel("M tokens", fontsize=8)
        ax.set_ylabel("entropy / log T (mean over seeds)", fontsize=8)
    axes[-1].legend(fontsize=6, ncols=2)
    fig.suptitle("Attention entropy per layer during training (red dotted: collapsed)")
    path = out / "entropy_trajectory.png"
    fig.savefig(path, dpi=110)
    return path


def seed_figures(frames: dict, out: Path) -> list[Path]:
    """The figures of a several-seed run: trajectories, and the final head distributions (the
    mean over seeds of each bin; the paper's bars beside where published)."""
    paths = []
    collapse = frames["collapse"]
    if not frames.get("entropy_trajectory", pd.DataFrame()).empty and not collapse.empty:
        paths.append(seed_trajectory_chart(frames["entropy_trajectory"], collapse, out))
    if not collapse.empty and "bin_0" in collapse:
        means = collapse.groupby("arch", sort=False)[[f"bin_{i}" for i in range(4)]].mean()
        rows = [
            {"arch": arch, "bin": label, "fraction_of_heads": means.loc[arch, f"bin_{i}"],
             "paper_fraction_of_heads": PAPER_HEADS[arch][i] / 100 if arch in PAPER_HEADS
             else math.nan}
            for arch in means.index for i, label in enumerate(BIN_LABELS)
        ]  # fmt: skip
        paths.append(head_distribution_chart(pd.DataFrame(rows), out))
    return paths
