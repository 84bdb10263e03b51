"""Atomic file writes: write a temporary sibling, then rename over the target.

An interrupted run therefore never leaves a half-written checkpoint, CSV or JSON file: the target
is either the old file, absent, or the complete new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(temporary_path)`, then move the temporary file onto `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        write(partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda temporary: temporary.write_text(text))


def atomic_write_json(path: str | os.PathLike, record: Any) -> None:
    atomic_write_text(path, json.dumps(record, indent=1))
