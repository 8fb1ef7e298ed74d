"""rclpy.logging: named loggers with rclpy's severity methods and throttling; lines go to RECORDS."""

from __future__ import annotations

import sys
import time

RECORDS: list[tuple[str, str, str]] = []  # (logger name, severity, message): test-only
_LOGGERS: dict[str, "RcutilsLogger"] = {}


class RcutilsLogger:
    def __init__(self, name: str = "") -> None:
        self.name = name
        self._last: dict[tuple, float] = {}
        self._once: set[tuple] = set()

    def get_child(self, name: str) -> "RcutilsLogger":
        return get_logger(f"{self.name}.{name}" if self.name else name)

    def log(self, message: str, severity: str, *, throttle_duration_sec: float | None = None,
            once: bool = False, skip_first: bool = False, throttle_time_source_type=None, **_) -> bool:
        caller = sys._getframe(2)
        site = (caller.f_code.co_filename, caller.f_lineno, severity)
        if once:
            if site in self._once:
                return False
            self._once.add(site)
        if throttle_duration_sec is not None:
            now = time.monotonic()
            if site in self._last and now - self._last[site] < throttle_duration_sec:
                return False
            self._last[site] = now
        RECORDS.append((self.name, severity, str(message)))
        print(f"[{severity}] [{self.name}]: {message}", file=sys.stderr)
        return True

    def debug(self, message: str, **kwargs) -> bool:
        return self.log(message, "DEBUG", **kwargs)

    def info(self, message: str, **kwargs) -> bool:
        return self.log(message, "INFO", **kwargs)

    def warning(self, message: str, **kwargs) -> bool:
        return self.log(message, "WARN", **kwargs)

    def warn(self, message: str, **kwargs) -> bool:
        return self.log(message, "WARN", **kwargs)

    def error(self, message: str, **kwargs) -> bool:
        return self.log(message, "ERROR", **kwargs)

    def fatal(self, message: str, **kwargs) -> bool:
        return self.log(message, "FATAL", **kwargs)


def get_logger(name: str) -> RcutilsLogger:
    if name not in _LOGGERS:
        _LOGGERS[name] = RcutilsLogger(name)
    return _LOGGERS[name]
