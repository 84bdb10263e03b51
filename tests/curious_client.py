"""A curious client: `python -m tests.curious_client <mpc.client arguments>`.

Runs the real client unchanged (its party runs in this process) with the recording hooks of
`tests.curious_recorder` installed; the session's transcript (rank 1's view: what it received,
its own triple shares, its shares of the server's weights) is saved to `$CURIOUS_TRANSCRIPT`.
"""

from __future__ import annotations

import mpc.client
from tests.curious_recorder import install, record_sessions_of

install()
record_sessions_of(mpc.client, "client")

if __name__ == "__main__":
    mpc.client.cli()
