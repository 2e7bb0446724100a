"""Writing output atomically: build in a temporary sibling, rename at the end.

Every writer in lorakit uses one of two helpers: folders (adapters, merged models, cached
training results, run folders) go through :func:`atomic_folder`, single files (JSON reports,
caches, archives) through :func:`atomic_file`, so a failure or an interrupt leaves nothing
half-written behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import LorakitError


def temp_sibling(out: str | os.PathLike, overwrite: bool = True) -> tuple[Path, Path]:
    """``(out, tmp)``: a new empty temporary folder beside ``out``; the first half of :func:`atomic_folder`.

    ``overwrite=False`` refuses an existing ``out`` (one-line :class:`LorakitError`) before
    anything is written; an unwritable parent is a one-line error too.
    """
    out = Path(out)
    return out, _make_temp(out, overwrite, "output folder",
                           lambda parent: Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent)))


def _make_temp(out: Path, overwrite: bool, what: str, make) -> Path:
    """``make(parent)`` beside ``out`` after the checks both writers share: ``out`` must not exist
    unless ``overwrite``, and its folder must be creatable and writable (one-line errors)."""
    if out.exists() and not overwrite:
        raise LorakitError(f"{out} already exists; choose another {what} or pass overwrite")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return make(parent)
    except OSError as exc:
        raise LorakitError(f"cannot write to {parent} ({exc.strerror}); choose a writable {what}") from None


def commit_folder(tmp: Path, out: Path) -> None:
    """Replace ``out`` (if any) by the finished ``tmp``; the second half of :func:`atomic_folder`.

    An existing ``out`` is first renamed aside (one ``rename``), then ``tmp`` takes its name, and
    only then is the old copy deleted: at every instant either the old or the new folder exists
    under ``out`` (or, between the two renames, the old one beside it), never neither half-deleted.
    """
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent)) / out.name
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
            shutil.rmtree(old.parent, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on any error it is removed."""
    out, tmp = temp_sibling(out, overwrite)
    try:
        yield tmp
        commit_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside ``out``; on success it replaces ``out``, on any error it is removed.

    The one writer for single files (JSON reports, cached data, downloaded archives): the caller
    writes the yielded path however it likes; ``out`` appears only once the ``with`` block ends
    without an error, so a reader never sees a half-written file. ``overwrite=False`` refuses an
    existing ``out`` before anything is written; an unwritable folder is a one-line error.
    """
    out = Path(out)

    def make(parent: Path) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=parent)
        os.close(fd)
        return Path(name)

    tmp = _make_temp(out, overwrite, "output file", make)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the permissions open() would
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def checkout_data_dir() -> Path:
    """``data/`` of the checkout lorakit runs from (task cards, committed reference runs), wherever a module lies."""
    return Path(__file__).resolve().parent.parent / "data"
