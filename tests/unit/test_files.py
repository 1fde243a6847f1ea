"""File modes: what is saved to be shared gets the usual mode for the umask; secrets are 0600 whatever it is."""

import os

import pytest

from edgelearn.files import atomic_write_bytes, write_private


@pytest.fixture
def umask():
    def set_to(value):
        os.umask(value)
    before = os.umask(0o022)
    yield set_to
    os.umask(before)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)],
                         ids=["umask-022", "umask-027", "umask-002"])
def test_saved_files_get_the_mode_the_umask_gives_and_secrets_stay_private(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_bytes(tmp_path / "model.edge", b"model")
    write_private(tmp_path / "site.key", b"secret")
    assert (tmp_path / "model.edge").stat().st_mode & 0o777 == expected
    assert (tmp_path / "site.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.edge", "site.key"]  # no temp file left
