"""Figures of a benchmark's results.csv (PNG, matplotlib Agg), drawn from its rows only.

`plot_*` each return the paths they wrote; `draw_all` draws every one. Colours stay fixed per
operation group across figures (`bench.report.GROUPS`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from bench.report import (
    BASELINE,
    COLORS,
    GROUPS,
    METRICS,
    SETTING,
    category_table,
    describe,
    mean_over_repeats,
    num,
    prepared,
    sorted_table,
    summary_table,
    times,
)
from bench.report import panels as setting_panels
from bench.schema import TOTAL

BYTE_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1.0, "B"))
SECOND_UNITS = ((60.0, "min"), (1.0, "s"), (1e-3, "ms"))


def _unit(largest: float, family: str) -> tuple[float, str]:
    """The largest unit in which `largest` is at least 1 (minutes only from 5 minutes on)."""
    units = BYTE_UNITS if family == "bytes" else SECOND_UNITS
    for scale, name in units:
        if largest >= (5 * scale if name == "min" else scale):
            return scale, name
    return units[-1]


def _figure(panels: int, bars: int, height: float = 3.6, cols: int = 3, **kw):
    """Panels in rows of `cols`, each wide enough for `bars` labelled bars."""
    width = max(3.6, 0.3 * bars + 1.4)
    cols = min(panels, cols, max(1, int(15 // width)))  # figures at most ~17 inches wide
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols + 1.8, height * rows + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kw).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _save(fig: Figure, title: str, groups: list[str], out_dir: Path, name: str, lines=False):
    """Shared legend (one colour per operation group, the same in every figure; stacked bars list
    the top of the stack first) and a title whose second line is the setting common to all."""
    if groups:
        if lines:
            handles = [Line2D([], [], color=COLORS[g], marker="o", ms=4) for g in groups]
        else:
            groups = groups[::-1]
            handles = [Patch(facecolor=COLORS[g]) for g in groups]
        fig.legend(handles, groups, loc="outside right center", title="operation", frameon=False)
    fig.suptitle(title, fontsize=11)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    fig.savefig(path, dpi=110)
    return path


def _context(table: pd.DataFrame, keys: list[str]) -> str:
    text = describe({k: table[k].iloc[0] for k in keys if table[k].nunique() == 1})
    return f"\n{text}" if text else ""


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.replace("T=", "T")).strip("_")


def _stacked_bars(ax, wide: pd.DataFrame, scale: float) -> None:
    """One bar per row of `wide` (arch x group), stacked by group, its total written on top."""
    x = np.arange(len(wide))
    bottom = np.zeros(len(wide))
    for group in wide.columns:
        heights = wide[group].fillna(0).to_numpy() / scale
        ax.bar(x, heights, 0.65, bottom=bottom, color=COLORS[group], edgecolor="white", lw=0.4)
        bottom += heights
    for xi, total in zip(x, bottom, strict=True):
        ax.text(
            xi,
            total,
            f" {num(total)}",
            ha="center",
            va="bottom",
            fontsize=7,
            rotation=90 if len(x) > 5 else 0,
        )
    ax.set_xticks(x, [str(a) for a in wide.index], rotation=30, ha="right", fontsize=8)
    room = 1.25 if len(x) > 5 else 1.12  # for the totals
    ax.set_ylim(0, max(ax.get_ylim()[1], room * bottom.max()))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _used_groups(table: pd.DataFrame, value: str) -> list[str]:
    used = table.groupby("group", observed=True)[value].sum()
    return [g for g in GROUPS if g in used.index and used[g] > 0]


def plot_by_category(df: pd.DataFrame, out_dir: str | Path, metric: str = "bytes") -> list[Path]:
    """Stacked bars per architecture of one per-category quantity (METRICS), a panel per setting."""
    label, family = METRICS[metric]
    table = category_table(df)
    scale, unit = _unit(table.groupby([*SETTING, "arch"])[metric].sum().max(), family)
    panels = list(setting_panels(table, SETTING))
    fig, axes = _figure(len(panels), table.arch.nunique())
    groups = _used_groups(table, metric)
    for ax, (title, part) in zip(axes, panels, strict=True):
        wide = part.pivot_table(
            index="arch", columns="group", values=metric, observed=True, aggfunc="sum", sort=False
        ).reindex(columns=groups)
        _stacked_bars(ax, wide, scale)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(f"{label.split(' per ')[0]} [{unit}]")
    name = {"bytes": "bytes", "wall_s": "latency_measured", "projected_wan_s": "latency_wan"}
    title = f"{label[0].upper()}{label[1:]}{_context(table, SETTING)}"
    return [_save(fig, title, groups, Path(out_dir), f"{name[metric]}_by_category.png")]


def plot_bytes_by_category(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    return plot_by_category(df, out_dir, "bytes")


def plot_latency_by_category(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Measured wall seconds and projected WAN seconds per category: two figures."""
    return [
        *plot_by_category(df, out_dir, "wall_s"),
        *plot_by_category(df, out_dir, "projected_wan_s"),
    ]


SAVINGS = {  # summary column: (legend, colour)
    "comm_saving_x": ("communication", "#4c72b0"),
    "wall_saving_x": ("measured latency", "#dd8452"),
    "wan_saving_x": ("projected WAN latency", "#55a868"),
}


