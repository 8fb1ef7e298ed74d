"""ROS 2 message classes from rosbags' typestore, constructed like rclpy messages (keyword defaults)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from rosbags.interfaces import Nodetype
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)

_DTYPES = {"bool": np.bool_, "byte": np.uint8, "octet": np.uint8, "char": np.uint8, "int8": np.int8,
           "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
           "int64": np.int64, "uint64": np.uint64, "float32": np.float32, "float64": np.float64}
_CLASSES: dict[str, type] = {}


def _scalar_default(name: str) -> Any:
    if name == "string":
        return ""
    if name == "bool":
        return False
    return 0.0 if name.startswith("float") else 0


def _default(desc: tuple) -> Any:
    kind, rest = desc
    if kind == Nodetype.BASE:
        return _scalar_default(rest[0])
    if kind == Nodetype.NAME:
        return message_class(rest)()
    (inner_kind, inner), length = rest
    if inner_kind == Nodetype.BASE and inner[0] != "string":
        return np.zeros(length if kind == Nodetype.ARRAY else 0, dtype=_DTYPES[inner[0]])
    if kind == Nodetype.ARRAY:
        return [_default((inner_kind, inner)) for _ in range(length)]
    return []


def message_class(typename: str) -> type:
    """'sensor_msgs/msg/Image' -> a subclass of the rosbags dataclass whose fields all have defaults."""
    if typename in _CLASSES:
        return _CLASSES[typename]
    base = TYPESTORE.types[typename]
    fielddefs = TYPESTORE.fielddefs[typename][1]
    names = [name for name, _ in fielddefs]

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise AssertionError(f"Invalid arguments passed to constructor: {', '.join(unknown)}")
        values = {name: kwargs[name] if name in kwargs else _default(desc) for name, desc in fielddefs}
        base.__init__(self, **values)

    package = typename.split("/")[0]
    cls = type(typename.rsplit("/", 1)[1], (base,), {"__init__": __init__, "__module__": f"{package}.msg",
                                                      "__slots__": ()})
    _CLASSES[typename] = cls
    return cls


def export(module_name: str, package: str, names: list[str]) -> None:
    """Put the classes package/msg/<name> into the module as attributes."""
    module = sys.modules[module_name]
    for name in names:
        setattr(module, name, message_class(f"{package}/msg/{name}"))
