"""The README's robot-install sections (ROS 2 Humble, ROS 2 Jazzy) run as written, on the shared ROS 2 trees.

Each section's ```bash block runs in bash (``set -eo pipefail``) in a sandbox that stands in for the robot; its
last line, ``ros2 launch blip_captioner ...``, is started with the shell's environment as it stands then, and a
camera (bench/ros_probe.py) sends it one frame: the caption that comes back must be the tiny model's.

What stands in for what (README -> here):
- ``/opt/ros/<distro>`` -> the shared tree of that distribution, extracted into .ros2/ (bench/ros2_stack.py).
- Ubuntu's ``/usr/bin/python3`` -> this machine's Python binary, copied, over its standard library, with an empty
  dist-packages of its own; for Jazzy (Ubuntu 24.04) marked EXTERNALLY-MANAGED (PEP 668), for Humble (22.04) not.
- ``sudo apt install X``, and the Python packages apt's ROS 2 depends on -> the PyPI packages of APT and
  ROS_FROM_APT below, installed into that dist-packages (console scripts such as colcon into its bin/); numpy
  1.26.4 is Ubuntu 24.04's (22.04's 1.21 has no Python 3.11 wheel).
- ``pip install torch`` (the robot's CUDA build) -> the pinned CPU torch on this machine's disk, never an unpinned one.
- ``/path/to/blip-lora`` -> a copy of this checkout's files (tracked and new ones, none that git ignores).
- ``~`` -> an empty home folder.
- the robot's camera, model and adapter -> the tiny test BLIP through ``params_file:=``, a random-weight adapter
  for ``adapter:=``, one frame from bench/ros_probe.py on the launch's ``image_topic``.

The sandbox also sets what every ROS test here sets: ROS_DOMAIN_ID and loopback discovery (ros2_stack), and
HF_HUB_OFFLINE=1 (no hub here); pip uses this machine's pip cache and settings.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from conftest import CAPTIONS
from ros_env import write_params
from ros_frames import image_frame

from bench import ros2_stack
from blip_lora_core.models.captioning import Captioner

pytestmark = [pytest.mark.ros, pytest.mark.slow]
ROOT = ros2_stack.ROOT
TORCH = f"torch=={torch.__version__.split('+')[0]}"  # the CPU build the Makefile installs, never a newer one
NUMPY = "numpy==1.26.4"
# apt packages the README names -> the PyPI packages that stand in for them
APT = {"python3-pip": ("pip",), "python3-numpy": (NUMPY,), "python3-opencv": ("opencv-python-headless==4.10.0.84",),
       "python3-venv": (),  # the standard library's venv and ensurepip come with the copied Python
       "python3-colcon-common-extensions": ("colcon-common-extensions",)}
# what apt's ROS 2 packages pull in (python3-numpy, -yaml, -lark, -catkin-pkg, -empy, -packaging)
ROS_FROM_APT = (NUMPY, "pyyaml", "lark", "catkin_pkg", "empy==3.3.4", "packaging")
# apt packages the README names whose programs this machine has itself
MACHINE = {"build-essential": ("gcc", "g++", "make"), "cmake": ("cmake",)}
# the ROS 2 packages of ros-<distro>-ros-base (REP 2001) that ros2_ws depends on: every apt install of ROS 2 has them
ROS_BASE = {"rclpy", "rcl_interfaces", "sensor_msgs", "std_msgs", "diagnostic_msgs", "launch", "launch_ros",
            "ament_index_python", "ament_cmake", "rosidl_default_generators", "rosidl_default_runtime"}
EXTERNALLY_MANAGED = {"humble": False, "jazzy": True}  # Ubuntu 22.04's system Python is not; 24.04's is
# the environment of this test process that must not reach the robot's shell
DEPENDS = ("depend", "build_depend", "buildtool_depend", "exec_depend")
LEAKS = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "LD_LIBRARY_PATH", "CMAKE_PREFIX_PATH",
         "PIP_USER", "PIP_TARGET", "PIP_PREFIX", "PIP_REQUIRE_VIRTUALENV")


def readme_block(distro: str) -> list[str]:
    """The README's install block for ``distro`` (the ```bash block that sources /opt/ros/<distro>), as logical
    lines: continuations joined, blank lines dropped."""
    blocks = [block for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
              if f"source /opt/ros/{distro}/setup.bash" in block]
    assert len(blocks) == 1, f"README.md: {len(blocks)} install blocks source /opt/ros/{distro}/setup.bash"
    return [line.strip() for line in re.sub(r"\\\n\s*", "", blocks[0]).splitlines() if line.strip()]


def apt_packages(line: str) -> list[str]:
    """``sudo apt install A B`` -> [A, B]."""
    words = shlex.split(line, comments=True)
    assert words[:3] == ["sudo", "apt", "install"], line
    return words[3:]


def apt_stand_ins(names: list[str], distro: str, ros: Path) -> list[str]:
    """The PyPI packages standing in for the apt packages ``names`` (and for apt's ROS 2); a `ros-<distro>-x`
    must be in the tree, build-essential's and cmake's programs on this machine."""
    for name in names:
        if name.startswith(f"ros-{distro}-"):
            package = name.removeprefix(f"ros-{distro}-").replace("-", "_")
            assert (ros / "share" / package / "package.xml").is_file(), f"README: {name}: no {package} in {ros}"
        elif name in MACHINE:
            assert all(shutil.which(program) for program in MACHINE[name]), f"{name}: {MACHINE[name]} not here"
        else:
            assert name in APT, f"README apt package without a stand-in in {Path(__file__).name}: {name}"
    return list(dict.fromkeys([*ROS_FROM_APT, *(spec for name in names if name in APT for spec in APT[name])]))


def ros2_ws_dependencies() -> dict[str, set[str]]:
    """Each ros2_ws package's build and run dependencies (package.xml; tests' dependencies left out)."""
    found = {}
    for manifest in sorted(ros2_stack.SRC.glob("*/package.xml")):
        root = ElementTree.parse(manifest).getroot()
        found[root.findtext("name")] = {element.text.strip() for tag in DEPENDS for element in root.iter(tag)}
    return found


def robot_script(lines: list[str], distro: str, ros: Path, checkout: Path, env_out: Path) -> str:
    """The block's commands before `sudo apt` and after it up to the launch, with the stand-ins' paths; the
    shell's environment is written to ``env_out`` at the end."""
    body = "\n".join(lines[1:-1])
    substitutions = ((rf"/opt/ros/{distro}\b", str(ros)), (r"/path/to/blip-lora\b", str(checkout)),
                     (r"(pip install(?: --user)?) torch(?=\s)", rf"\g<1> {TORCH}"))
    for pattern, replacement in substitutions:
        body, count = re.subn(pattern, replacement, body)
        assert count >= 1, f"README install block: nothing matches {pattern!r}"
    return f"set -eo pipefail\n{body}\nenv -0 > {shlex.quote(str(env_out))}\n"


