"""rclpy.time.Time."""

from __future__ import annotations


class Time:
    def __init__(self, *, seconds: float = 0, nanoseconds: int = 0, clock_type=None) -> None:
        self._ns = int(seconds * 1_000_000_000) + int(nanoseconds)

    @property
    def nanoseconds(self) -> int:
        return self._ns

    def seconds_nanoseconds(self) -> tuple[int, int]:
        return divmod(self._ns, 1_000_000_000)

    def to_msg(self):
        from builtin_interfaces.msg import Time as TimeMsg

        sec, nanosec = self.seconds_nanoseconds()
        return TimeMsg(sec=sec, nanosec=nanosec)
