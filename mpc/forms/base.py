"""One nonlinearity form: its implementation and its cost formula side by side (see `mpc.forms`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Form:
    name: str
    crypten: Callable[..., Any]  # (inputs..., approx=ApproxConfig) -> MPCTensor
    cost: Callable[[Any, tuple[int, ...]], Any]  # (CrypTenCosts, shape) -> Cost
    jax: Callable[[Any], Any] | None = None  # SPU: the same function on jax arrays
    max_row: int | None = None  # softmax: the longest row it is accurate on (None: any)
