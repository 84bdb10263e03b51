"""The one base of every user-facing failure: bad input, a bad file, an unusable setting, a peer
that went away. Every program's `models.cli.run_main` turns it into one line on stderr and a
non-zero exit; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """A failure caused by input or environment, reported as one line that says what to do."""
