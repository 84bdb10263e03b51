"""The parties of a session: who holds what, and the rank each one takes in the MPC group.

The server holds the weights (rank 0), the client holds the prompt and alone learns the output
(rank 1); a trusted dealer, when the run uses one, takes rank 2 (CrypTen's TTP takes rank =
world size). Cost tables and results name the two parties by the words below; TRUST_LABELS says
what each dealer mode lets whom see.
"""

from __future__ import annotations

SERVER, CLIENT = 0, 1
DEALER = 2
PARTY_NAMES = {SERVER: "server", CLIENT: "client"}


def peer_of(rank: int) -> int:
    """The other party of a two-party session."""
    if rank not in PARTY_NAMES:
        raise ValueError(f"rank {rank} is not a party (server {SERVER}, client {CLIENT})")
    return CLIENT if rank == SERVER else SERVER


# What each dealer mode lets whom see; printed and recorded with every run (`dealer` column).
TRUST_LABELS = {
    "ttp": "trusted third-party dealer process: neither party sees the other's secrets",
    "tfp": "INSECURE: trusted first party, the server (party 0) makes every triple and sees all",
    "none": "dealer-free (OT and HE): secure against a semi-honest server or client",
}
