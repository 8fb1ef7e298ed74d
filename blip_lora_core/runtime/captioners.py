"""Which captioner loads a ``model`` value: an ONNX export folder (manifest.json) runs on ONNX Runtime without
torch; anything else (a hub id, a transformers folder) loads the torch Captioner. The CLI and the node use this."""

from __future__ import annotations

from typing import Any

from ..models.caption_settings import CaptionSettings
from ..ort.folder import is_onnx_folder


def load_captioner(model: str, settings: CaptionSettings, *, adapter: str | None = None,
                   revision: str | None = None, progress: bool = True) -> Any:
    """The captioner for ``model`` with ``adapter`` (for an export: only the adapter merged into it); the one
    place that decides which backend loads a model. progress=False: no weight-loading bar (a robot's log is
    no terminal). BlipLoraError when it cannot be loaded. The torch path is imported only when it is used."""
    if is_onnx_folder(model):
        from ..ort.captioner import OrtCaptioner

        return OrtCaptioner.from_folder(model, settings, adapter=adapter or None, revision=revision)
    from ..models.captioning import Captioner
    from ..models.loading import disable_progress_bars

    if not progress:
        disable_progress_bars()
    return Captioner.from_pretrained(model, settings, adapter=adapter or None, revision=revision)
