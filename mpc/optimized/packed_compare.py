"""Packed secure comparison (x < 0) for two-party CrypTen: a drop-in for `MPCTensor._ltz`.

Protocol. x = x0 + x1 mod 2^64, share x0 held by party 0 (rank 0) and x1 by party 1. Then
    [x < 0] = sign bit of x = x0[63] ^ x1[63] ^ carry,
carry being the carry out of the low 63 bits of x0 + x1. Only that carry is computed:
1. Bit-slice (local): each party transposes its share, N elements x 64 bits, into 64 bit planes of
   W = ceil(N / 64) words (plane i holds bit i of every element). A fixed bit permutation is linear
   over GF(2), so planes of shares are shares of planes: party 0's planes and zeros are an XOR
   sharing (x0, 0) of the bits a of x0, zeros and party 1's planes one (0, x1) of the bits b of x1,
   and each party's own planes are its share of the propagate bits p = a ^ b.
2. Generate: g_i = a_i & b_i, i = 0..62: one Beaver AND of 63 planes.
3. Carry tree (Brent-Kung, carry only), 6 levels, one Beaver AND round each: adjacent groups
   (lo, hi) combine to G = G_hi ^ (P_hi & G_lo), P = P_hi & P_lo. The two products share P_hi, so
   it is masked and opened once, against a triple with a of shape (k, W) and b of shape (2, k, W)
   (the dealer broadcasts a & b). An odd top group passes up unchanged; the last level needs only
   G. Groups per level: 63 -> 32 -> 16 -> 8 -> 4 -> 2 -> 1.
4. carry ^ a_63 ^ b_63 is an XOR sharing of the sign plane.
5. Packed one-bit B2A: dealer bits r shared both ways (`B2A_rng`); the binary shares of r are
   packed into a plane, z = sign ^ r is opened (W words), and [x < 0] = r + z - 2 r z per element.

Security (semi-honest parties and dealer, as CrypTen's own protocols): the only values opened are
x ^ a and y ^ b of Beaver ANDs, with fresh uniform dealer masks neither party knows alone, and
z = sign ^ r with r a uniform bit neither party knows: each opening is uniform and independent of
x, so no generate, propagate, carry or sign bit is revealed. Starting from the unrandomized
sharings (x0, 0) and (0, x1) changes no opened value's distribution; the output share is randomized
by the dealer's r. With the TFP dealer party 0 makes all randomness and can decrypt, as in stock.

Cost per party as CrypTen's communicator logs it (all_reduce of n elements = 16 n B, one round per
call): planes opened = 126 (generate) + 93 + 48 + 24 + 12 + 6 + 2 (tree) = 311, plus 1 for the B2A:
16 W (311 + 1) = 4992 W B, 8 rounds: 78 B/element for N a multiple of 64 (stock: 432 B, 8
rounds). A TTP dealer adds to rank 0 only, per request, the request dict, the result's torch.Size
and 8 B per element of its share (`ttp_request_bytes`), 3 rounds: 7 triples of 186 W words in all
and B2A bits of N elements, 24 rounds. `CrypTenCosts.packed_ltz` gives the exact figure.
Measured for N = 128 x 3072: 78.0 B/element (TTP server 109.25), stock 432 (544); one thread,
about 0.1 CPU s per party per call against 0.4-0.7 s stock (the bit-sliced tree works on N / 64
words).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Iterator

import torch

from mpc.compat import import_crypten
from mpc.optimized.carry_tree import (
    SUM_BITS,
    WORD,
    product_plan,
    radix4_levels,
    tree_levels,
    words_for,
)

crypten = import_crypten()
comm = crypten.communicator
MPCTensor = crypten.mpc.MPCTensor
FixedPointEncoder = crypten.encoder.FixedPointEncoder

# Butterfly stages of the 64 x 64 bit-matrix transpose: (distance j, low j bits of every 2j).
_STAGES = [
    (j, sum(((1 << j) - 1) << s for s in range(0, WORD, 2 * j))) for j in (32, 16, 8, 4, 2, 1)
]
_STOCK_LTZ = MPCTensor._ltz
_STOCK_RELU = MPCTensor.relu
_RADIX = [2]  # the carry tree of this process's packed comparisons (comparison "packed4": 4)


def _to_planes(share: torch.Tensor) -> torch.Tensor:
    """(N,) int64 -> (64, W): bit k of word w of plane i = bit i of element 64 w + k."""
    words = words_for(share.numel())
    block = torch.zeros(words * WORD, dtype=torch.long, device=share.device)
    block[: share.numel()] = share
    for j, mask in _STAGES:  # swap the off-diagonal j x j sub-blocks of every 2j x 2j block
        pairs = block.view(words, WORD // (2 * j), 2, j)
        lo, hi = pairs[:, :, 0], pairs[:, :, 1]
        swap = ((lo >> j) ^ hi) & mask  # `>>` sign-extends, but the mask drops the top j bits
        hi ^= swap
        lo ^= swap << j
    return block.view(words, WORD).t().contiguous()


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(N,) of 0/1 -> (W,) words; distinct powers of two, so the int64 sum never overflows."""
    padded = torch.zeros(words_for(bits.numel()) * WORD, dtype=torch.long, device=bits.device)
    padded[: bits.numel()] = bits
    return (padded.view(-1, WORD) << _shifts(bits.device)).sum(1)


