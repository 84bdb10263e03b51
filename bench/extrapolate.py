"""A whole-model estimate from a run of fewer blocks (e.g. SPU CHEETAH on GPT-2, where a run of
12 blocks does not fit in time or memory):

    python -m bench.extrapolate results/spu-gpt2-cheetah-block/results.csv --layers 12
"""

from __future__ import annotations

import sys

from bench.schema import TOTAL

SETTING = ["backend", "protocol", "network", "arch", "seq_len"]


def extrapolate_categories(frame, layers: int):
    """Per operation category, the same estimate: the category's cost outside the blocks plus
    `layers` x its mean per measured block (client rows, means over repeats)."""
    import pandas as pd

    parts = frame[(frame.party == "client") & (frame.category != TOTAL)]
    out = []
    for (*key, category), rows in parts.groupby([*SETTING, "category"]):
        repeats = parts[(parts[SETTING] == list(key)).all(axis=1)].repeat.nunique()
        measured = parts[(parts[SETTING] == list(key)).all(axis=1) & (parts.layer >= 0)]
        blocks = max(measured.layer.nunique(), 1)
        record = {**dict(zip(SETTING, key, strict=True)), "category": category}
        for metric in ("bytes", "rounds", "wall_s", "comm_s"):
            outside = rows[rows.layer < 0][metric].sum() / repeats
            inside = rows[rows.layer >= 0][metric].sum() / repeats / blocks
            record[metric] = outside + layers * inside
        out.append(record)
    return pd.DataFrame(out)


def extrapolate_blocks(frame, layers: int):
    """Whole-model estimate from a run of fewer blocks: measured parts outside the blocks
    (embedding, final LayerNorm, LM head, input sharing, reveal) + `layers` x the mean block.
    Client rows, means over repeats; one row per (backend, protocol, network, arch, seq_len).
    An estimate: it assumes every block costs the same (true of bytes and messages, which depend
    only on shapes)."""
    import pandas as pd

    parts = frame[(frame.party == "client") & (frame.category != TOTAL)]
    out = []
    for key, rows in parts.groupby(SETTING):
        repeats = rows.repeat.nunique()
        blocks = rows[rows.layer >= 0]
        measured = blocks.layer.nunique()
        record = {**dict(zip(SETTING, key, strict=True)), "blocks_measured": measured}
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
        f"| backend | protocol | network | arch | blocks measured | outside blocks GB | "
        f"per block GB | {args.layers} blocks + outside GB | rounds | per block s | "
        f"{args.layers} blocks + outside s |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in table.itertuples():
        print(
            f"| {r.backend} | {r.protocol} | {r.network} | {r.arch} | {r.blocks_measured} | "
            f"{r.outside_bytes / 1e9:.3f} | {r.block_bytes / 1e9:.3f} | "
            f"{r.model_bytes / 1e9:.2f} | {r.model_rounds:.0f} | {r.block_wall_s:.1f} | "
            f"{r.model_wall_s:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
