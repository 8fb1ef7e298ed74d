"""Before loading a model by hub id: is it cached here, and can the hub be reached? One quick try, no retries.

Without a network, huggingface_hub retries every file request with backoff (40 lines and about a minute for
BLIP) before transformers gives up. One TCP connection to the hub decides instead: reachable, load as usual;
unreachable, load the cached snapshot without asking the hub, or fail at once with one line.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import huggingface_hub
from huggingface_hub import constants

from ..errors import BlipLoraError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def model_source(name: str, revision: str | None = None) -> str:
    """What to load hub model ``name`` from: the name itself when the hub can be reached, else the model's
    cached snapshot folder; BlipLoraError at once when it is neither reachable nor cached. ``name`` unchanged
    for a local folder, in offline mode (HF_HUB_OFFLINE: transformers reads the cache itself) and behind a
    proxy (not probed)."""
    if Path(name).expanduser().is_dir() or constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return name
    problem = unreachable(constants.ENDPOINT)
    if problem is None:
        return name
    try:
        folder = huggingface_hub.snapshot_download(name, revision=revision, local_files_only=True)
    except Exception as exc:  # not cached (LocalEntryNotFoundError), or a name the hub would refuse
        raise BlipLoraError(f"cannot load BLIP model {name!r}: it is not in the Hugging Face cache on this machine "
                            f"and {constants.ENDPOINT} cannot be reached ({problem}); use a local model folder, or "
                            f"connect once to download it") from exc
    log.warning("%s cannot be reached (%s): loading the cached copy of %s", constants.ENDPOINT, problem, name)
    return folder


def unreachable(endpoint: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why a TCP connection to ``endpoint`` (an http(s) URL) fails, or None when it opens."""
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return None
    except OSError as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
