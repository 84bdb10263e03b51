"""The vocabulary-sized products of the SPU forward, in slices that fit a memory budget.

The embedding is the client's one-hot prompt (T, V) times the server's table (V, C); the LM head is
the last position (1, C) times the table's transpose. At GPT-2's V = 50,257 one CHEETAH product of
that size holds every HE ciphertext of the table at once (it passed 16.5 GB here). Split the
vocabulary into slices: the embedding is the sum over slices of one-hot slice times table slice,
the logits are the slices' logits side by side. Each slice is its own SPU executable, so only one
slice's working memory is alive at a time. Slicing a secret-shared value is local, the sum and the
concatenation are local: the same values under the same security, only the products' sizes change.

The slice size comes from a memory estimate per protocol: peak RSS of one party during a slice's
product ~ a resident floor plus a per-element cost times the product's operand elements
(T x S + S x C), measured at GPT-2's shapes (`mpc.spu.vocab_memory`). Under CHEETAH the whole
50,257-word product would need ~120 GB; a 16 GB budget gives slices of ~6,200 words.
"""

from __future__ import annotations

from mpc.spu.settings import SpuSettings

GB = 1e9
# Measured per protocol with `python -m mpc.spu.vocab_memory --protocol semi2k cheetah --words 1024
# 4096` (T = 128, C = 768, the table's owner, the server, peaks highest: CHEETAH encodes the whole
# table slice for its HE product; 3.5 GB at 1,024 words, 10.5 GB at 4,096, the client under 1 GB):
# a line through the two peaks: intercept (process, SPU, HE set-up), slope per operand element.
RESIDENT_FLOOR_BYTES = {"semi2k": 0.48 * GB, "cheetah": 1.27 * GB}
BYTES_PER_ELEMENT = {"semi2k": 86.0, "cheetah": 2650.0}
MIN_SLICE = 64  # below it the per-executable overhead (compile, set-up messages) dominates


def product_bytes(settings: SpuSettings, seq_len: int, width: int, words: int) -> float:
    """Estimated peak RSS of one party while one slice of `words` words is multiplied."""
    elements = seq_len * words + words * width
    return RESIDENT_FLOOR_BYTES[settings.protocol] + BYTES_PER_ELEMENT[settings.protocol] * elements


def vocab_slice_for(settings: SpuSettings, seq_len: int, width: int, vocab_size: int) -> int:
    """Words per slice: `settings.vocab_slice` when set, else the largest slice whose estimate
    fits `settings.memory_budget_gb` (the whole vocabulary when it fits; MIN_SLICE at least)."""
    if settings.vocab_slice:
        return min(settings.vocab_slice, vocab_size)
    budget = settings.memory_budget_gb * GB - RESIDENT_FLOOR_BYTES[settings.protocol]
    words = int(budget / (BYTES_PER_ELEMENT[settings.protocol] * (seq_len + width)))
    return max(MIN_SLICE, min(vocab_size, words))


def vocab_slices(vocab_size: int, words: int) -> list[tuple[int, int]]:
    """[start, stop) of each slice, in order, covering the vocabulary."""
    return [(start, min(start + words, vocab_size)) for start in range(0, vocab_size, words)]
