"""pytest side of bench/ros2_stack.py: the session's ROS 2 environment, or a skip that says how to get one."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bench import ros2_stack

DISTRO = "humble"


@pytest.fixture(scope="session")
def ros_env(tmp_path_factory) -> dict[str, str]:
    """Environment for ROS subprocesses: ROS 2 sourced, ros2_ws (blip_captioner, blip_captioner_msgs) built on
    top by colcon, one DDS domain per worker."""
    try:
        return ros2_stack.environment(tmp_path_factory.mktemp("ros2_ws"), DISTRO)
    except ros2_stack.Ros2UnavailableError as missing:
        pytest.skip(str(missing))


MAX_NEW_TOKENS = 8
CONFIG_FILE = ros2_stack.SRC / "blip_captioner" / "config" / "captioner.yaml"


@pytest.fixture(scope="session")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    """Two LoRA adapters for the tiny BLIP with seeded random weights: their captions differ from the base's."""
    import torch

    from blip_lora_core import LoraConfig, inject_lora, save_adapter
    from blip_lora_core.lora.hooks import lora_layers
    from blip_lora_core.models.loading import load_blip

    folder = tmp_path_factory.mktemp("adapters")
    paths = {}
    for name, seed in (("a", 1), ("b", 2)):
        bundle = load_blip(str(tiny_model_dir), device="cpu")
        inject_lora(bundle.model, LoraConfig(r=4, alpha=8))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in lora_layers(bundle.model).values():
                module.lora_A.copy_(torch.randn(module.lora_A.shape, generator=gen))
                module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen))
        paths[name] = str(save_adapter(bundle.model, folder / f"{name}.safetensors", config=LoraConfig(r=4, alpha=8)))
    return paths


@pytest.fixture(scope="session")
def reference(tiny_model_dir):
    """reference(images, adapter=None, prompt=None, num_beams=1) -> the captions the node should publish."""
    from blip_lora_core.models.captioning import Captioner

    captioner = Captioner.from_pretrained(str(tiny_model_dir), device="cpu", max_new_tokens=MAX_NEW_TOKENS)

    def captions(images, adapter: str | None = None, prompt: str | None = None, num_beams: int = 1) -> list[str]:
        captioner.set_adapter(adapter)
        captioner.prompt, captioner.num_beams = prompt, num_beams
        return captioner.caption(list(images))

    return captions


def write_params(path: Path, **values) -> Path:
    """The package's YAML (keyed /**) with ``values`` changed; written to ``path``."""
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config["/**"]["ros__parameters"].update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def launch(env: dict[str, str], folder: Path, *arguments: str, log: str = "launch.log") -> ros2_stack.Launched:
    """`ros2 launch blip_captioner blip_captioner.launch.py ARGUMENTS` in its own process group."""
    return ros2_stack.Launched(env, ["ros2", "launch", "blip_captioner", "blip_captioner.launch.py", *arguments],
                               folder / log)


def ros2(env: dict[str, str], *arguments: str, timeout: float = 60) -> str:
    """A ros2 CLI command's output (stdout, then stderr without Cyclone's loopback notice), stripped."""
    done = ros2_stack.run(env, "ros2", *arguments, timeout=timeout)
    err = "\n".join(line for line in done.stderr.splitlines() if "disabling multicast" not in line)
    return (done.stdout + err).strip()


def ros2_at_once(env: dict[str, str], *commands: tuple[str, ...]) -> list[str]:
    """Several ros2 CLI commands side by side (each CLI start takes about a second); their outputs."""
    processes = [subprocess.Popen(["ros2", *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for command in commands]
    outputs = [process.communicate(timeout=60) for process in processes]
    return [(out + "\n".join(line for line in err.splitlines() if "disabling multicast" not in line)).strip()
            for out, err in outputs]


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 60) -> object:
    """Poll ``predicate`` until it returns something true (an event: a line logged, a process ended)."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return result
