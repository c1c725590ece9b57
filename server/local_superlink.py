"""A SuperLink in simulation mode that fedgraft starts, owns and stops, on 127.0.0.1 only.

`flwr run . local` starts a detached SuperLink on fixed ports that outlives the command.
`fedgraft simulate` and the tests instead start their own, on free loopback ports with a
private FLWR_HOME, submit the app with `flwr run`, and stop the SuperLink afterwards.
Runtime dependency installation is off: the app runs in the environment it was started
from, and nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "LocalSuperLink", "SuperLinkError", "find_executable", "flower_env", "format_run_config", "free_port", "port_open",
]

logger = logging.getLogger(__name__)

FEDERATION = "fedgraft-local"
STARTUP_TIMEOUT_S = 60.0


class SuperLinkError(RuntimeError):
    """The local SuperLink could not start or the run could not be submitted."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def format_run_config(values: dict[str, Any]) -> str:
    """Render a run config for `flwr run --run-config`, quoting strings as TOML does."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, (int, float)):
            rendered = repr(value)
        else:
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
            rendered = f'"{escaped}"'
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


def find_executable(name: str) -> str:
    """Find a Flower console script beside the running interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SuperLinkError(f"`{name}` not found; install fedgraft with `pip install -e .`, which brings flwr")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Return this process's environment for Flower processes with a private FLWR_HOME.

    Telemetry and update checks are off. PATH starts with this interpreter's folder,
    because the SuperLink and SuperNodes start `flower-superexec` and the app processes by name.
    """
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    return env


class LocalSuperLink:
    """Start with `with LocalSuperLink(work_dir) as link:`; the SuperLink stops on exit."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self.flwr_home = self.work_dir / "flwr-home"
        self.log_path = self.work_dir / "superlink.log"
        # Flower 1.42 serves the Control, Fleet and Runtime APIs on this one HTTP port.
        self.port = free_port()
        self._process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """Environment for Flower commands that talk to this SuperLink."""
        return flower_env(self.flwr_home)

    def __enter__(self) -> LocalSuperLink:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{FEDERATION}"\n\n'
            f'[superlink.{FEDERATION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        command = [
            find_executable("flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation", "subprocess",
            "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--database", str(self.work_dir / "superlink.db"),
        ]
        log = open(self.log_path, "ab")
        self._process = subprocess.Popen(command, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise SuperLinkError(
                    f"flower-superlink exited with code {self._process.returncode}; see {self.log_path}"
                )
            if port_open(self.port):
                logger.info("SuperLink ready on 127.0.0.1:%d (log: %s)", self.port, self.log_path)
                return
            time.sleep(0.2)
        self.stop()
        raise SuperLinkError(f"flower-superlink did not start within {STARTUP_TIMEOUT_S:.0f} s; see {self.log_path}")

    def run_app(
        self,
        app_dir: Path,
        run_config: dict[str, Any],
        num_supernodes: int,
        timeout: float,
        output=None,
    ) -> int:
        """Submit the Flower App in `app_dir` and stream its logs until it ends; return flwr's exit code."""
        command = [
            find_executable("flwr"), "run", str(app_dir), FEDERATION, "--stream",
            "--run-config", format_run_config(run_config),
            "--federation-config", f"num-supernodes={num_supernodes}",
        ]
        try:
            completed = subprocess.run(
                command, env=self.env(), timeout=timeout, stdout=output, stderr=subprocess.STDOUT if output else None
            )
        except subprocess.TimeoutExpired as err:
            raise SuperLinkError(f"the run did not finish within {timeout:.0f} s") from err
        return completed.returncode

    def stop(self) -> None:
        """Stop the SuperLink and every process it started, detached ones included."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        for member in family:
            try:
                member.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=15)
        for member in alive:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=15)
        if process.poll() is None:
            process.wait(timeout=5)
