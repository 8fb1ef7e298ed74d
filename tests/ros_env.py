"""pytest side of bench/ros2_stack.py: each ROS 2 distribution's environment, or a skip that says how to get one.

A test opts into the ROS tier by taking ``ros_env`` (directly or through another fixture), or only
``ros_distro`` (the distribution's name, nothing built): it then runs once per distribution of
ros2_stack.DISTROS (ids ``[humble]``, ``[jazzy]``), marked with the distribution's name, so ``-m jazzy`` or
``--ros-distro jazzy`` runs one tree only. Each worker process makes its environment once per distribution;
the colcon build of ros2_ws is shared by the run's workers. Tests of one ``xdist_group`` share a worker per
distribution (the group's launched node is shared, not repeated), so the Humble and Jazzy halves of a group
run side by side.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bench import ros2_stack


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ros-distro", action="append", choices=ros2_stack.DISTROS, default=None,
                     help="run the ROS tests on this ROS 2 distribution only (repeatable; default: "
                          f"{', '.join(ros2_stack.DISTROS)})")


def selected_distros(config: pytest.Config) -> list[str]:
    """The distributions the ROS tests run on, in ros2_stack.DISTROS order."""
    chosen = config.getoption("--ros-distro") or ros2_stack.DISTROS
    return [distro for distro in ros2_stack.DISTROS if distro in chosen]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test whose fixtures include ros_distro (ros_env does) gets one case per selected distribution."""
    if "ros_distro" not in metafunc.fixturenames:
        return
    metafunc.parametrize("ros_distro", [pytest.param(distro, id=distro, marks=getattr(pytest.mark, distro))
                                     for distro in selected_distros(metafunc.config)],
                         indirect=True, scope="session")


def distro_of(item: pytest.Item) -> str | None:
    """The ROS 2 distribution a collected test runs on; None for a test without ros_distro."""
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("ros_distro") if callspec else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """xdist_group("x") becomes one group per distribution (pytest-xdist joins a test's group names)."""
    for item in items:
        distro = distro_of(item)
        if distro and item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(distro))


_TIER: dict[str, dict[str, float]] = {}  # distribution -> test id -> seconds (setup + call + teardown)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for distro in ros2_stack.DISTROS:
        if distro in report.keywords:
            tests = _TIER.setdefault(distro, {})
            tests[report.nodeid] = tests.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    """The ROS tier's time per distribution (tree extraction and colcon build included, in the first setups)."""
    if _TIER:
        parts = [f"{distro} {sum(tests.values()):.0f} s in {len(tests)} tests" for distro, tests in _TIER.items()]
        terminalreporter.write_line(f"real-ROS tier, time per distribution summed over workers: {', '.join(parts)}")


_ENVIRONMENTS: dict[str, dict[str, str] | str] = {}  # per distribution: the environment, or why there is none


def _run_folder(factory: pytest.TempPathFactory) -> Path:
    """The temporary folder of this pytest run, shared by its xdist workers (each works in its own below it)."""
    base = factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


@pytest.fixture(scope="session")
def ros_distro(request: pytest.FixtureRequest) -> str:
    """The ROS 2 distribution this case runs on (pytest_generate_tests gives one case per distribution)."""
    distro = getattr(request, "param", None)
    if distro not in ros2_stack.DISTROS:
        raise pytest.UsageError(f"ros_distro is parametrized in tests/ros_env.py, got {distro!r}")
    return distro


@pytest.fixture(scope="session")
def ros_env(ros_distro: str, tmp_path_factory) -> dict[str, str]:
    """Environment for ROS subprocesses: ROS 2 ``ros_distro`` sourced, ros2_ws (blip_captioner,
    blip_captioner_msgs) built on top by colcon, one DDS domain per worker and distribution. Made once per
    process and distribution (pytest may switch back and forth between them)."""
    distro = ros_distro
    if distro not in _ENVIRONMENTS:
        try:
            _ENVIRONMENTS[distro] = ros2_stack.environment(_run_folder(tmp_path_factory) / f"ros2_ws-{distro}",
                                                           distro)
        except ros2_stack.Ros2UnavailableError as missing:
            _ENVIRONMENTS[distro] = str(missing)
    if isinstance(_ENVIRONMENTS[distro], str):
        pytest.skip(_ENVIRONMENTS[distro])
    return dict(_ENVIRONMENTS[distro])


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
