"""The bag tools' settings (no rosbags needed, so the command line can declare them on the base install):
which camera topic to read and what to do with a bad frame, then what extracting and replaying add."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..runtime.pipeline import PipelineSettings
from ..settings import check_settings, setting


@dataclass(frozen=True)
class CameraOptions:
    """Base of ExtractOptions and ReplayOptions; a subclass names its SECTION and adds its own settings."""

    SECTION: ClassVar[str] = "bag"
    topic: str = setting("/camera/image_raw", "sensor_msgs/Image or CompressedImage topic")
    strict: bool = setting(False, "fail on an undecodable frame instead of skipping it (counted, warned about)")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class ExtractOptions(CameraOptions):
    """Which frames ``extract_frames`` keeps and how it writes them (see each field's help)."""

    SECTION: ClassVar[str] = "extract"
    every: float = setting(0.0, "keep at most one frame per this many seconds of header stamp (0: all)", low=0)
    dedup_threshold: float | None = setting(None, "skip a frame whose 32x32 grayscale thumbnail differs from the "
                                                  "last kept frame by a mean absolute value (0-255) below this",
                                            low=0, high=255)
    jpeg_quality: int = setting(95, "JPEG quality of the written frames", low=1, high=100)


@dataclass(frozen=True)
class ReplayOptions(PipelineSettings, CameraOptions):
    """How ``replay_captions`` plays the bag into the pipeline (the pipeline's own settings, in bag time; see
    each field's help)."""

    SECTION: ClassVar[str] = "replay"
    realtime: bool = setting(False, "play the bag at its recorded speed into the node's worker thread")
