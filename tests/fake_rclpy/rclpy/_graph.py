"""In-process topic graph: a publish reaches every matching subscription at once (test-only)."""

from __future__ import annotations

import threading
from typing import Any

from rclpy.qos import compatible

_LOCK = threading.Lock()
_SUBSCRIPTIONS: list[Any] = []


def add(subscription: Any) -> None:
    with _LOCK:
        _SUBSCRIPTIONS.append(subscription)


def remove(subscription: Any) -> None:
    with _LOCK:
        if subscription in _SUBSCRIPTIONS:
            _SUBSCRIPTIONS.remove(subscription)


def clear() -> None:
    with _LOCK:
        _SUBSCRIPTIONS.clear()


def count(topic: str) -> int:
    with _LOCK:
        return sum(sub.topic_name == topic for sub in _SUBSCRIPTIONS)


def deliver(publisher: Any, msg: Any) -> int:
    """Call every subscription on the publisher's topic with the same type and compatible QoS."""
    with _LOCK:
        targets = [sub for sub in _SUBSCRIPTIONS if sub.topic_name == publisher.topic_name
                   and sub.msg_type.__msgtype__ == publisher.msg_type.__msgtype__
                   and compatible(publisher.qos_profile, sub.qos_profile)]
    for sub in targets:
        sub.callback(msg)
    return len(targets)