def plot_savings(df: pd.DataFrame, out_dir: str | Path, baseline: str = BASELINE) -> list[Path]:
    """Grouped bars of baseline / arch per setting; nothing without a baseline to compare to."""
    table = summary_table(df, baseline)
    table = table[(table.arch != baseline) & table.comm_saving_x.notna()]
    if table.empty:
        return []
    panels = list(setting_panels(table, SETTING))
    fig, axes = _figure(len(panels), 1.3 * table.arch.nunique(), sharey=True)
    width = 0.8 / len(SAVINGS)
    for ax, (title, part) in zip(axes, panels, strict=True):
        x = np.arange(len(part))
        for i, (column, (_, color)) in enumerate(SAVINGS.items()):
            offset = (i - (len(SAVINGS) - 1) / 2) * width
            bars = ax.bar(x + offset, part[column], width, color=color)
            ax.bar_label(
                bars,
                [f" {times(v)}" for v in part[column]],
                fontsize=7,
                rotation=90 if len(part) > 2 else 0,
            )
        ax.axhline(1, color="black", lw=0.8)
        ax.set_xticks(x, part.arch.tolist(), rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.25 if len(part) > 2 else 0.12)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_ylabel(f"saving versus {baseline} [x]")
    fig.legend(
        [Patch(facecolor=c) for _, c in SAVINGS.values()],
        [n for n, _ in SAVINGS.values()],
        loc="outside right center",
        frameon=False,
    )
    title = f"Savings versus {baseline} (higher is better){_context(table, SETTING)}"
    return [_save(fig, title, [], Path(out_dir), "savings.png")]


def plot_per_layer(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Client bytes per layer ("out" = outside the blocks) stacked by group: a panel per arch,
    a file per setting."""
    d = prepared(df)
    parts = d[(d.party == "client") & (d.category != TOTAL)]
    table = mean_over_repeats(parts, [*SETTING, "arch", "party", "layer", "group"], ["bytes"])
    settings = list(setting_panels(table, SETTING))
    paths = []
    for label, part in settings:
        archs = list(sorted_table(part[[*SETTING, "arch"]].drop_duplicates()).arch)
        scale, unit = _unit(part.groupby(["arch", "layer"])["bytes"].sum().max(), "bytes")
        part = part.assign(group=pd.Categorical(part.group, list(GROUPS)))
        groups = _used_groups(part, "bytes")
        fig, axes = _figure(len(archs), part.layer.nunique(), sharey=True)
        for ax, arch in zip(axes, archs, strict=True):
            wide = part[part.arch == arch].pivot_table(
                index="layer", columns="group", values="bytes", aggfunc="sum", observed=True
            )
            wide = wide.reindex(columns=groups).sort_index()
            wide.index = ["out" if layer < 0 else str(layer) for layer in wide.index]
            _stacked_bars(ax, wide, scale)
            ax.tick_params(axis="x", rotation=0)
            ax.set_title(arch, fontsize=10)
            ax.set_xlabel("layer (out = outside the blocks)", fontsize=9)
        axes[0].set_ylabel(f"client bytes [{unit}]")
        context = describe(part[SETTING].iloc[0].to_dict())
        name = f"per_layer_{_slug(label)}.png" if label else "per_layer.png"
        paths.append(_save(fig, f"Client bytes per layer\n{context}", groups, Path(out_dir), name))
    return paths


def plot_seq_len_sweep(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Bytes and projected WAN time per group against T (log-log), a pair of panels per arch
    (columns when there are at most 4 archs, else rows); a file per setting with more than one T."""
    table = category_table(df)
    others = [k for k in SETTING if k != "seq_len"]
    paths = []
    for label, part in setting_panels(table, others):
        if part.seq_len.nunique() < 2:
            continue
        archs = list(dict.fromkeys(part.arch))
        wide = len(archs) <= 4
        fig, axes = _figure(2 * len(archs), 6, height=2.8, cols=len(archs) if wide else 4)
        groups = _used_groups(part, "bytes")
        lengths = sorted(part.seq_len.unique())
        grid = [
            [axes[m * len(archs) + a] if wide else axes[2 * a + m] for a in range(len(archs))]
            for m in range(2)
        ]
        for row in grid:
            for ax in row[1:]:
                ax.sharey(row[0])  # before plotting, so the limits cover every panel
        for m, metric in enumerate(("bytes", "projected_wan_s")):
            scale, unit = _unit(part[metric].max(), METRICS[metric][1])
            for a, arch in enumerate(archs):
                ax = grid[m][a]
                lines = part[part.arch == arch].pivot_table(
                    index="seq_len", columns="group", values=metric, aggfunc="sum", observed=True
                )
                for group in [g for g in groups if g in lines.columns]:
                    values = lines[group].where(lines[group] > 0) / scale
                    ax.plot(lines.index, values, marker="o", ms=3, color=COLORS[group])
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xticks(lengths, [str(t) for t in lengths], minor=False)
                for axis in (ax.xaxis, ax.yaxis):  # log minor ticks cost time, add no labels
                    axis.set_minor_locator(NullLocator())
                ax.grid(alpha=0.3)
                ax.set_title(arch if m == 0 or not wide else "", fontsize=10)
                ax.set_xlabel("sequence length T" if m == 1 or not wide else "", fontsize=9)
                if a == 0 or not wide:
                    ax.set_ylabel(f"{'client bytes' if m == 0 else 'projected WAN'} [{unit}]")
        name = f"seq_len_sweep_{_slug(label)}.png" if label else "seq_len_sweep.png"
        title = f"Cost against sequence length{_context(part, others)}"
        paths.append(_save(fig, title, groups, Path(out_dir), name, lines=True))
    return paths


FIGURES = (
    plot_bytes_by_category,
    plot_latency_by_category,
    plot_savings,
    plot_per_layer,
    plot_seq_len_sweep,
)


def draw_all(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    return [path for figure in FIGURES for path in figure(df, out_dir)]
