"""Turn caption pipeline statistics into a diagnostic level, a message and key/value pairs.

Pure functions: the node wraps the result in a diagnostic_msgs/DiagnosticStatus about once a second;
the levels match DiagnosticStatus.OK / WARN / ERROR.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum

from .pipeline import PipelineStats


class Level(IntEnum):
    """diagnostic_msgs/DiagnosticStatus levels."""

    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class Diagnosis:
    level: Level
    message: str
    values: list[tuple[str, str]]


@dataclass(frozen=True)
class Thresholds:
    """stale_after_s: no caption or no frame for this long is a problem.
    max_age_s: captions made from frames older than this lag behind the camera."""

    stale_after_s: float = 10.0
    max_age_s: float = 2.0


def _format(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def stats_values(stats: PipelineStats) -> list[tuple[str, str]]:
    """Every statistic as a (name, text) pair, in declaration order; floats with 3 decimals, None as n/a."""
    return [(field.name, _format(getattr(stats, field.name))) for field in fields(stats)]


def _delta(stats: PipelineStats, previous: PipelineStats | None, name: str) -> int:
    return getattr(stats, name) - (getattr(previous, name) if previous is not None else 0)


def _problems(stats: PipelineStats, previous: PipelineStats | None, limits: Thresholds) -> list[tuple[Level, str]]:
    new = {name: _delta(stats, previous, name)
           for name in ("frames_received", "decode_errors", "inference_errors", "captions_made")}
    failed = new["decode_errors"] + new["inference_errors"]
    problems: list[tuple[Level, str]] = []
    if stats.frames_received == 0:
        problems.append((Level.WARN, "no images received yet"))
    elif stats.since_last_frame_s is not None and stats.since_last_frame_s > limits.stale_after_s:
        problems.append((Level.WARN, f"no image for {stats.since_last_frame_s:.1f} s"))
    if failed and not new["captions_made"]:
        problems.append((Level.ERROR, f"every frame failed ({new['decode_errors']} not decodable, "
                                      f"{new['inference_errors']} inference errors)"))
    elif failed:
        problems.append((Level.WARN, f"{new['decode_errors']} frames not decodable, "
                                     f"{new['inference_errors']} inference errors"))
    quiet = stats.since_last_caption_s if stats.since_last_caption_s is not None else stats.uptime_s
    if new["frames_received"] and quiet > limits.stale_after_s:
        problems.append((Level.ERROR, f"images arrive but no caption for {quiet:.1f} s"))
    if stats.last_caption_age_s is not None and stats.last_caption_age_s > limits.max_age_s:
        problems.append((Level.WARN, f"captions lag {stats.last_caption_age_s:.2f} s behind the camera"))
    return problems


def diagnose(stats: PipelineStats, previous: PipelineStats | None = None,
             limits: Thresholds = Thresholds()) -> Diagnosis:
    """The worst problem since ``previous`` (the last snapshot; None: since start) decides the level.

    ERROR: every frame failed, or images arrive but no caption was made for ``stale_after_s``.
    WARN: no images (yet, or for ``stale_after_s``), some failed frames, or captions older than ``max_age_s``.
    """
    problems = _problems(stats, previous, limits)
    values = stats_values(stats)
    if not problems:
        return Diagnosis(Level.OK, f"captioning at {stats.caption_rate_hz:.2f} Hz", values)
    level = max(level for level, _ in problems)
    worst_first = sorted(problems, key=lambda problem: -problem[0])
    return Diagnosis(level, "; ".join(text for _, text in worst_first), values)


def with_problems(diagnosis: Diagnosis, problems: list[tuple[Level, str]]) -> Diagnosis:
    """``diagnosis`` with more problems (QoS, clock) found outside the pipeline; the worst decides the level."""
    if not problems:
        return diagnosis
    found = ([] if diagnosis.level is Level.OK else [(diagnosis.level, diagnosis.message)]) + problems
    level = max(level for level, _ in found)
    return Diagnosis(level, "; ".join(text for _, text in sorted(found, key=lambda p: -p[0])), diagnosis.values)
