"""How the project writes files: a reader sees the old file (or folder) or the whole new one, never a
partial one, and a failure leaves the old one in place.

``atomic_write_bytes`` / ``atomic_write_text``: one file (temp file beside it, fsync, rename).
``write_jsonl``: rows as JSON Lines, written the same way.
``staged_path``: a whole output (a folder of images and annotations, a bag) built in a hidden sibling
folder and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import BlipLoraError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write data to a temporary file beside path, fsync it, then rename it over path.

    An I/O error (a full disk, say) raises BlipLoraError naming the file and leaves any previous file
    at path untouched; the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except OSError as error:
        _remove_quietly(tmp)
        raise BlipLoraError(f"could not write {path}: {error.strerror or error}") from error
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonl_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """Rows as JSON Lines: one object per line, UTF-8 characters kept as they are."""
    return "".join(json.dumps(dict(row), ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSONL atomically. A row that is not JSON-serialisable raises TypeError before anything
    is written; an I/O error raises BlipLoraError naming the file. Either way a previous file is untouched."""
    return atomic_write_text(path, jsonl_text(rows))


@contextmanager
def staged_path(out: str | os.PathLike) -> Iterator[Path]:
    """A path in a new hidden sibling folder of ``out``: create there (a file or a folder) what replaces ``out``.

    When the block ends without an error, everything created is fsynced and renamed over ``out`` (an old
    ``out`` is moved aside first, put back when the rename fails, deleted after). On any error ``out`` is left
    as it was and the staged copy is removed. BlipLoraError names ``out`` when the staging folder cannot be
    made or the result cannot be moved into place.
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as error:
        raise BlipLoraError(f"{out}: cannot create it: {error.strerror or error}") from error
    try:
        yield holder / out.name
        _fsync_tree(holder / out.name)
        _replace(holder / out.name, out)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder below a folder, so a rename never makes empty files durable."""
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _fsync_tree(child)
        fsync_dir(path)
    elif path.is_file() and not path.is_symlink():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _replace(staged: Path, out: Path) -> None:
    """Put staged at out: an old out (file or folder) is moved aside first and deleted once staged is in."""
    trash = None
    try:
        if out.exists() or out.is_symlink():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, trash / out.name)
        os.replace(staged, out)
    except OSError as error:
        if trash is not None and (trash / out.name).exists():
            os.replace(trash / out.name, out)
        raise BlipLoraError(f"could not move the output into place at {out}: {error.strerror or error}") from error
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(out.parent)


def _mode_for(path: Path) -> int:
    """Permissions of the file being replaced, or 0o644 for a new one (mkstemp's own are 0o600)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o644


def fsync_dir(folder: Path) -> None:
    """Make a rename in folder durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