def launch_command(line: str, params: Path, adapter: str) -> list[str]:
    """The block's `ros2 launch` line with the tiny model's params file and the test adapter."""
    words = shlex.split(line, comments=True)
    assert words[:4] == ["ros2", "launch", "blip_captioner", "blip_captioner.launch.py"], line
    words = [f"adapter:={adapter}" if word.startswith("adapter:=") else word for word in words]
    return [*words, f"params_file:={params}"]


def copy_checkout(dest: Path) -> Path:
    """This checkout's files as a clone would hold them (tracked and new files, none that git ignores)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source, target = ROOT / name, dest / name
        if source.is_symlink() or source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    return dest


def robot_python(folder: Path, externally_managed: bool) -> tuple[Path, Path]:
    """A system Python of its own: this machine's binary copied into ``folder``/usr/bin over a standard library
    of symlinks, so its site folders are its own (empty). Its bin folder and apt's dist-packages folder."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base, usr = Path(sys.base_prefix), folder / "usr"
    (usr / "bin").mkdir(parents=True)
    shutil.copy2(base / "bin" / version, usr / "bin" / version)
    (usr / "bin" / "python3").symlink_to(version)
    stdlib = usr / "lib" / version
    stdlib.mkdir(parents=True)
    for entry in (base / "lib" / version).iterdir():
        if entry.name not in ("EXTERNALLY-MANAGED", "site-packages", "dist-packages"):
            (stdlib / entry.name).symlink_to(entry)
    if externally_managed:
        (stdlib / "EXTERNALLY-MANAGED").write_text(
            "[externally-managed]\nError=To install Python packages system-wide, try apt install python3-xyz.\n")
    if (base / "include" / version).is_dir():
        (usr / "include").mkdir()
        (usr / "include" / version).symlink_to(base / "include" / version)
    sites = subprocess.run([str(usr / "bin" / "python3"), "-c", "import site; print(*site.getsitepackages())"],
                           capture_output=True, text=True, check=True, env={}).stdout.split()
    dist = Path(next((site for site in sites if site.endswith("python3/dist-packages")), sites[0]))
    dist.mkdir(parents=True)
    return usr / "bin", dist


def apt_install(bin_folder: Path, dist: Path, packages: list[str]) -> None:
    """The stand-in of `sudo apt install`: PyPI packages into the robot Python's dist-packages, their console
    scripts (colcon, pip) into its bin folder."""
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_folder / "python3"), "install", "-q",
                           "--root-user-action=ignore", "--target", str(dist), *packages],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for script in (dist / "bin").iterdir():
        script.rename(bin_folder / script.name)


