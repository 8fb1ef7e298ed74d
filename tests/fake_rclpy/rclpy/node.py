"""rclpy.node.Node: parameters (as rclpy checks them), publishers, subscriptions, timers, logger, clock."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy import _graph
from rclpy.clock import Clock
from rclpy.exceptions import (InvalidParameterTypeException, InvalidParameterValueException,
                              ParameterAlreadyDeclaredException, ParameterNotDeclaredException)
from rclpy.logging import get_logger
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile


def _qos(qos_or_depth: QoSProfile | int) -> QoSProfile:
    if isinstance(qos_or_depth, QoSProfile):
        return qos_or_depth
    if isinstance(qos_or_depth, int) and not isinstance(qos_or_depth, bool):
        if qos_or_depth < 0:
            raise ValueError("history depth must be greater than or equal to zero")
        return QoSProfile(depth=qos_or_depth)
    raise TypeError(f"Expected QoSProfile or int, but received {type(qos_or_depth)!r}")


def _full_name(topic: str, namespace: str) -> str:
    if topic.startswith("/"):
        return topic
    return f"{namespace.rstrip('/')}/{topic}"


class Publisher:
    def __init__(self, msg_type: type, topic: str, qos_profile: QoSProfile) -> None:
        self.msg_type, self.topic_name, self.qos_profile = msg_type, topic, qos_profile
        self.published: list[Any] = []  # test-only

    def publish(self, msg: Any) -> None:
        if getattr(msg, "__msgtype__", None) != self.msg_type.__msgtype__:
            raise TypeError(f"Expected {self.msg_type.__msgtype__}, got {type(msg)}")
        self.published.append(msg)
        _graph.deliver(self, msg)

    def get_subscription_count(self) -> int:
        return _graph.count(self.topic_name)


class Subscription:
    def __init__(self, msg_type: type, topic: str, callback: Callable, qos_profile: QoSProfile) -> None:
        self.msg_type, self.topic_name, self.callback, self.qos_profile = msg_type, topic, callback, qos_profile


class Timer:
    def __init__(self, period_sec: float, callback: Callable) -> None:
        self.timer_period_ns = int(period_sec * 1e9)
        self.callback = callback
        self._next = time.monotonic() + period_sec
        self.is_canceled = lambda: self._canceled
        self._canceled = False

    def cancel(self) -> None:
        self._canceled = True

    def _fire_if_due(self) -> None:
        now = time.monotonic()
        if not self._canceled and now >= self._next:
            self._next = now + self.timer_period_ns / 1e9
            self.callback()


class Node:
    PARAM_REL_TOL = 1e-6

    def __init__(self, node_name: str, *, context=None, cli_args=None, namespace: str | None = None,
                 use_global_arguments: bool = True, enable_rosout: bool = True,
                 start_parameter_services: bool = True, parameter_overrides: list[Parameter] | None = None,
                 allow_undeclared_parameters: bool = False,
                 automatically_declare_parameters_from_overrides: bool = False) -> None:
        rclpy._require_init()
        self._name, self._namespace = node_name, namespace or "/"
        self._parameters: dict[str, Parameter] = {}
        self._descriptors: dict[str, ParameterDescriptor] = {}
        global_overrides = rclpy._state["overrides"] if use_global_arguments else {}
        self._overrides = {name: Parameter(name, value=value) for name, value in global_overrides.items()}
        self._overrides.update({p.name: p for p in parameter_overrides or []})
        self._on_set_parameters_callbacks: list[Callable] = []
        self._publishers: list[Publisher] = []
        self._subscriptions: list[Subscription] = []
        self._timers: list[Timer] = []
        self._clock = Clock()
        self._logger = get_logger(node_name)
        self.destroyed = False  # test-only

    # -- names, logging, time ---------------------------------------------------------------------------

    def get_name(self) -> str:
        return self._name

    def get_namespace(self) -> str:
        return self._namespace

    def get_logger(self):
        return self._logger

    def get_clock(self) -> Clock:
        return self._clock

    # -- parameters -------------------------------------------------------------------------------------

    def declare_parameter(self, name: str, value: Any = None, descriptor: ParameterDescriptor | None = None,
                          ignore_override: bool = False) -> Parameter:
        descriptor = descriptor if descriptor is not None else ParameterDescriptor()
        if isinstance(value, Parameter.Type):
            descriptor.type, value = value.value, None
        elif not descriptor.dynamic_typing:
            descriptor.type = Parameter.Type.from_parameter_value(value).value
        if not ignore_override and name in self._overrides:
            value = self._overrides[name].value
        if name in self._parameters:
            raise ParameterAlreadyDeclaredException([name])
        param = Parameter(name, value=value)
        result = self._set_common([param], {name: descriptor})
        if not result.successful:
            if result.reason.startswith("Wrong parameter type"):
                raise InvalidParameterTypeException(param, Parameter.Type(descriptor.type).name)
            raise InvalidParameterValueException(name, value, result.reason)
        return self._parameters[name]

    def declare_parameters(self, namespace: str, parameters: list[tuple]) -> list[Parameter]:
        prefix = f"{namespace}." if namespace else ""
        return [self.declare_parameter(prefix + item[0], *item[1:]) for item in parameters]

    def has_parameter(self, name: str) -> bool:
        return name in self._parameters

    def get_parameter(self, name: str) -> Parameter:
        if name not in self._parameters:
            raise ParameterNotDeclaredException(name)
        return self._parameters[name]

    def get_parameters(self, names: list[str]) -> list[Parameter]:
        return [self.get_parameter(name) for name in names]

    def describe_parameter(self, name: str) -> ParameterDescriptor:
        if name not in self._descriptors:
            raise ParameterNotDeclaredException(name)
        return self._descriptors[name]

    def set_parameters(self, parameter_list: list[Parameter]) -> list[SetParametersResult]:
        results = []
        for param in parameter_list:
            if param.name not in self._parameters:
                raise ParameterNotDeclaredException([param.name])
            results.append(self._set_common([param]))
        return results

    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        undeclared = [p.name for p in parameter_list if p.name not in self._parameters]
        if undeclared:
            raise ParameterNotDeclaredException(undeclared)
        return self._set_common(parameter_list)

    def add_on_set_parameters_callback(self, callback: Callable) -> None:
        self._on_set_parameters_callbacks.insert(0, callback)

    def remove_on_set_parameters_callback(self, callback: Callable) -> None:
        self._on_set_parameters_callbacks.remove(callback)

    def _set_common(self, params: list[Parameter], descriptors: dict | None = None) -> SetParametersResult:
        for param in params:
            descriptor = descriptors[param.name] if descriptors else self._descriptors[param.name]
            result = self._apply_descriptor(param, descriptor, check_read_only=descriptors is None)
            if not result.successful:
                return result
        for callback in self._on_set_parameters_callbacks:
            result = callback(params)
            if not result.successful:
                return result
        for param in params:
            if descriptors:
                self._descriptors[param.name] = descriptors[param.name]
            self._parameters[param.name] = param
        return SetParametersResult(successful=True)

    def _apply_descriptor(self, param: Parameter, descriptor: ParameterDescriptor,
                          check_read_only: bool) -> SetParametersResult:
        descriptor.name = param.name
        if check_read_only and descriptor.read_only:
            return SetParametersResult(successful=False,
                                       reason=f"Trying to set a read-only parameter: {param.name}.")
        if descriptor.dynamic_typing:
            descriptor.type = param.type_.value
        elif param.type_ != Parameter.Type.NOT_SET and param.type_.value != descriptor.type:
            return SetParametersResult(successful=False, reason=(
                f"Wrong parameter type, expected '{Parameter.Type(descriptor.type)}' got '{param.type_}'"))
        if param.type_ == Parameter.Type.INTEGER and descriptor.integer_range:
            rng = descriptor.integer_range[0]
            return self._check_range(param, rng.from_value, rng.to_value, math.isclose)
        if param.type_ == Parameter.Type.DOUBLE and descriptor.floating_point_range:
            rng = descriptor.floating_point_range[0]
            return self._check_range(param, rng.from_value, rng.to_value, math.isclose)
        return SetParametersResult(successful=True)

    def _check_range(self, param: Parameter, low, high, close) -> SetParametersResult:
        low, high = min(low, high), max(low, high)
        if close(param.value, low, rel_tol=self.PARAM_REL_TOL) or close(param.value, high, rel_tol=self.PARAM_REL_TOL):
            return SetParametersResult(successful=True)
        if not low < param.value < high:
            return SetParametersResult(successful=False, reason=(
                f"Parameter {param.name} out of range. Min: {low}, Max: {high}, value: {param.value}"))
        return SetParametersResult(successful=True)

    # -- communication ----------------------------------------------------------------------------------

    def create_publisher(self, msg_type: type, topic: str, qos_profile: QoSProfile | int, *,
                         callback_group=None, event_callbacks=None, qos_overriding_options=None,
                         publisher_class=None) -> Publisher:
        publisher = Publisher(msg_type, _full_name(topic, self._namespace), _qos(qos_profile))
        self._publishers.append(publisher)
        return publisher

    def create_subscription(self, msg_type: type, topic: str, callback: Callable,
                            qos_profile: QoSProfile | int, *, callback_group=None, event_callbacks=None,
                            qos_overriding_options=None, raw: bool = False) -> Subscription:
        subscription = Subscription(msg_type, _full_name(topic, self._namespace), callback, _qos(qos_profile))
        self._subscriptions.append(subscription)
        _graph.add(subscription)
        return subscription

    def create_timer(self, timer_period_sec: float, callback: Callable, callback_group=None,
                     clock=None, autostart: bool = True) -> Timer:
        timer = Timer(timer_period_sec, callback)
        self._timers.append(timer)
        return timer

    @property
    def publishers(self):
        yield from self._publishers

    @property
    def subscriptions(self):
        yield from self._subscriptions

    @property
    def timers(self):
        yield from self._timers

    def count_subscribers(self, topic_name: str) -> int:
        return _graph.count(_full_name(topic_name, self._namespace))

    def destroy_node(self) -> None:
        for subscription in self._subscriptions:
            _graph.remove(subscription)
        for timer in self._timers:
            timer.cancel()
        self._subscriptions, self._publishers, self._timers = [], [], []
        self.destroyed = True
