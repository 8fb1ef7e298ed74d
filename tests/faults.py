"""Shared helpers of the fault-injection tests: a warm CLI launcher, a full disk, file surgery, checks.

Run as a script (`python tests/faults.py serve`) this module is the launcher's server: it imports the
command line once, then forks one child per request, so that each killed-and-resumed run is a real
process (SIGKILL and all) without paying the interpreter's import time again.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
import traceback
import types
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMP_NAME = re.compile(r"\.(.+)\.[^.]+\.tmp")  # atomic_write_bytes' and write_jsonl's temp files

# -- a warm command-line launcher --------------------------------------------------------------


class WarmCli:
    """Starts `blip-lora` command lines as forked children of a server that has imported everything.

    `start` returns the child's pid (kill it with os.kill); `wait` returns its exit code (negative:
    killed by that signal). Each child's stdout and stderr go to files.
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._server = subprocess.Popen([sys.executable, __file__, "serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env or cli_env(), cwd=REPO)
        assert self._ask({"op": "ping"}) == {"ok": True}

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None, slow_write: float = 0.0) -> int:
        """slow_write: seconds the child pauses before each atomic rename, so that a kill can land in a write."""
        return self._ask({"op": "run", "argv": argv, "log": str(log), "env": env or {},
                          "slow_write": slow_write})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"op": "wait", "pid": pid})["rc"]

    def run(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        return self.wait(self.start(argv, log, env))

    def close(self) -> None:
        self._server.stdin.close()
        self._server.wait(timeout=30)

    def _ask(self, request: dict) -> dict:
        self._server.stdin.write(json.dumps(request) + "\n")
        self._server.stdin.flush()
        line = self._server.stdout.readline()
        if not line:
            raise RuntimeError(f"the launcher died (exit code {self._server.poll()})")
        return json.loads(line)


def _serve() -> None:
    """The launcher's server loop: one JSON request per stdin line, one JSON reply per stdout line."""
    import blip_lora_core.train.loop  # noqa: F401 - the slow imports, done once before forking
    from blip_lora_training.cli import main

    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "run":
            pid = os.fork()
            if pid == 0:
                _child(main, request)
            reply = {"pid": pid}
        elif request["op"] == "wait":
            _, status = os.waitpid(request["pid"], 0)
            reply = {"rc": os.waitstatus_to_exitcode(status)}
        else:
            reply = {"ok": True}
        print(json.dumps(reply), flush=True)


def _slow_renames(seconds: float) -> None:
    """In the child only: every atomic write pauses before its rename (its temporary file is complete)."""
    import blip_lora_core.atomic as atomic

    real_replace = os.replace

    def slow_replace(src, dst, **kwargs):
        time.sleep(seconds)
        return real_replace(src, dst, **kwargs)

    atomic.os = types.SimpleNamespace(**{**vars(os), "replace": slow_replace})


def _child(main: Callable[[list[str]], int], request: dict) -> None:
    """In the forked child: redirect output, run the command line like `python -m ...cli`, exit."""
    os.environ.update(request["env"])
    if request.get("slow_write"):
        _slow_renames(request["slow_write"])
    for fd, suffix in ((1, ".out"), (2, ".err")):
        target = os.open(request["log"] + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    code = 1
    try:
        code = main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - the traceback is what the test wants to see
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of CLI subprocesses: offline, quiet, this repository importable."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_cli(argv: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """`python -m blip_lora_training.cli ARGV` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "blip_lora_training.cli", *argv], capture_output=True,
                          text=True, timeout=timeout, env=cli_env(**env), cwd=REPO)


# -- what a user sees -------------------------------------------------------------------------


def error_lines(stderr: str) -> list[str]:
    """The `blip-lora CMD: error: ...` lines of a command's stderr."""
    return [line for line in stderr.splitlines() if re.match(r"blip-lora \w+: error: ", line)]


def assert_clean_error(code: int, stderr: str, *names: str) -> str:
    """Exit code 2, no traceback, exactly one error line, naming every one of names; returns that line."""
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# -- a full disk -------------------------------------------------------------------------------


class _FillingHandle:
    """A file object that accepts `room` bytes, then fails every write with ENOSPC (as a full disk does)."""

    def __init__(self, handle, room: int) -> None:
        self._handle, self._room = handle, room

    def write(self, data):
        if len(data) > self._room:
            self._handle.write(data[:self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)


@contextmanager
def full_disk(monkeypatch, *, room: int = 0, when: Callable[[str], bool] = lambda name: True):
    """Files opened for writing take `room` bytes (or characters), then every write raises ENOSPC.

    Covers os.fdopen (the atomic writers' temp files) and open() (logs); `when(file_name)` picks the
    files that hit the full disk. Yields the list of names that did.
    """
    import builtins

    real_fdopen, real_open, hit = os.fdopen, builtins.open, []

    def filling(handle, name: str):
        if when(name):
            hit.append(name)
            return _FillingHandle(handle, room)
        return handle

    def fdopen(fd, mode="r", *args, **kwargs):
        return filling(real_fdopen(fd, mode, *args, **kwargs), os.readlink(f"/proc/self/fd/{fd}"))

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writing = isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+")
        return filling(handle, os.fspath(file)) if writing else handle

    with monkeypatch.context() as patch:
        patch.setattr(os, "fdopen", fdopen)
        patch.setattr(builtins, "open", open_)
        yield hit


@contextmanager
def failing(monkeypatch, target, name: str, when: Callable[..., bool] = lambda *args: True):
    """target.name (os.fsync, os.replace ...) raises ENOSPC while when(*args) holds."""
    real = getattr(target, name)

    def fail(*args, **kwargs):
        if when(*args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(target, name, fail)
        yield


# -- files -------------------------------------------------------------------------------------


def temp_files(folder: Path) -> list[Path]:
    """Leftover temporary files of atomic writes under folder."""
    return sorted(p for p in folder.rglob(".*") if p.is_file() and TEMP_NAME.fullmatch(p.name))


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    """A safetensors file's JSON header and its tensor bytes."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]), data[8 + size:]


def join_safetensors(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + body


def same_adapter(a: Path, b: Path) -> bool:
    """Equal metadata and bit-for-bit equal tensors (safetensors writes metadata in a random order)."""
    import torch
    from safetensors.torch import load_file

    meta_a, meta_b = (split_safetensors(p.read_bytes())[0].get("__metadata__") for p in (a, b))
    tensors_a, tensors_b = load_file(a), load_file(b)
    return meta_a == meta_b and tensors_a.keys() == tensors_b.keys() and all(
        tensors_a[k].dtype == tensors_b[k].dtype and torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)


def log_losses(csv_path: Path) -> list[tuple[str, str]]:
    """(step, loss) of every row of a training log, as written."""
    import csv

    with open(csv_path, newline="", encoding="utf-8") as handle:
        return [(row["step"], row["loss"]) for row in csv.DictReader(handle)]


def flip_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


class MarkerPickle:
    """Unpickling this object creates a marker file: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@contextmanager
def time_limit(seconds: int):
    """AssertionError when the block runs longer than seconds (SIGALRM; no limit off the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def too_slow(signum, frame):
        raise AssertionError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def png_header(width: int, height: int) -> bytes:
    """A PNG claiming width x height RGB pixels that holds a few bytes of pixel data (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    _serve()
