"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
