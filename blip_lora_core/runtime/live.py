"""A captioner that runs on a robot: settings change while it captions, adapters swap with rollback.

Changes are checked at once (``check``, cheap: no model work, so a ROS executor never waits) and queued;
the worker thread that captions applies them between two captions (``apply_pending``). A swap that fails
puts the previous adapter back and reports what was kept.

The captioner is used duck-typed, so any backend fits: ``caption_results(images)`` -> results with ``text``
and ``confidence``, ``describe()``, ``set_adapter(path, merge=...)``, ``prompt`` / ``max_new_tokens`` /
``num_beams`` attributes and ``max_new_tokens_limit(prompt)`` (text positions left after the prompt).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BlipLoraError, ConfigError
from ..lora.adapter_io import read_adapter
from ..models.caption_settings import CaptionSettings

GENERATION = ("prompt", "max_new_tokens", "num_beams")
ADAPTER = ("adapter", "merge")


def load_captioner(model: str, settings: CaptionSettings, adapter: str | None = None) -> Any:
    """The captioner for ``model`` (a hub id or a local BLIP folder), with ``adapter`` loaded.

    The one place that decides which backend loads a model; BlipLoraError when it cannot be loaded.
    """
    from ..models.captioning import Captioner
    from ..models.loading import disable_progress_bars

    disable_progress_bars()  # a robot's log is no terminal: no weight-loading bar
    return Captioner.from_pretrained(model, settings, adapter=adapter or None)


def adapter_hash(path: str) -> str:
    """The first 12 hex digits of the adapter file's sha256 ('' for no adapter): which file is running."""
    if not path:
        return ""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class AdapterState:
    """The adapter that captions now: its path ('' = the base model alone), short hash and merge flag."""

    path: str = ""
    hash: str = ""
    merge: bool = True

    @property
    def name(self) -> str:
        return Path(self.path).stem if self.path else ""


Refused = Callable[[dict[str, Any], str], None]
"""(the values kept, why) -> None: a queued change that failed when the worker applied it."""


class LiveCaptioner:
    """One captioner, captioned by one worker thread; changes checked at once and applied by that worker.

    ``settings()`` returns the values in force plus those queued, so a change is checked against what the
    captioner will be once the queue is applied (a prompt and a max_new_tokens set one after the other).
    """

    def __init__(self, captioner: Any, adapter: str = "", merge: bool = True, refused: Refused | None = None) -> None:
        self.captioner = captioner
        self._adapter = AdapterState(adapter, adapter_hash(adapter), merge)
        self._pending: dict[str, Any] = {}
        self._lock = threading.Lock()  # guards _pending only: never held during model work
        self._refused = refused or (lambda kept, reason: None)

    @classmethod
    def load(cls, model: str, settings: CaptionSettings, adapter: str = "",
             refused: Refused | None = None) -> LiveCaptioner:
        """Load the base model (and adapter) once; BlipLoraError when it cannot be loaded."""
        return cls(load_captioner(model, settings, adapter), adapter, settings.merge, refused)

    @property
    def adapter(self) -> AdapterState:
        return self._adapter

    def describe(self) -> str:
        """The decoding path, device, dtype and quantization; reads settings only (no wait for a caption)."""
        return self.captioner.describe()

    @property
    def device(self) -> str:
        return str(getattr(getattr(self.captioner, "model", None), "device", "unknown"))

    def settings(self) -> dict[str, Any]:
        """prompt, max_new_tokens, num_beams, adapter and merge: in force, or queued to be."""
        values = {name: getattr(self.captioner, name) for name in GENERATION}
        values.update(adapter=self._adapter.path, merge=self._adapter.merge)
        with self._lock:
            values.update(self._pending)
        return values

    def check(self, changes: Mapping[str, Any]) -> str | None:
        """Why ``changes`` (names of GENERATION and ADAPTER) cannot be applied, or None. Cheap, no model work:
        settings ranges, max_new_tokens against the text positions the prompt leaves, the adapter file."""
        values = {**self.settings(), **changes}
        try:
            CaptionSettings(prompt=values["prompt"], max_new_tokens=values["max_new_tokens"],
                            num_beams=values["num_beams"])
        except ConfigError as error:
            return str(error)
        limit = self.captioner.max_new_tokens_limit(values["prompt"] or None)
        if values["max_new_tokens"] > limit:
            prompt = f"the prompt {values['prompt']!r} and " if values["prompt"] else ""
            return (f"max_new_tokens {values['max_new_tokens']} is more than the model's text positions leave "
                    f"after {prompt}the start token: at most {limit}")
        if changes.get("adapter"):
            try:
                read_adapter(changes["adapter"])
            except (BlipLoraError, OSError) as error:
                kept = self._adapter.path or "the base model"
                return f"adapter {changes['adapter']!r} not loaded, kept {kept!r}: {error}"
        return None

    def queue(self, changes: Mapping[str, Any]) -> None:
        """Queue checked changes; the worker applies them before its next caption."""
        with self._lock:
            self._pending.update(changes)

    @property
    def pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def apply_pending(self) -> None:
        """Apply the queued changes (worker thread). A failed adapter swap puts the previous one back and
        calls ``refused`` with the values kept."""
        with self._lock:
            changes, self._pending = self._pending, {}
        if not changes:
            return
        for name in GENERATION:
            if name in changes:
                setattr(self.captioner, name, changes[name])
        wanted = AdapterState(changes.get("adapter", self._adapter.path), "",
                              changes.get("merge", self._adapter.merge))
        if (wanted.path, wanted.merge) != (self._adapter.path, self._adapter.merge):
            self._swap(wanted)

    def _swap(self, wanted: AdapterState) -> None:
        try:
            self.captioner.set_adapter(wanted.path or None, merge=wanted.merge)
            self._adapter = AdapterState(wanted.path, adapter_hash(wanted.path), wanted.merge)
        except (BlipLoraError, OSError) as error:
            reason = self._restore(wanted, error)
            self._refused({"adapter": self._adapter.path, "merge": self._adapter.merge}, reason)

    def _restore(self, failed: AdapterState, error: Exception) -> str:
        kept = self._adapter.path or "the base model"
        try:
            self.captioner.set_adapter(self._adapter.path or None, merge=self._adapter.merge)
        except (BlipLoraError, OSError) as again:
            self._adapter = AdapterState("", "", self._adapter.merge)
            return (f"adapter {failed.path!r} not loaded ({error}); putting {kept!r} back failed too ({again}): "
                    "captioning with the base model alone")
        return f"adapter {failed.path!r} not loaded, kept {kept!r}: {error}"

    def caption(self, image: Any) -> Any:
        """(H, W, 3) uint8 RGB -> one caption result (text, confidence), after the queued changes."""
        self.apply_pending()
        return self.captioner.caption_results([image])[0]
