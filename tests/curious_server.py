"""A curious server: `python -m tests.curious_server <mpc.server arguments>`.

Runs the real server unchanged, with the recording hooks of `tests.curious_recorder` installed at
import time. The hooks must live in the per-query party process too: `multiprocessing` "spawn"
re-imports this module there as `__mp_main__`, which runs the top level below again (and
`mpc.server._server_party` looks `run_party` up in `mpc.server`, where it is wrapped). Each
session's transcript (rank 0's view) is saved to `$CURIOUS_TRANSCRIPT`.
"""

from __future__ import annotations

import mpc.server
from tests.curious_recorder import install, record_sessions_of

install()
record_sessions_of(mpc.server, "server")

if __name__ == "__main__":
    mpc.server.cli()
