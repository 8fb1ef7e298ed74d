"""Captioning in batches, shared by the torch Captioner and the ONNX Runtime OrtCaptioner (torch-free).

A class mixes in ``BatchCaptioning`` and supplies ``settings`` (its CaptionSettings: ``batch_size``) and
``_caption_batch(images) -> list[CaptionResult]`` for one batch; the mixin splits inputs into batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .caption_settings import CaptionSettings
from .confidence import CaptionResult
from .images import load_image


class BatchCaptioning:
    settings: CaptionSettings

    def _caption_batch(self, images: Sequence[Image.Image | np.ndarray]) -> list[CaptionResult]:
        raise NotImplementedError

    def caption(self, images: Sequence[Image.Image | np.ndarray]) -> list[str]:
        """Images (PIL or (H, W, 3) uint8 RGB) -> one caption each, prompt stripped."""
        return [result.text for result in self.caption_results(images)]

    def caption_results(self, images: Sequence[Image.Image | np.ndarray]) -> list[CaptionResult]:
        """Images (PIL or (H, W, 3) uint8 RGB) -> one CaptionResult each (text, confidence, tokens),
        batch_size images per run."""
        results: list[CaptionResult] = []
        size = self.settings.batch_size
        for start in range(0, len(images), size):
            results.extend(self._caption_batch(images[start:start + size]))
        return results

    def caption_files(self, paths: Sequence[str | Path]) -> list[str]:
        """Image files -> one caption each; loads one batch of images at a time."""
        return [result.text for result in self.caption_file_results(paths)]

    def caption_file_results(self, paths: Sequence[str | Path]) -> list[CaptionResult]:
        """Image files -> one CaptionResult each; loads one batch of images at a time."""
        results: list[CaptionResult] = []
        size = self.settings.batch_size
        for start in range(0, len(paths), size):
            results.extend(self.caption_results([load_image(p) for p in paths[start:start + size]]))
        return results
