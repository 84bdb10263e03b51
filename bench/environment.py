"""What a result was measured on: versions, CPU, threads, git revision (saved as env.json)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import psutil

from models.checkpoint import git_revision


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_record(threads_per_party: int) -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch_threads_per_party": threads_per_party,
        "git_revision": git_revision(),
        "packages": {p: _version(p) for p in ("torch", "crypten", "numpy", "pandas")},
        "load_average_at_start": os.getloadavg(),
    }
