"""A real ROS 2 for the node tests and the real-DDS benchmark: a sourced install, or the tree from ../shared.

Every ROS process (the node, ros2 launch/param/topic, bench/ros_probe.py) runs as a subprocess with the
environment from ``environment``: ROS Humble or Jazzy sourced (the shared tree is extracted once into .ros2/),
ros2_ws built by colcon on top, this venv's python first on PATH, discovery on loopback and a ROS_DOMAIN_ID of
its own per pytest-xdist worker and distribution.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CACHE = ROOT / ".ros2"
SRC = ROOT / "ros2_ws" / "src"
PROBE = Path(__file__).resolve().parent / "ros_probe.py"
# the real ROS 2 trees in ../shared, one per supported distribution (the first is the default)
TARBALLS = {"humble": SHARED / "ros2-humble" / "ros2-humble-sdk.tar.gz",
            "jazzy": SHARED / "ros2-jazzy" / "ros2-jazzy-sdk.tar.gz"}
DISTROS = tuple(TARBALLS)
# how each distribution keeps DDS discovery on loopback; Jazzy's messages check field types only when asked
LOCALHOST = {"humble": {"ROS_LOCALHOST_ONLY": "1"},
             "jazzy": {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_PYTHON_CHECK_FIELDS": "1"}}
UNAVAILABLE = ("no ROS 2 {distro} found: these tests run the node on a real ROS 2. Run "
               "`source /opt/ros/{distro}/setup.bash` then `make test`, or put the shared ROS 2 tree at {tarball}")


def _sourced(distro: str) -> bool:
    """A ROS 2 of ``distro`` is sourced in this process's environment."""
    return (bool(os.environ.get("AMENT_PREFIX_PATH")) and shutil.which("ros2") is not None
            and os.environ.get("ROS_DISTRO") == distro)


def tree(distro: str = "humble") -> Path:
    """Where the shared tree of ``distro`` is extracted."""
    return CACHE / TARBALLS[distro].name.removesuffix(".tar.gz")


def extract_tree(distro: str = "humble") -> Path:
    """Extract the shared tarball of ``distro`` once into .ros2/ (a lock serialises pytest workers); its
    setup.bash."""
    tarball, folder = TARBALLS[distro], tree(distro)
    CACHE.mkdir(exist_ok=True)
    marker = CACHE / f"extracted-{distro}.txt"
    stamp = f"{tarball} {tarball.stat().st_size} {tarball.stat().st_mtime_ns}"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.is_file() and marker.read_text() == stamp and (folder / "setup.bash").is_file()):
            partial = CACHE / f"partial-{distro}"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
            partial.mkdir()
            with tarfile.open(tarball) as archive:
                archive.extractall(partial, filter="tar")
            (partial / folder.name).rename(folder)
            partial.rmdir()
            marker.write_text(stamp)
    return folder / "setup.bash"


def domain_id(distro: str = "humble") -> int:
    """One DDS domain per (pytest-xdist worker, distribution), offset by this checkout's path (parallel
    checkouts), or by BLIP_LORA_DOMAIN_BASE (0-19) where checkouts on one machine must not share a domain."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    base = os.environ.get("BLIP_LORA_DOMAIN_BASE")
    slot = int(base) % 20 if base and base.isdigit() else zlib.crc32(str(ROOT).encode()) % 20
    return 20 + slot * 4 + DISTROS.index(distro) * 2 + index % 2


def _source(scripts: list[Path], base: dict[str, str]) -> dict[str, str]:
    command = " && ".join(f"source {script}" for script in scripts) + " && env -0"
    done = subprocess.run(["bash", "-c", command], env=base, capture_output=True, timeout=60, check=True)
    return dict(line.split("=", 1) for line in done.stdout.decode().split("\0") if "=" in line)


def colcon_build(src: Path, out: Path, env: dict[str, str]) -> Path:
    """colcon build of the packages under ``src`` into ``out``/{build,install,log}; the install folder."""
    out.mkdir(parents=True, exist_ok=True)
    colcon = Path(sys.executable).parent / "colcon"
    command = [str(colcon if colcon.exists() else "colcon"), "--log-base", str(out / "log"), "build",
               "--base-paths", str(src), "--build-base", str(out / "build"), "--install-base", str(out / "install")]
    done = subprocess.run(command, cwd=out, env=dict(env, PYTHONDONTWRITEBYTECODE="1"), capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"colcon build of {src} failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return out / "install"


class Ros2UnavailableError(RuntimeError):
    """Neither a sourced ROS 2 nor the shared tree."""


def base_environment(distro: str = "humble") -> dict[str, str]:
    """This process's environment with ROS ``distro`` sourced (the shared tree when it is not);
    Ros2UnavailableError if neither."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if _sourced(distro):
        return env
    if not TARBALLS[distro].is_file():
        raise Ros2UnavailableError(UNAVAILABLE.format(distro=distro, tarball=TARBALLS[distro]))
    return _source([extract_tree(distro)], _unsourced(env))