def _unpack_bits(words: torch.Tensor, count: int) -> torch.Tensor:
    return ((words.unsqueeze(1) >> _shifts(words.device)) & 1).reshape(-1)[:count]


def _shifts(device: torch.device) -> torch.Tensor:
    # made per call, not at import: torch work in a parent process can hang the parties it forks
    return torch.arange(WORD, dtype=torch.long, device=device)


def _open(masked: torch.Tensor) -> torch.Tensor:
    return comm.get().all_reduce(masked, op=torch.distributed.ReduceOp.BXOR)


def _and(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Beaver AND of XOR shares, x broadcast against y: x ^ a is opened once however many rows of
    y it multiplies; all masked values go in one all_reduce (one round)."""
    a, b, c = crypten.mpc.get_default_provider().generate_binary_triple(
        x.size(), y.size(), device=x.device
    )
    opened = _open(torch.cat([(x ^ a.share).reshape(-1), (y ^ b.share).reshape(-1)]))
    eps, delta = opened[: x.numel()].view_as(x), opened[x.numel() :].view_as(y)
    z = c.share ^ (eps & b.share) ^ (a.share & delta)
    if comm.get().get_rank() == 0:  # a public term enters one share only
        z ^= eps & delta
    return z


def _carry(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Shares of the carry out of bits 0..62 of a + b, from plane shares (64, W) of a, b, a ^ b."""
    g, p = _and(a[:SUM_BITS], b[:SUM_BITS]), p[:SUM_BITS]
    for pairs, g_only in tree_levels():
        lo, hi = slice(0, 2 * pairs, 2), slice(1, 2 * pairs, 2)
        rows = g[lo].unsqueeze(0) if g_only else torch.stack([g[lo], p[lo]])
        products = _and(p[hi], rows)
        g_next, p_next = g[hi] ^ products[0], None if g_only else products[1]
        if len(g) % 2:  # odd top group: nothing above it to combine with
            g_next = torch.cat([g_next, g[-1:]])
            p_next = torch.cat([p_next, p[-1:]])
        g, p = g_next, p_next
    return g[0]


def _mask_products(size: tuple[int, ...], subsets: list, device) -> tuple[torch.Tensor, ...]:
    """XOR shares of fresh uniform masks r of `size` (k, groups, W) and of the products of the
    masks in each of `subsets` (index tuples into k): (r, products (len(subsets), groups, W)).
    The TTP dealer makes them as it makes Beaver AND triples (party 1 draws its shares from the
    generator the dealer seeded; party 0 asks for its product shares); with TFP party 0 makes
    them and shares them."""
    from crypten.common.rng import generate_kbit_random_tensor
    from crypten.mpc.primitives import BinarySharedTensor

    product_size = (len(subsets), *size[1:])
    rank = comm.get().get_rank()
    if crypten.cfg.mpc.provider == "TTP":
        from crypten.mpc.provider.ttp_provider import TTPClient

        generator = TTPClient.get().get_generator(device=device)
        masks = generate_kbit_random_tensor(size, generator=generator, device=device)
        if rank == 0:
            products = TTPClient.get().ttp_request("products", device, size, subsets)
        else:
            products = generate_kbit_random_tensor(product_size, generator=generator, device=device)
        return masks, products
    plain = generate_kbit_random_tensor(size, device=device)  # TFP: party 0's draw is the value
    products = mask_products(plain, subsets)
    return BinarySharedTensor(plain, src=0).share, BinarySharedTensor(products, src=0).share


def answer_products(dealer, size, subsets) -> torch.Tensor:
    """The TTP dealer's side of `_mask_products`: party 0's shares of the mask products (the
    masks are the XOR of both parties' generator draws, as for CrypTen's AND triples)."""
    masks = dealer._get_binary_PRSS(size)
    products = mask_products(masks, subsets)
    return products ^ dealer._get_binary_PRSS(products.size(), remove_rank=True)


def mask_products(masks: torch.Tensor, subsets: list) -> torch.Tensor:
    """The AND of the masks in each subset: (len(subsets), groups, W) (dealer and TFP)."""
    return torch.stack(
        [functools.reduce(torch.bitwise_and, (masks[i] for i in s)) for s in subsets]
    )


def _multi_and(inputs: torch.Tensor, terms: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """XOR shares of the product of the inputs (k, groups, W) named by each term, all in one
    round: each input a term multiplies is opened once as e = u ^ r, and the product of
    (e_i ^ r_i) over a term expands to the XOR over subsets S of (AND of the public e outside S)
    & (shares of the AND of the masks in S)."""
    opened, subsets = product_plan(terms)
    position = {i: n for n, i in enumerate(opened)}
    by_position = [tuple(position[i] for i in subset) for subset in subsets]  # rows of the masks
    masks, products = _mask_products((len(opened), *inputs.shape[1:]), by_position, inputs.device)
    e = _open(inputs[opened] ^ masks).view_as(masks)
    share_of = {subset: products[n] for n, subset in enumerate(subsets)}
    ones = torch.full_like(inputs[0], -1)
    first = comm.get().get_rank() == 0
    results = []
    for term in terms:
        if len(term) == 1:
            results.append(inputs[term[0]])
            continue
        total = torch.zeros_like(inputs[0])
        for size in range(len(term) + 1):
            for subset in itertools.combinations(sorted(term), size):
                public = ones
                for i in term:
                    if i not in subset:
                        public = public & e[position[i]]
                if size == 0:
                    total ^= public if first else 0  # the all-public term: one party adds it
                elif size == 1:
                    total ^= public & masks[position[subset[0]]]
                else:
                    total ^= public & share_of[subset]
        results.append(total)
    return results


def _carry_radix4(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Shares of the carry out of bits 0..62 of a + b in three rounds: groups of 4 bits, then of
    4 groups, then of 4 (carry_tree.radix4_levels); bit 63 is padded as a pure propagate."""
    first = comm.get().get_rank() == 0
    top = torch.full_like(a[0], -1) if first else torch.zeros_like(a[0])
    a = torch.cat([a[:SUM_BITS], top[None]])  # a_63 = 1 (party 0's share), b_63 = 0: p_63 = 1
    b = torch.cat([b[:SUM_BITS], torch.zeros_like(top)[None]])
    p = torch.cat([p[:SUM_BITS], top[None]])
    words = a.shape[-1]
    grouped = [t.view(16, 4, words).transpose(0, 1) for t in (a, b, p)]  # (4, 16, W) each
    inputs = torch.cat(grouped)  # (12, 16, W): a_0..a_3, b_0..b_3, p_0..p_3
    for groups, terms in radix4_levels():
        names = list(terms)
        flat = [t for name in names for t in terms[name]]
        outputs = iter(_multi_and(inputs, flat))
        result = {}
        for name in names:
            parts = [next(outputs) for _ in terms[name]]
            result[name] = functools.reduce(torch.bitwise_xor, parts)
        if groups == 1:
            return result["G"][0]
        # the next level's groups of 4: G_0..G_3, P_0..P_3 of consecutive groups
        regroup = [result[n].view(groups // 4, 4, words).transpose(0, 1) for n in ("G", "P")]
        inputs = torch.cat(regroup)
    raise AssertionError("the radix-4 plan ends with one group")


def _b2a_packed(sign: torch.Tensor, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Arithmetic shares (of `shape`) of the XOR-shared sign plane's bits: one W-word opening."""
    r_arith, r_bin = crypten.mpc.get_default_provider().B2A_rng(shape, device=device)
    count = math.prod(shape)
    z = _unpack_bits(_open(sign ^ _pack_bits(r_bin.share.reshape(-1) & 1)), count).view(shape)
    share = r_arith.share * (1 - 2 * z)  # r ^ z = r + z - 2 r z
    if comm.get().get_rank() == 0:
        share += z
    return share


def _sign_plane(x: MPCTensor) -> torch.Tensor:
    """XOR shares of the packed sign plane (bit 63 of x0 + x1) of x's elements."""
    rank = comm.get().get_rank()
    planes = _to_planes(x.share.reshape(-1))
    zeros = torch.zeros_like(planes)
    a, b = (planes, zeros) if rank == 0 else (zeros, planes)
    carry = _carry_radix4 if _RADIX[0] == 4 else _carry
    return carry(a, b, planes) ^ planes[WORD - 1]


def packed_relu(x: MPCTensor) -> MPCTensor:
    """x [x >= 0] in the comparison's rounds: the packed B2A's opening z = sign ^ r also carries
    the Beaver opening of x r (x times the dealer's arithmetic bit r, which does not depend on z):
    with [x < 0] = r + z - 2 r z, relu(x) = x (1 - z) - x r (1 - 2 z), all local afterwards. Needs
    the pair channel (one opening of XOR and additive shares at once: `transport.Mixed`)."""

    from mpc.session.transport import Mixed

    if comm.get().get_world_size() != 2 or x.ptype != crypten.mpc.arithmetic:
        return _STOCK_RELU(x)
    sign = _sign_plane(x)
    shape, device = x.share.size(), x.share.device
    provider = crypten.mpc.get_default_provider()
    r_arith, r_bin = provider.B2A_rng(shape, device=device)
    a, b, c = provider.generate_additive_triple(shape, shape, "mul", device=device)
    words = sign.numel()
    masked_sign = sign ^ _pack_bits(r_bin.share.reshape(-1) & 1)
    flat = torch.cat(
        [masked_sign, (x.share - a.share).reshape(-1), (r_arith.share - b.share).reshape(-1)]
    )
    opened = comm.get().all_reduce(flat, op=Mixed(words))
    count = x.share.numel()
    z = _unpack_bits(opened[:words], count).view(shape)
    eps, delta = opened[words : words + count].view(shape), opened[words + count :].view(shape)
    xr = c.share + eps * b.share + a.share * delta  # x r: integer r, so x's scale, no truncation
    first = comm.get().get_rank() == 0
    if first:
        xr += eps * delta
    share = x.share * (1 - z) - xr * (1 - 2 * z)
    result = MPCTensor.from_shares(share, precision=None)
    result.encoder = x.encoder
    return result


def packed_ltz(x: MPCTensor) -> MPCTensor:
    """[x < 0] as `MPCTensor._ltz` returns it (arithmetic 0/1 shares, encoder scale 1, same shape)
    at about 78 B/element instead of 432, same rounds. Other world sizes, binary ptypes: stock."""
    if comm.get().get_world_size() != 2 or x.ptype != crypten.mpc.arithmetic:
        return _STOCK_LTZ(x)
    share = _b2a_packed(_sign_plane(x), x.share.size(), x.share.device)
    # As stock `_B2A`: result precision 0 for unscaled x, else the default; the bit is scaled by
    # the ratio of that scale to x's (1 for ordinary inputs); then the encoder reads it as 1.
    precision = 0 if x.encoder.scale == 1 else None
    factor = FixedPointEncoder(precision_bits=precision).scale // x.encoder.scale
    result = MPCTensor.from_shares(share * factor if factor != 1 else share, precision=precision)
    result.encoder._scale = 1
    return result


@contextlib.contextmanager
def use_packed_ltz(enabled: bool = True) -> Iterator[None]:
    """Within the block every comparison CrypTen builds on `_ltz` (lt, gt, le, ge, sign, relu,
    abs, max, argmax, ...) uses `packed_ltz` (or stock, with enabled=False); restored on exit."""
    previous = MPCTensor._ltz
    MPCTensor._ltz = packed_ltz if enabled else _STOCK_LTZ
    try:
        yield
    finally:
        MPCTensor._ltz = previous


def use_radix(radix: int) -> None:
    """The packed comparison's carry tree in this (session) process: 2 (Brent-Kung, 7 AND
    rounds) or 4 (three rounds of multi-input ANDs)."""
    if radix not in (2, 4):
        raise ValueError(f"radix {radix}: 2 or 4")
    _RADIX[0] = radix
