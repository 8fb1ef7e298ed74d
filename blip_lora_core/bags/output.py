"""Outputs of the bag tools: checked before any work, never over an input, and written whole or not at all
(``atomic.staged_path``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer

from ..atomic import staged_path
from ..errors import BagError
from .reader import STRING_TYPE, TYPESTORE
from .storage import METADATA, STORAGE_SUFFIXES


def check_not_input(out: Path, bag: str | os.PathLike) -> None:
    """BagError when ``out`` is the input bag, contains it or lies inside it (symlinks resolved).

    A storage file given alone counts with its bag folder (where metadata.yaml lives) and its -wal file.
    """
    given = Path(bag)
    guarded = [given]
    if given.is_file():
        guarded += [given.with_name(given.name + companion) for companion in ("-wal", "-shm")]
        if (given.parent / METADATA).is_file():
            guarded.append(given.parent)
    target = Path(os.path.realpath(out))
    for path in guarded:
        real = Path(os.path.realpath(path))
        if target == real or (out.exists() and real.exists() and os.path.samefile(out, real)):
            relation = "is"
        elif target in real.parents:
            relation = "contains"
        elif real in target.parents:
            relation = "lies inside"
        else:
            continue
        raise BagError(f"{out} {relation} the input bag {path}; refusing to write there, even with --force "
                       f"(choose another --out)")


def check_output(out: Path, force: bool, looks_right: Callable[[Path], bool], what: str) -> None:
    """Refuse an ``out`` that cannot be created (a file on its path) or that would replace something other
    than an empty folder, unless ``force``; even then only if it ``looks_right``."""
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise BagError(f"{out}: cannot create it, {parent} is a file, not a folder")
            break
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    if not force:
        raise BagError(f"{out} exists and is not empty; pass --force to replace it")
    if out.is_symlink() or not looks_right(out):
        raise BagError(f"{out} does not look like {what}; refusing to replace it even with --force "
                       f"(remove it yourself)")


def looks_like_bag(path: Path) -> bool:
    """A bag folder (metadata.yaml) or a .db3/.mcap file: something --force may replace."""
    return (path / METADATA).is_file() if path.is_dir() else path.suffix in STORAGE_SUFFIXES


def write_strings(out: Path, topic: str, items: list[tuple[int, str]], *, storage: str = "mcap",
                  force: bool = False) -> None:
    """Write (time ns, text) pairs as std_msgs/String on ``topic`` into a new bag.

    ``out`` ending in .mcap or .db3 gives that single storage file; otherwise a bag folder with the
    given storage ("mcap" or "sqlite3"). The output appears whole, or not at all.
    """
    single = out.suffix in STORAGE_SUFFIXES
    check_output(out, force, looks_like_bag, "a ROS 2 bag")
    with staged_path(out) as staged:
        folder = staged.with_name("bag") if single else staged
        _write_bag(folder, topic, items, STORAGE_SUFFIXES.get(out.suffix, storage))
        if single:
            os.replace(next(p for p in folder.iterdir() if p.suffix == out.suffix), staged)


def _write_bag(folder: Path, topic: str, items: list[tuple[int, str]], storage: str) -> None:
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    string = TYPESTORE.types[STRING_TYPE]
    try:
        with Writer(folder, version=9, storage_plugin=plugin) as writer:
            conn = writer.add_connection(topic, STRING_TYPE, typestore=TYPESTORE)
            for time_ns, text in items:
                writer.write(conn, time_ns, bytes(TYPESTORE.serialize_cdr(string(data=text), STRING_TYPE)))
    except Exception as exc:  # rosbags WriterError, OSError (disk full), ...
        raise BagError(f"could not write bag {folder}: {exc}") from exc