def _unsourced(env: dict[str, str]) -> dict[str, str]:
    """``env`` without a ROS 2 sourced in it (another distribution must not leak into this one): its variables,
    and every entry of a path list (PATH, PYTHONPATH, LD_LIBRARY_PATH, ...) inside one of its install prefixes."""
    prefixes = {entry.rstrip("/") for name in ("AMENT_PREFIX_PATH", "COLCON_PREFIX_PATH", "CMAKE_PREFIX_PATH")
                for entry in env.get(name, "").split(os.pathsep) if entry.strip("/")}
    ros_names = {"AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "COLCON_PREFIX_PATH", "ROS_DISTRO", "ROS_VERSION",
                 "ROS_PYTHON_VERSION", "ROS_PACKAGE_PATH", *(name for names in LOCALHOST.values() for name in names)}
    kept = {}
    for name, value in env.items():
        if name in ros_names:
            continue
        if any(prefix in value for prefix in prefixes):
            value = os.pathsep.join(entry for entry in value.split(os.pathsep) if not _inside(entry, prefixes))
            if not value:
                continue
        kept[name] = value
    return kept


def _inside(path: str, prefixes: set[str]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


def _sources_stamp(distro: str) -> str:
    """What a build of ros2_ws depends on: the distribution and every file under ros2_ws/src (names, bytes)."""
    digest = hashlib.sha256(distro.encode())
    for path in sorted(p for p in SRC.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"\0{path.relative_to(SRC)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def built_workspace(folder: Path, distro: str, base: dict[str, str]) -> Path:
    """ros2_ws built on ``distro`` into ``folder``, once: processes that share ``folder`` (pytest-xdist workers)
    wait for the first build and reuse it while ros2_ws/src is unchanged. The install folder."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp, marker = _sources_stamp(distro), folder / "built-from.txt"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.is_file() and marker.read_text() == stamp):
            marker.unlink(missing_ok=True)
            colcon_build(SRC, folder, base)
            marker.write_text(stamp)
    return folder / "install"


def environment(folder: Path, distro: str = "humble") -> dict[str, str]:
    """The environment every ROS subprocess runs in: ROS ``distro`` + ros2_ws built into ``folder`` (or the
    build already there, see built_workspace), this repo importable, DDS on loopback in a domain of its own."""
    base = base_environment(distro)
    install = built_workspace(folder, distro, base)
    env = _source([install / "local_setup.sh"], base)
    env.update(LOCALHOST[distro], ROS_DOMAIN_ID=str(domain_id(distro)), PYTHONUNBUFFERED="1",
               RCUTILS_COLORIZED_OUTPUT="0", HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
               OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
    stop_daemon(env)
    atexit.register(stop_daemon, env)  # and the one this process's ros2 command lines start
    return env


def stop_daemon(env: dict[str, str]) -> None:
    """Stop the ros2 daemon of env's DDS domain, if one runs. ros2 command lines ask the daemon of their domain
    when there is one, and a daemon left by an earlier run (another checkout, a tree since deleted, a context
    shut down by a signal) answers them with errors such as '!rclpy.ok()'."""
    subprocess.run(["ros2", "daemon", "stop"], env=env, capture_output=True, text=True, timeout=60)


def run(env: dict[str, str], *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A ROS command line (ros2 ..., python ...) to completion; stdout and stderr as text."""
    return subprocess.run(list(command), env=env, capture_output=True, text=True, timeout=timeout)


class Launched:
    """A `ros2 launch` (or any command) in its own process group, output to a file; stop() sends SIGINT."""

    def __init__(self, env: dict[str, str], command: list[str], log: Path) -> None:
        self.log = log
        self._file = open(log, "w")
        self.process = subprocess.Popen(command, env=env, stdout=self._file, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process.poll() is None, f"exited with {self.process.returncode}:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.output()[-4000:]}"
            time.sleep(0.2)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30) -> int:
        """SIGINT to the process group (Ctrl-C); the exit status. Kills it if it hangs (and fails)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired as hung:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError(f"did not stop on SIGINT within {timeout} s:\n{self.output()[-3000:]}") from hung
        self._file.close()
        return self.process.returncode


def probe(env: dict[str, str], spec: dict, folder: Path, timeout: float = 120) -> dict:
    """tests/ros_probe.py with ``spec`` (see its docstring) in a ROS subprocess; its JSON report."""
    path = folder / f"probe_{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    done = run(env, sys.executable, str(PROBE), str(path), timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
