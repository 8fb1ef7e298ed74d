"""rclpy.parameter.Parameter with its Type enum."""

from __future__ import annotations

from enum import Enum
from typing import Any


class Parameter:
    class Type(Enum):
        NOT_SET = 0
        BOOL = 1
        INTEGER = 2
        DOUBLE = 3
        STRING = 4
        BYTE_ARRAY = 5
        BOOL_ARRAY = 6
        INTEGER_ARRAY = 7
        DOUBLE_ARRAY = 8
        STRING_ARRAY = 9

        @classmethod
        def from_parameter_value(cls, value: Any) -> "Parameter.Type":
            if value is None:
                return cls.NOT_SET
            for python_type, kind in ((bool, cls.BOOL), (int, cls.INTEGER), (float, cls.DOUBLE), (str, cls.STRING)):
                if isinstance(value, python_type):
                    return kind
            if isinstance(value, (list, tuple)) and value:
                for python_type, kind in ((bool, cls.BOOL_ARRAY), (int, cls.INTEGER_ARRAY),
                                          (float, cls.DOUBLE_ARRAY), (str, cls.STRING_ARRAY)):
                    if all(isinstance(item, python_type) for item in value):
                        return kind
            if isinstance(value, (bytes, list, tuple)):
                return cls.BYTE_ARRAY
            raise TypeError(f"The given value is not one of the allowed types '{value}'.")

        def check(self, value: Any) -> bool:
            if self is Parameter.Type.NOT_SET:
                return value is None
            if self is Parameter.Type.BOOL:
                return isinstance(value, bool)
            if self is Parameter.Type.INTEGER:
                return isinstance(value, int) and not isinstance(value, bool)
            if self is Parameter.Type.DOUBLE:
                return isinstance(value, float)
            if self is Parameter.Type.STRING:
                return isinstance(value, str)
            return isinstance(value, (list, tuple, bytes))

    def __init__(self, name: str, type_: "Parameter.Type | None" = None, value: Any = None) -> None:
        if type_ is None:
            type_ = Parameter.Type.from_parameter_value(value)
        if not isinstance(type_, Parameter.Type):
            raise TypeError("type must be an instance of 'rclpy.parameter.Parameter.Type'")
        if not type_.check(value):
            raise ValueError(f"Type {type_} and value {value} do not agree")
        self._name, self._type_, self._value = name, type_, value

    @property
    def name(self) -> str:
        return self._name

    @property
    def type_(self) -> "Parameter.Type":
        return self._type_

    @property
    def value(self) -> Any:
        return self._value

    def __repr__(self) -> str:
        return f"Parameter({self._name!r}, {self._type_}, {self._value!r})"