def robot_environment(bin_folder: Path, home: Path, distro: str) -> dict[str, str]:
    """This machine's environment without this test's venv or a sourced ROS 2, the robot's Python first on PATH."""
    env = {name: value for name, value in os.environ.items()
           if name not in LEAKS and not name.startswith(("AMENT_", "COLCON_", "ROS_"))}
    venv_bin = str(Path(sys.executable).parent)
    path = [str(bin_folder), *(entry for entry in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                               if entry and entry != venv_bin)]
    cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    env.update(ros2_stack.LOCALHOST[distro], HOME=str(home), PATH=os.pathsep.join(path),
               ROS_DOMAIN_ID=str(ros2_stack.domain_id(distro)), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    if cache.returncode == 0 and cache.stdout.strip():
        env["PIP_CACHE_DIR"] = cache.stdout.strip()
    return env


def robot_shell(distro: str, folder: Path) -> tuple[list[str], dict[str, str]]:
    """The README's block for ``distro`` run in a robot sandbox in ``folder`` up to its `ros2 launch` line; the
    block's lines and the shell's environment at that point."""
    lines = readme_block(distro)
    ros = ros2_stack.extract_tree(distro).parent
    bin_folder, dist = robot_python(folder / "robot", EXTERNALLY_MANAGED[distro])
    apt_install(bin_folder, dist, apt_stand_ins(apt_packages(lines[0]), distro, ros))
    home = folder / "home"
    home.mkdir()
    env = robot_environment(bin_folder, home, distro)
    refused = subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_folder / "python3"), "install",
                              "--dry-run", "--user", "pyyaml"], env=env, capture_output=True, text=True, timeout=120)
    assert ("externally-managed-environment" in refused.stderr) == EXTERNALLY_MANAGED[distro], refused.stderr
    env_out = folder / "shell.env"
    script = robot_script(lines, distro, ros, copy_checkout(folder / "blip-lora"), env_out)
    with open(folder / "install.log", "w") as log:
        done = subprocess.run(["bash", "-c", script], cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=900)
    assert done.returncode == 0, f"{script}\n{(folder / 'install.log').read_text()[-6000:]}"
    return lines, dict(item.split("=", 1) for item in env_out.read_bytes().decode().split("\0") if "=" in item)


def test_the_readme_installs_every_dependency_of_ros2_ws(ros_distro):
    """Each package.xml dependency is ROS 2's base, a ros2_ws package, or on the README's apt line."""
    names = apt_packages(readme_block(ros_distro)[0])
    packages = ros2_ws_dependencies()
    missing = {package: sorted(dep for dep in deps if dep not in ROS_BASE and dep not in packages and dep not in names
                               and f"ros-{ros_distro}-{dep.replace('_', '-')}" not in names)
               for package, deps in packages.items()}
    assert not any(missing.values()), f"README {ros_distro} apt line lacks: {missing}"


def test_the_readme_robot_install_runs_as_written_and_the_launched_node_captions(ros_distro, adapters, tmp_path):
    if not ros2_stack.TARBALLS[ros_distro].is_file():
        pytest.skip(ros2_stack.UNAVAILABLE.format(distro=ros_distro, tarball=ros2_stack.TARBALLS[ros_distro]))
    lines, shell = robot_shell(ros_distro, tmp_path)
    # the robot's model: a tiny BLIP saved by the robot's own transformers (4.x on Humble, 5.x on Jazzy)
    model = tmp_path / "model"
    made = ros2_stack.run(shell, "python3", "-c", "import sys; from blip_lora_core.models.loading import "
                          "build_tiny_blip; build_tiny_blip(sys.argv[1], sys.argv[2:], seed=0)", str(model), *CAPTIONS,
                          timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    params = write_params(tmp_path / "params.yaml", model=str(model), device="cpu", max_rate_hz=0, max_new_tokens=8)
    command = launch_command(lines[-1], params, adapters["a"])
    adapter = next((word.split(":=", 1)[1] for word in command if word.startswith("adapter:=")), None)
    topic = next(word.split(":=", 1)[1] for word in command if word.startswith("image_topic:="))
    rgb = np.random.default_rng(0).integers(0, 256, (72, 96, 3), np.uint8)
    frame, seen = image_frame(rgb, "rgb8", sec=1000, nanosec=7, frame_id="camera_color_optical_frame")

    node = ros2_stack.Launched(shell, command, tmp_path / "launch.log")
    try:
        node.wait_for("[blip_captioner]: captioning")
        report = ros2_stack.probe(shell, dict(topic=topic, frames=[frame]), tmp_path)
    finally:
        code = node.stop()
    assert code == 0 and "process has finished cleanly" in node.output(), node.output()[-3000:]
    assert "Traceback" not in node.output()
    expected = Captioner.from_pretrained(str(model), device="cpu", adapter=adapter, max_new_tokens=8).caption([seen])
    assert [got["text"] for got in report["frames"]] == expected
