"""rclpy.exceptions (the parameter and initialisation errors)."""

from __future__ import annotations


class NotInitializedException(Exception):
    def __init__(self, message: str | None = None) -> None:
        super().__init__(f"rclpy.init() has not been called. msg:{message}" if message
                         else "rclpy.init() has not been called.")


class ParameterException(Exception):
    def __init__(self, error_msg: str, parameters) -> None:
        super().__init__(f"{error_msg}: {parameters}")


class ParameterNotDeclaredException(ParameterException):
    def __init__(self, parameters) -> None:
        super().__init__("Invalid access to undeclared parameter(s)", parameters)


class ParameterAlreadyDeclaredException(ParameterException):
    def __init__(self, parameters) -> None:
        super().__init__("Parameter(s) already declared", parameters)


class InvalidParameterTypeException(ParameterException):
    def __init__(self, desired_parameter, expected_type) -> None:
        super().__init__(f"Trying to set parameter '{desired_parameter.name}' to '{desired_parameter.value}' of "
                         f"type '{desired_parameter.type_.name}', expecting type '{expected_type}'",
                         desired_parameter.name)


class InvalidParameterValueException(ParameterException):
    def __init__(self, parameter: str, value, reason: str) -> None:
        super().__init__(f"Invalid parameter value ({value}) for parameter. Reason: {reason}", parameter)


class ParameterImmutableException(ParameterException):
    def __init__(self, parameter_name: str) -> None:
        super().__init__("Attempted to modify read-only parameter", parameter_name)


class ParameterUninitializedException(ParameterException):
    def __init__(self, parameter_name: str) -> None:
        super().__init__(f"The parameter '{parameter_name}' is not initialized", parameter_name)


class ROSInterruptException(Exception):
    def __init__(self) -> None:
        super().__init__("rclpy.shutdown() has been called")
