"""The dealer's store of the servers' weight-mask shares B = W - D (optimized profile).

B is uniform to the dealer, but B plus any client's seed D is the server's weights: the store is
private to the dealer's user (folders 0700, files 0600, created so; a folder that is not private
is refused, never chmod-ed into shape), kept in RAM-backed /dev/shm where it has room, and removed
when the dealer exits (and swept when a dealer died).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

import torch

KEPT_MODELS = 2  # the dealer keeps the masks of this many most recently stored models
SHARED_MEMORY = Path("/dev/shm")
IN_MEMORY_MIN_FREE = 4 << 30  # two GPT-2-small models' B (~1 GB each) with room to spare


def mask_store_bases() -> list[Path]:
    """Where dealers keep their stores: RAM-backed /dev/shm first (B never reaches a disk), the
    temporary directory where /dev/shm is missing or small (a container's default is 64 MB)."""
    bases = [SHARED_MEMORY] if SHARED_MEMORY.is_dir() else []
    return [*bases, Path(tempfile.gettempdir())]


def private_folder(path: Path) -> Path:
    """`path` as a folder only this user can enter (0700), created so: a store of B = W - D is
    the server's weights to anyone who also holds a query's seed D. An existing folder must
    already be private and ours; it is never chmod-ed into shape."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)  # the umask can only take bits away
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{path} is not a private folder of this user (mode {stat.filemode(info.st_mode)}): "
            "remove it and restart the dealer"
        )
    return path


def stores_under(base: Path) -> Path:
    """This user's folder of dealer stores under `base` (one subfolder per dealer pid)."""
    return base / f"aero-pi-dealer-masks-{os.getuid()}"


def create_mask_store(dealer_pid: int) -> Path:
    """The dealer's own private store folder, in memory where /dev/shm has room."""
    bases = mask_store_bases()
    base = next((b for b in bases if shutil.disk_usage(b).free >= IN_MEMORY_MIN_FREE), bases[-1])
    return private_folder(private_folder(stores_under(base)) / str(dealer_pid))


def sweep_mask_stores(own_pid: int | None = None) -> None:
    """Remove the mask folders of dealers no longer running (and `own_pid`'s, at its exit):
    a GPT-2-small model's B is ~1 GB."""
    for base in mask_store_bases():
        root = stores_under(base)
        if not root.is_dir() or root.is_symlink():
            continue
        for folder in root.iterdir():
            if not folder.name.isdigit():
                continue
            pid = int(folder.name)
            if pid == own_pid or not _running(pid):
                shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_private(path: Path, write) -> None:
    """Atomically write a 0600 file: `write(binary file)` fills a new sibling that is created
    with that mode (O_EXCL: never an existing file), then renamed onto `path`."""
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class MaskStore:
    """The dealer's copies of the servers' mask shares B, one folder per mask id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loaded: dict[tuple[str, str], torch.Tensor] = {}

    @classmethod
    def default(cls, dealer_pid: int) -> MaskStore:
        """The store of the dealer with that pid (made by `create_mask_store` at its start)."""
        for base in mask_store_bases():
            folder = stores_under(base) / str(dealer_pid)
            if folder.is_dir():
                return cls(private_folder(folder))
        return cls(create_mask_store(dealer_pid))

    def folder(self, mask_id: str) -> Path:
        if not (len(mask_id) == 16 and all(ch in "0123456789abcdef" for ch in mask_id)):
            raise ValueError(f"bad mask id {mask_id!r}")
        return self.root / mask_id

    def complete(self, mask_id: str) -> bool:
        return (self.folder(mask_id) / "complete").exists()

    def store(self, mask_id: str, key: str, share: torch.Tensor, last: bool) -> None:
        private_folder(self.root)
        folder = private_folder(self.folder(mask_id))
        write_private(folder / f"{key}.pt", lambda handle: torch.save(share, handle))
        if last:
            write_private(folder / "complete", lambda handle: None)
            self.prune(keep=mask_id)

    def load(self, mask_id: str, key: str) -> torch.Tensor:
        if (mask_id, key) not in self.loaded:
            path = self.folder(mask_id) / f"{key}.pt"
            self.loaded[(mask_id, key)] = torch.load(path, weights_only=True)
        return self.loaded[(mask_id, key)]

    def prune(self, keep: str) -> None:
        """Drop all but the KEPT_MODELS most recently completed models (GPT-2's B is ~1 GB)."""
        done = [p for p in self.root.iterdir() if (p / "complete").exists() or p.name == keep]
        done.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in done[KEPT_MODELS:]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
