"""rclpy.qos: profiles and policies (the parts a subscriber and publisher need)."""

from __future__ import annotations

from enum import IntEnum


class ReliabilityPolicy(IntEnum):
    SYSTEM_DEFAULT = 0
    RELIABLE = 1
    BEST_EFFORT = 2
    UNKNOWN = 3


class HistoryPolicy(IntEnum):
    SYSTEM_DEFAULT = 0
    KEEP_LAST = 1
    KEEP_ALL = 2
    UNKNOWN = 3


class DurabilityPolicy(IntEnum):
    SYSTEM_DEFAULT = 0
    TRANSIENT_LOCAL = 1
    VOLATILE = 2
    UNKNOWN = 3


# Old names kept by rclpy as aliases.
QoSReliabilityPolicy, QoSHistoryPolicy, QoSDurabilityPolicy = ReliabilityPolicy, HistoryPolicy, DurabilityPolicy


class InvalidQoSProfileException(Exception):
    def __init__(self, *args) -> None:
        super().__init__("Invalid QoSProfile", *args)


class QoSProfile:
    """history and/or depth are required, as in rclpy; the rest default to rmw's default profile."""

    __slots__ = ("history", "depth", "reliability", "durability")

    def __init__(self, **kwargs) -> None:
        unknown = set(kwargs) - set(self.__slots__)
        if unknown:
            raise TypeError(f"unexpected QoSProfile arguments {sorted(unknown)}")
        if "history" not in kwargs and "depth" not in kwargs:
            raise InvalidQoSProfileException("History and/or depth settings are required.")
        self.history = HistoryPolicy(kwargs.get("history", HistoryPolicy.KEEP_LAST))
        self.depth = int(kwargs.get("depth", 0))
        self.reliability = ReliabilityPolicy(kwargs.get("reliability", ReliabilityPolicy.RELIABLE))
        self.durability = DurabilityPolicy(kwargs.get("durability", DurabilityPolicy.VOLATILE))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QoSProfile) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return "QoSProfile(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


qos_profile_sensor_data = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                                     reliability=ReliabilityPolicy.BEST_EFFORT)
qos_profile_system_default = QoSProfile(history=HistoryPolicy.SYSTEM_DEFAULT, depth=0)


def compatible(publisher: QoSProfile, subscription: QoSProfile) -> bool:
    """DDS request/offer matching for reliability and durability."""
    if (subscription.reliability == ReliabilityPolicy.RELIABLE
            and publisher.reliability == ReliabilityPolicy.BEST_EFFORT):
        return False
    return not (subscription.durability == DurabilityPolicy.TRANSIENT_LOCAL
                and publisher.durability == DurabilityPolicy.VOLATILE)
