"""Independent secret products in one round: CrypTen runs each Beaver multiply as its own round
(open x - a and y - b, then compute); products that do not depend on each other can open all
their masked operands in one batched opening instead.

The arithmetic is CrypTen's Beaver multiply, unchanged (z = c + e b + a d + e d per product, the
public e d added by one party, then the fixed-point rescaling CrypTen applies), so each product
is as secure and as accurate as `x * y`; only the openings share a round.
"""

from __future__ import annotations

from typing import Any

from mpc.compat import import_crypten


def parallel_mul(pairs: list[tuple[Any, Any]]) -> list[Any]:
    """[x * y for (x, y) in pairs] for MPCTensors (broadcasting as `*` does), in one round."""
    crypten = import_crypten()
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor
    from crypten.mpc.primitives.beaver import IgnoreEncodings

    provider = crypten.mpc.get_default_provider()
    triples, masked = [], []
    for x, y in pairs:
        xs, ys = x._tensor, y._tensor
        a, b, c = provider.generate_additive_triple(xs.size(), ys.size(), "mul", device=xs.device)
        triples.append((a, b, c))
        with IgnoreEncodings([a, b, xs, ys]):
            masked += [xs - a, ys - b]
    with IgnoreEncodings(masked):
        opened = ArithmeticSharedTensor.reveal_batch(masked)
    results = []
    for (x, y), (a, b, c), eps, delta in zip(
        pairs, triples, opened[0::2], opened[1::2], strict=True
    ):
        c._tensor += eps * b._tensor
        c._tensor += a._tensor * delta
        c += eps * delta  # public: party 0 adds it
        results.append(_rescaled(x, y, c))
    return results


def _rescaled(x: Any, y: Any, product: Any) -> Any:
    """The product's shares at the fixed-point scale CrypTen's `x * y` leaves (its rules: both
    operands scaled -> one truncation by the scale; else the scaled operand's encoder)."""
    result = x.shallow_copy()
    product.encoder = x._tensor.encoder if x.encoder.scale > 1 else y._tensor.encoder
    if x.encoder.scale > 1 and y.encoder.scale > 1:
        product = product.div_(x.encoder.scale)
    result._tensor = product
    return result
