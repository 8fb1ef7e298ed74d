"""rclpy.executors: spin fires due timers and SPIN_HOOKS; a context shut down from outside ends spin."""

from __future__ import annotations

import time


class ExternalShutdownException(Exception):
    """The context was shut down (for instance by the SIGINT handler) while spinning."""


class Executor:
    def __init__(self, *, context=None) -> None:
        self._nodes: list = []
        self._shutdown = False

    def add_node(self, node) -> bool:
        if node in self._nodes:
            return False
        self._nodes.append(node)
        return True

    def remove_node(self, node) -> None:
        if node in self._nodes:
            self._nodes.remove(node)

    def get_nodes(self) -> list:
        return list(self._nodes)

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        self._shutdown = True
        return True

    def spin_once(self, timeout_sec: float | None = None) -> None:
        import rclpy

        if not rclpy.ok():
            raise ExternalShutdownException()
        for node in list(self._nodes):
            for hook in list(rclpy.SPIN_HOOKS):
                hook(node)
            for timer in node.timers:
                timer._fire_if_due()
        time.sleep(min(timeout_sec or 0.001, 0.001))

    def spin(self) -> None:
        while not self._shutdown:
            self.spin_once()


class SingleThreadedExecutor(Executor):
    pass


class MultiThreadedExecutor(Executor):
    def __init__(self, num_threads: int | None = None, *, context=None) -> None:
        super().__init__(context=context)
        self._num_threads = num_threads
