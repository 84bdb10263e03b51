"""The one cost type: what one party spends on one operation, measured or predicted.

Measurements (`mpc.measure.CostRecorder`, the SPU session) fill every field; the analytic model
(`mpc.cost`) fills bytes and rounds, the two figures it predicts exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Cost:
    bytes: float = 0.0  # this party's logged traffic, both directions
    rounds: float = 0.0  # communication calls (CrypTen) or messages sent (SPU)
    comm_s: float = 0.0  # seconds inside communication calls
    wall_s: float = 0.0
    cpu_s: float = 0.0
    calls: int = 0  # measured spans merged into this one

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(a + b for a, b in zip(self.values(), other.values(), strict=True)))

    def __sub__(self, other: Cost) -> Cost:
        return Cost(*(a - b for a, b in zip(self.values(), other.values(), strict=True)))

    def __mul__(self, times: int) -> Cost:
        return Cost(*(value * times for value in self.values()))

    __rmul__ = __mul__

    def values(self) -> tuple:
        return dataclasses.astuple(self)

    def replace(self, **changes) -> Cost:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


ZERO = Cost()
