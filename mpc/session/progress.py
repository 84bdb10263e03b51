"""Where a long secure query is: one tick per transformer block of each generated token.

A GPT-2 query over a WAN runs for minutes. The client shows a tqdm bar (elapsed and estimated
remaining time) on the user's terminal, or, with `--progress lines`, one machine-readable line per
block on stdout ("progress: token 1/1 layer 3/12 elapsed 41.2 s"), which `bench/run.py` relays.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

MODES = ("auto", "bar", "lines", "none")
LINE_PREFIX = "progress: "


def user_terminal() -> Any:
    """A text stream on the user's stderr, even while gloo's noise is diverted from fd 2."""
    from mpc.session import guards

    if guards._user_stderr is None:
        return sys.stderr
    return os.fdopen(os.dup(guards._user_stderr), "w")


class QueryProgress:
    """Ticks `layer(step, layer)` for `tokens` forward passes of `layers` blocks each."""

    def __init__(self, mode: str, layers: int, tokens: int) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}; choose one of {MODES}")
        self.layers, self.tokens, self.mode = layers, tokens, mode
        self.started = time.perf_counter()
        self.bar = None
        if mode in ("auto", "bar"):
            from tqdm import tqdm

            stream = user_terminal()
            quiet = mode == "auto" and not stream.isatty()
            self.bar = tqdm(total=layers * tokens, unit="block", file=stream, disable=quiet,
                            desc="secure query", leave=False)  # fmt: skip

    def layer(self, step: int, layer: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
        elif self.mode == "lines":
            elapsed = time.perf_counter() - self.started
            print(
                f"{LINE_PREFIX}token {step + 1}/{self.tokens} layer {layer}/{self.layers} "
                f"elapsed {elapsed:.1f} s",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def watch_blocks(model: Any, on_layer) -> list:
    """Call `on_layer(layer)` (1-based) after each transformer block's forward; the handles."""
    return [
        block.register_forward_hook(lambda *_, number=number: on_layer(number))
        for number, block in enumerate(model.transformer.h, start=1)
    ]
