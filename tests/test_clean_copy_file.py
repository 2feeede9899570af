"""The clean copy's file copier: the source's bytes and mtime, mode 0644, any umask."""

import os

import pytest

from dedup_assets.assets.clean_dataset import _copy_file


@pytest.mark.parametrize("fallback", ["none", "refused", "copies_nothing"])
@pytest.mark.parametrize("size", [0, 1, 70_000, 2_500_000])  # the last: chunks in a plain copy
def test_copy_keeps_bytes_and_mtime_and_sets_0644(tmp_path, monkeypatch, fallback, size):
    src = tmp_path / "ñame with space.png"
    data = os.urandom(size)
    src.write_bytes(data)
    os.chmod(src, 0o400)
    os.utime(src, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    if fallback == "refused":  # a file system pair copy_file_range refuses: a plain copy

        def refuse(*args, **kwargs):
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    if fallback == "copies_nothing":  # returns 0 before the end: never a short copy
        monkeypatch.setattr(os, "copy_file_range", lambda *args, **kwargs: 0)
    old = os.umask(0o077)
    try:
        _copy_file(os.fsencode(src), os.fsencode(tmp_path / "copy.png"))
    finally:
        os.umask(old)
    dest = tmp_path / "copy.png"
    assert dest.read_bytes() == data
    assert dest.stat().st_mtime_ns == src.stat().st_mtime_ns == 1_700_000_000_987_654_321
    assert dest.stat().st_mode & 0o777 == 0o644
    assert src.stat().st_mode & 0o777 == 0o400 and src.read_bytes() == data
    assert dest.stat().st_ino != src.stat().st_ino
    with pytest.raises(FileExistsError):  # never over an existing file
        _copy_file(os.fsencode(src), os.fsencode(dest))
