"""A small Label Studio HTTP client (stdlib urllib only): the few API calls `label push` and `label pull` need.

Tokens: a personal access token (a JWT refresh token, three dot-separated parts) is exchanged for a short-lived
access token at ``/api/token/refresh/`` and sent as ``Authorization: Bearer``, refreshed once when it expires;
any other token is a legacy token, sent as ``Authorization: Token``. Every failure is a one-line
LabelStudioError: server unreachable, token refused, a refused request with the server's reason.
"""

from __future__ import annotations

import json
import mimetypes
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import LabelStudioError

TIMEOUT_S = 120.0
UPLOAD_BATCH = 50  # image files per multipart upload request
MAX_DETAIL = 300  # characters of a server's error text kept in a message


class LabelStudio:
    """One server and one token. ``request`` returns parsed JSON; the methods below wrap the endpoints used."""

    def __init__(self, url: str, token: str, *, timeout: float = TIMEOUT_S):
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise LabelStudioError(f"--url must start with http:// or https://, got {url!r}")
        if not token or not token.strip():
            raise LabelStudioError("no token: pass --token or set LABEL_STUDIO_API_KEY (Account & Settings in "
                                   "Label Studio: a personal access token, or a legacy token)")
        self.url, self.token, self.timeout = url, token.strip(), timeout
        self._access: str | None = None

    @property
    def personal_token(self) -> bool:
        """True for a personal access token (a JWT: header.payload.signature), False for a legacy token."""
        return self.token.count(".") == 2

    # ------------------------------------------------------------------ requests

    def request(self, method: str, path: str, payload: Any = None, *, body: bytes | None = None,
                content_type: str | None = None) -> Any:
        """``method path`` with a JSON payload (or raw ``body``), authorised; the parsed JSON answer."""
        if payload is not None:
            body, content_type = json.dumps(payload).encode("utf-8"), "application/json"
        for attempt in (0, 1):
            status, data = self._send(method, path, body, content_type, self._authorization())
            if status == 401 and self.personal_token and attempt == 0:
                self._access = None  # the access token expired: refresh once and retry
                continue
            break
        if status in (401, 403):
            raise LabelStudioError(f"Label Studio at {self.url} refused the token ({status}: {_detail(data)}): "
                                   f"check --token (a personal access token or a legacy token from Account & "
                                   f"Settings)")
        if status >= 400:
            raise LabelStudioError(f"Label Studio {method} {path} failed ({status}): {_detail(data)}")
        return _json(data, self.url, path)

    def _authorization(self) -> str:
        if not self.personal_token:
            return f"Token {self.token}"
        if self._access is None:
            body = json.dumps({"refresh": self.token}).encode("utf-8")
            status, data = self._send("POST", "/api/token/refresh/", body, "application/json", None)
            if status >= 400:
                raise LabelStudioError(f"Label Studio at {self.url} refused the personal access token ({status}: "
                                       f"{_detail(data)}): check --token")
            self._access = _json(data, self.url, "/api/token/refresh/").get("access")
            if not self._access:
                raise LabelStudioError(f"Label Studio at {self.url} gave no access token for the personal token")
        return f"Bearer {self._access}"

    def _send(self, method: str, path: str, body: bytes | None, content_type: str | None,
              authorization: str | None) -> tuple[int, bytes]:
        """(HTTP status, body bytes); LabelStudioError when the server cannot be reached at all."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if authorization:
            headers["Authorization"] = authorization
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise LabelStudioError(f"cannot reach Label Studio at {self.url}: {reason} (is the server running? "
                                   f"check --url)") from None

    # ------------------------------------------------------------------ endpoints

    def check(self) -> None:
        """LabelStudioError when the server is not Label Studio or refuses the token."""
        self.request("GET", "/api/version")
        self.request("GET", "/api/current-user/whoami")

    def find_project(self, title: str) -> dict | None:
        """The project titled exactly ``title`` (None when there is none; an error when several are)."""
        found = [p for p in self._pages(f"/api/projects?title={urllib.parse.quote(title)}&page_size=100")
                 if p.get("title") == title]
        if len(found) > 1:
            ids = ", ".join(str(p["id"]) for p in found)
            raise LabelStudioError(f"{len(found)} Label Studio projects are titled {title!r} (ids {ids}): rename "
                                   f"all but one")
        return found[0] if found else None

    def create_project(self, fields: dict) -> dict:
        return self.request("POST", "/api/projects", fields)

    def update_project(self, project: int, fields: dict) -> dict:
        return self.request("PATCH", f"/api/projects/{project}", fields)

    def upload_images(self, project: int, paths: Sequence[Path]) -> list[str]:
        """Upload image files into the project's storage (no tasks made); their URLs on the server, in order."""
        urls: list[str] = []
        for start in range(0, len(paths), UPLOAD_BATCH):
            batch = paths[start:start + UPLOAD_BATCH]
            body, content_type = _multipart(batch)
            answer = self.request("POST", f"/api/projects/{project}/import?commit_to_project=false", body=body,
                                  content_type=content_type)
            ids = answer.get("file_upload_ids") or []
            query = urllib.parse.quote(json.dumps(ids))
            uploads = {u["id"]: u["file"] for u in self.request("GET", f"/api/projects/{project}/file-uploads?"
                                                                        f"ids={query}")}
            if len(ids) != len(batch) or set(ids) - set(uploads):
                raise LabelStudioError(f"Label Studio stored {len(uploads)} of {len(batch)} uploaded images")
            urls.extend(f"/data/{uploads[i]}" for i in ids)
        return urls

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int]:
        """Create tasks (data and predictions) in this order; their ids."""
        if not tasks:
            return []
        answer = self.request("POST", f"/api/projects/{project}/import?return_task_ids=true", tasks)
        return list(answer.get("task_ids") or [])

    def add_prediction(self, task: int, prediction: dict) -> None:
        self.request("POST", "/api/predictions", {**prediction, "task": task})

    def predictions(self, project: int) -> list[dict]:
        """Every prediction in the project ({"task", "model_version", ...} each)."""
        return list(self._pages(f"/api/predictions?project={project}"))

    def export_tasks(self, project: int) -> list[dict]:
        """Every task of the project with its annotations and predictions, as a JSON export file holds them."""
        tasks = self.request("GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=true")
        if not isinstance(tasks, list):
            raise LabelStudioError(f"Label Studio's export of project {project} is not a list of tasks")
        return tasks

    def _pages(self, path: str) -> Iterator[dict]:
        """Results of a paginated list endpoint, page after page."""
        while path:
            page = self.request("GET", path)
            if isinstance(page, list):  # an unpaginated answer
                yield from page
                return
            yield from page.get("results", [])
            following = page.get("next")
            path = urllib.parse.urlsplit(following)._replace(scheme="", netloc="").geturl() if following else ""


def _multipart(paths: Sequence[Path]) -> tuple[bytes, str]:
    """multipart/form-data with one file part per path; (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for i, path in enumerate(paths):
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        name = path.name.replace('"', "_")
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file{i}"; filename="{name}"\r\n'
                f"Content-Type: {mime}\r\n\r\n")
        parts.append(head.encode("utf-8") + path.read_bytes() + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _json(data: bytes, url: str, path: str) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        raise LabelStudioError(f"{url}{path} did not answer with JSON: is {url} a Label Studio server?") from None


def _detail(data: bytes) -> str:
    """The server's reason on one line: the JSON "detail" / validation errors, else the start of the text."""
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = data.decode("utf-8", "replace")
    if isinstance(parsed, dict):
        parsed = parsed.get("detail") or parsed.get("validation_errors") or parsed
    text = parsed if isinstance(parsed, str) else json.dumps(parsed)
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."
