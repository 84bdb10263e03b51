"""Redraw every figure and the markdown summary of a benchmark from its results.csv.

    python bench/plot.py runs/<run>/results.csv [--out DIR]     (or python -m bench.plot ...)

Reads only the CSV (see bench/schema.py); writes DIR/summary.md and the PNGs of bench/figures.py
into DIR/plots (DIR defaults to the CSV's folder: the layout bench/run.py writes) and prints each
path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.figures import draw_all
from bench.report import read_results, summary_markdown
from models.atomic import atomic_write_text
from models.cli import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", type=Path, help="a results.csv written by the benchmark")
    parser.add_argument("--out", type=Path, help="output folder (default: the CSV's folder)")
    args = parser.parse_args(argv)
    results = read_results(args.results)
    out = args.out or args.results.parent
    figures = draw_all(results, out / "plots")
    text = summary_markdown(results) + "\n## Figures\n\n"
    text += "\n".join(f"![{p.stem}](plots/{p.name})" for p in figures) + "\n"
    summary = out / "summary.md"
    atomic_write_text(summary, text)
    for path in (summary, *figures):
        print(path)
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_main(lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
