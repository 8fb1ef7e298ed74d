"""A small stand-in for rclpy (see ../README.md): init, shutdown, ok, spin."""

from __future__ import annotations

import sys

import yaml

from rclpy import _graph
from rclpy.exceptions import NotInitializedException

SPIN_HOOKS: list = []  # test-only: callables(node) run on every spin iteration
_state: dict = {"ok": False, "overrides": {}}


def _parameter_arguments(args: list[str] | None) -> dict:
    """'--ros-args -p name:=value ...' -> {name: YAML-typed value}, as rcl parses them."""
    if not args or "--ros-args" not in args:
        return {}
    tokens = args[args.index("--ros-args") + 1:]
    pairs = [value for flag, value in zip(tokens, tokens[1:]) if flag in ("-p", "--param")]
    return {name: yaml.safe_load(text) for name, _, text in (pair.partition(":=") for pair in pairs)}


def init(*, args: list[str] | None = None, context=None, domain_id=None, signal_handler_options=None) -> None:
    if _state["ok"]:
        raise RuntimeError("Context.init() must only be called once")
    _state["ok"] = True
    _state["overrides"] = _parameter_arguments(sys.argv if args is None else args)


def ok(*, context=None) -> bool:
    return _state["ok"]


def shutdown(*, context=None, uninstall_handlers=None) -> None:
    if not _state["ok"]:
        raise RuntimeError("failed to shutdown: rcl_shutdown already called on the given context")
    _state["ok"] = False
    _graph.clear()


def try_shutdown(*, context=None, uninstall_handlers=None) -> None:
    if _state["ok"]:
        shutdown()


def _require_init() -> None:
    if not _state["ok"]:
        raise NotInitializedException("the given context is not valid")


def spin(node, executor=None) -> None:
    from rclpy.executors import SingleThreadedExecutor

    executor = executor or SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    finally:
        executor.remove_node(node)


def spin_once(node, *, executor=None, timeout_sec: float | None = None) -> None:
    from rclpy.executors import SingleThreadedExecutor

    executor = executor or SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin_once(timeout_sec=timeout_sec)
    finally:
        executor.remove_node(node)


from rclpy import logging  # noqa: E402  (rclpy exposes rclpy.logging as an attribute)
