"""The dealer's store of weight-mask shares B = W - D is private: with any query's seed D it is
the server's weights, so nobody but the dealer's own user may read it (folders 0700, files 0600,
created so even under a permissive umask), and a folder that is not private is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from mpc.optimized.mask_store import MaskStore, create_mask_store, private_folder, stores_under

MASK_ID = "0123456789abcdef"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_stored_masks_are_private_even_under_a_permissive_umask(tmp_path):
    previous = os.umask(0)
    try:
        store = MaskStore(tmp_path / "dealer" / "1234")
        (tmp_path / "dealer").mkdir(mode=0o700)
        store.store(MASK_ID, "transformer.wte.weight", torch.arange(6).view(2, 3), last=True)
    finally:
        os.umask(previous)
    folder = store.folder(MASK_ID)
    assert mode(store.root) == mode(folder) == 0o700
    files = sorted(folder.iterdir())
    assert [p.name for p in files] == ["complete", "transformer.wte.weight.pt"]
    assert all(mode(p) == 0o600 for p in files), {p.name: oct(mode(p)) for p in files}
    assert torch.equal(store.load(MASK_ID, "transformer.wte.weight"), torch.arange(6).view(2, 3))
    assert store.complete(MASK_ID)


def test_a_store_folder_that_others_can_enter_is_refused(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o755)
    with pytest.raises(PermissionError, match="not a private folder"):
        private_folder(folder)
    assert mode(folder) == 0o755, "never chmod-ed into shape"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_store_folder_owned_by_another_user_is_refused(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    with pytest.raises(PermissionError, match="not a private folder"):
        private_folder(folder)


def test_a_dealer_store_is_created_private_under_this_users_root():
    folder = create_mask_store(os.getpid())
    try:
        assert folder.parent == stores_under(folder.parent.parent)
        assert mode(folder) == mode(folder.parent) == 0o700
        assert MaskStore.default(os.getpid()).root == folder
    finally:
        folder.rmdir()
