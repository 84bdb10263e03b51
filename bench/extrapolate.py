"""A whole-model estimate from a run of fewer blocks (e.g. SPU CHEETAH on GPT-2, where a run of
12 blocks does not fit in time or memory):

    python -m bench.extrapolate results/spu-gpt2-cheetah-block/results.csv --layers 12
"""

from __future__ import annotations

import sys

from bench.schema import TOTAL


def extrapolate_blocks(frame, layers: int):
    """Whole-model estimate from a run of fewer blocks: measured parts outside the blocks
    (embedding, final LayerNorm, LM head, input sharing, reveal) + `layers` x the mean block.
    Client rows, means over repeats; one row per (backend, arch, seq_len). An estimate: it assumes
    every block costs the same (true of bytes and messages, which depend only on shapes)."""
    import pandas as pd

    parts = frame[(frame.party == "client") & (frame.category != TOTAL)]
    out = []
    for (backend, arch, seq_len), rows in parts.groupby(["backend", "arch", "seq_len"]):
        repeats = rows.repeat.nunique()
        blocks = rows[rows.layer >= 0]
        measured = blocks.layer.nunique()
        record = {"backend": backend, "arch": arch, "seq_len": seq_len, "blocks_measured": measured}
        for metric in ("bytes", "rounds", "wall_s"):
            outside = rows[rows.layer < 0][metric].sum() / repeats
            block = blocks[metric].sum() / repeats / max(measured, 1)
            record[f"outside_{metric}"] = outside
            record[f"block_{metric}"] = block
            record[f"model_{metric}"] = outside + layers * block
        out.append(record)
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    """python -m bench.extrapolate RESULTS.csv --layers 12: the block extrapolation as markdown."""
    import argparse

    from bench.report import read_results

    parser = argparse.ArgumentParser(prog="python -m bench.extrapolate", description=main.__doc__)
    parser.add_argument("results")
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args(argv)
    table = extrapolate_blocks(read_results(args.results), args.layers)
    print(
        f"| backend | arch | blocks measured | outside blocks GB | per block GB | "
        f"{args.layers} blocks + outside GB | per block s | {args.layers} blocks + outside s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in table.itertuples():
        print(
            f"| {r.backend} | {r.arch} | {r.blocks_measured} | {r.outside_bytes / 1e9:.3f} | "
            f"{r.block_bytes / 1e9:.3f} | {r.model_bytes / 1e9:.2f} | {r.block_wall_s:.1f} | "
            f"{r.model_wall_s:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
