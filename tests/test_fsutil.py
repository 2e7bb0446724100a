"""lorakit.fsutil: the two atomic writers leave either the finished output or nothing."""

import pytest

from lorakit.errors import LorakitError
from lorakit.fsutil import atomic_file, atomic_folder


def test_atomic_file_appears_only_on_success(tmp_path):
    out = tmp_path / "sub" / "report.json"
    with atomic_file(out) as tmp:
        tmp.write_text("{}")
        assert not out.exists() and tmp.parent == out.parent
    assert out.read_text() == "{}"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.json"]


def test_atomic_file_error_keeps_old_and_leaves_no_temp(tmp_path):
    out = tmp_path / "report.json"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_atomic_file_refuses_existing_without_overwrite(tmp_path):
    out = tmp_path / "report.json"
    out.write_text("old")
    with pytest.raises(LorakitError, match="already exists"):
        with atomic_file(out, overwrite=False):
            pass
    assert out.read_text() == "old"


def test_atomic_folder_interrupt_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out) as tmp:
            (tmp / "a.txt").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_gets_the_permissions_open_would_give(tmp_path):
    import os

    out = tmp_path / "report.json"
    with atomic_file(out) as tmp:
        tmp.write_text("{}")
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_commit_folder_replaces_an_existing_folder_and_cleans_up(tmp_path):
    from lorakit.fsutil import commit_folder

    out, tmp = tmp_path / "out", tmp_path / "new"
    out.mkdir()
    (out / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    commit_folder(tmp, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_commit_folder_failure_keeps_the_old_folder(tmp_path, monkeypatch):
    import os

    from lorakit import fsutil

    out, tmp = tmp_path / "out", tmp_path / "new"
    out.mkdir()
    (out / "old.txt").write_text("old")
    tmp.mkdir()
    real = os.replace
    calls = []

    def fail_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", fail_second)
    with pytest.raises(KeyboardInterrupt):
        fsutil.commit_folder(tmp, out)
    monkeypatch.setattr(fsutil.os, "replace", real)
    assert (out / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]
