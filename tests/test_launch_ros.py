"""A real launch test of blip_captioner: needs ROS 2 (rclpy, launch, launch_ros, launch_testing) sourced and
the package built (`colcon build --base-paths ros2_ws/src` then `source install/setup.bash`).

It launches blip_captioner.launch.py with a tiny BLIP built on the spot, publishes best-effort camera
images, and checks captions, diagnostics, run-time parameter changes and a clean exit. Run it with
`pytest tests/test_launch_ros.py` (launch_testing's pytest plugin) or `launch_test tests/test_launch_ros.py`.
Everywhere else it is skipped with the reason below.
"""

from __future__ import annotations

import tempfile
import time
import unittest
from pathlib import Path

import pytest

REASON = "needs a real ROS 2 install (rclpy, launch_ros)"
rclpy = pytest.importorskip("rclpy", reason=REASON)
if "fake_rclpy" in str(getattr(rclpy, "__file__", "")):
    pytest.skip(REASON + ": found only tests/fake_rclpy", allow_module_level=True)
launch_ros = pytest.importorskip("launch_ros", reason=REASON)
launch_testing = pytest.importorskip("launch_testing", reason=REASON + " and launch_testing")

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from blip_lora_core.models.loading import build_tiny_blip  # noqa: E402

pytestmark = pytest.mark.ros
IMAGE_TOPIC = "/test_camera/image_raw"
CAPTIONS = ["a red cube", "a blue cube", "a picture of"]


def _params_file(folder: Path) -> str:
    """The package's YAML with the tiny model, the CPU and no rate limit."""
    share = Path(get_package_share_directory("blip_captioner"))
    config = yaml.safe_load((share / "config" / "captioner.yaml").read_text())
    values = config["blip_captioner"]["ros__parameters"]
    values.update(model=str(build_tiny_blip(folder / "tiny", CAPTIONS, seed=0)), max_new_tokens=5,
                  max_rate_hz=0.0)
    path = folder / "captioner.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.launch_test
def generate_test_description():
    folder = Path(tempfile.mkdtemp(prefix="blip_captioner_launch_"))
    launch_file = Path(get_package_share_directory("blip_captioner")) / "launch" / "blip_captioner.launch.py"
    include = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(launch_file)),
        launch_arguments={"params_file": _params_file(folder), "image_topic": IMAGE_TOPIC,
                          "device": "cpu"}.items())
    return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])


def _image(node, value: int) -> Image:
    msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3)
    msg.data = np.full(48 * 64 * 3, value, np.uint8).tobytes()
    msg.header.stamp = node.get_clock().now().to_msg()
    return msg


class TestCaptioner(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        rclpy.init()
        cls.node = rclpy.create_node("blip_captioner_test_client")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.node.destroy_node()
        rclpy.shutdown()

    def _spin_until(self, predicate, timeout: float, tick=None) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self.assertLess(time.monotonic(), deadline, "timed out")
            if tick:
                tick()
            rclpy.spin_once(self.node, timeout_sec=0.1)

    def test_captions_a_best_effort_camera(self) -> None:
        captions: list[str] = []
        self.node.create_subscription(String, "/caption", lambda msg: captions.append(msg.data), 10)
        camera = self.node.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)
        self._spin_until(lambda: captions, 60.0, tick=lambda: camera.publish(_image(self.node, 120)))
        self.assertIsInstance(captions[0], str)

    def test_publishes_diagnostics(self) -> None:
        statuses = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                      lambda msg: statuses.extend(msg.status), 10)
        self._spin_until(lambda: any(s.name == "blip_captioner: captioning" for s in statuses), 10.0)

    def test_run_time_parameters(self) -> None:
        client = self.node.create_client(SetParameters, "/blip_captioner/set_parameters")
        self.assertTrue(client.wait_for_service(timeout_sec=30.0))

        def set_one(name: str, value) -> object:
            request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
            future = client.call_async(request)
            rclpy.spin_until_future_complete(self.node, future, timeout_sec=30.0)
            return future.result().results[0]

        self.assertTrue(set_one("prompt", "a picture of").successful)
        self.assertTrue(set_one("max_rate_hz", 5.0).successful)
        refused = set_one("model", "other/model")
        self.assertFalse(refused.successful)
        self.assertIn("model", refused.reason)


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exits_cleanly(self, proc_info) -> None:
        launch_testing.asserts.assertExitCodes(proc_info)
