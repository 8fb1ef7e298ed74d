"""A real Label Studio server on this machine, for the round-trip tests (tests/label_studio_server.py) and
bench/label_session.py: label-studio from the venv the Makefile builds (.venv/label-studio), SQLite in a given
folder, on a free localhost port, with a user, its legacy token and a personal access token."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXECUTABLE = Path(os.environ.get("BLIP_LORA_LABEL_STUDIO", REPO / ".venv" / "label-studio" / "bin" / "label-studio"))
START_LIMIT_S = 600  # a first start migrates a fresh SQLite database: about 30 s idle, minutes on a loaded machine
USER, PASSWORD = "labeller@example.com", "blip-lora-test-password"


class StartError(RuntimeError):
    """The server exited or did not answer /health in time (the message holds the log's tail)."""


@dataclass(frozen=True)
class Server:
    url: str
    legacy_token: str
    personal_token: str
    log: Path

    def api(self, method: str, path: str, payload=None, token: str | None = None):
        """A request as a labeller's browser or script makes it (legacy token unless another is given)."""
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Authorization": f"Token {token or self.legacy_token}", "Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        try:
            return json.loads(body)
        except ValueError:  # an image
            return body


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    """Until /health answers 200; StartError at once, with the log's tail, when the process exits first."""
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"label-studio exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)  # polling a server that is starting: a condition wait, not a fixed sleep
    raise StartError(f"label-studio did not answer /health within {START_LIMIT_S} s:\n{log.read_text()[-3000:]}")


@contextmanager
def running(folder: Path) -> Iterator[Server]:
    """Start label-studio with its data and log in ``folder``; yields the server, stops it on exit."""
    if not EXECUTABLE.is_file():
        raise FileNotFoundError(f"Label Studio is not installed at {EXECUTABLE}: "
                                f"`make .venv/label-studio/.installed` (make test does it)")
    folder.mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), secrets.token_hex(20)
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(folder / "data"), "LABEL_STUDIO_USERNAME": USER,
           "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": token,
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LATEST_VERSION_CHECK": "false",
           "COLLECT_ANALYTICS": "false", "SECRET_KEY": secrets.token_hex(32)}
    env.pop("PYTHONPATH", None)
    log = folder / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(EXECUTABLE), "start", "--no-browser", "--host", "127.0.0.1", "--port",
                                    str(port)], env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        personal = Server(url, token, "", log).api("POST", "/api/token/")["token"]  # made with the legacy one
        yield Server(url, token, personal, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
