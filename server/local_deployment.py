"""A TLS-authenticated Flower deployment on 127.0.0.1: one SuperLink and its SuperNodes.

`LocalDeployment` starts `flower-superlink` in deployment mode (no `--simulation`) with
TLS and `--enable-supernode-auth`. It registers SuperNode public keys with
`flwr supernode register` and starts `flower-supernode` processes that authenticate with
their private keys. It submits the app with `flwr run`, and on exit it stops every
process it started, children included. The deployment tests and the load benchmark use
it, and `docs/deployment.md` runs the same commands by hand.

Everything listens on 127.0.0.1 and on free ports. FLWR_HOME is a private folder under
the work directory, telemetry and update checks are off, and runtime dependency
installation is disabled, so the app runs in the current environment and nothing is
downloaded.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import psutil

from fedgraft.server.certificates import CertificateFiles
from fedgraft.server.local_superlink import find_executable, flower_env, format_run_config, free_port, port_open

__all__ = ["DeploymentError", "LocalDeployment", "SuperNodeProcess", "stop_process_tree", "stop_process_trees"]

logger = logging.getLogger(__name__)

FEDERATION = "fedgraft-deployment"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 120.0


class DeploymentError(RuntimeError):
    """A process of the local deployment failed to start, register or finish in time."""


def stop_process_tree(process: subprocess.Popen | None, timeout: float = STOP_TIMEOUT_S) -> None:
    """Terminate `process` and all its descendants, then kill those still alive after `timeout` s."""
    stop_process_trees([process], timeout)


def stop_process_trees(processes: list[subprocess.Popen | None], timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop several process trees at once, so that stopping N trees takes one `timeout`, not N."""
    family: list[psutil.Process] = []
    for process in processes:
        if process is None:
            continue
        try:
            root = psutil.Process(process.pid)
            family += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for member in family:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=timeout)
    if alive:
        logger.warning(
            "%d processes did not stop within %.0f s of SIGTERM, killing them: %s",
            len(alive), timeout, [member.pid for member in alive],
        )
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    for process in processes:
        if process is not None and process.poll() is None:
            process.wait(timeout=timeout)


class SuperNodeProcess:
    """One `flower-supernode` process and its log file."""

    def __init__(self, name: str, process: subprocess.Popen, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float) -> int | None:
        """Return the exit code, or None when the node is still running after `timeout` s."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process_tree(self.process)


class LocalDeployment:
    """A SuperLink with TLS and node authentication, and the SuperNodes started through it.

    Use it as `with LocalDeployment(work_dir, certificates) as deployment:`, which starts
    the SuperLink and stops every process on exit.

    `certificates` are the files that `fedgraft.server.certificates` wrote. The SuperLink
    uses the CA, its certificate and its key. SuperNodes and the `flwr` CLI verify it
    with `certificates.ca_certificate` unless a test passes another root certificate.
    """

    def __init__(self, work_dir: Path, certificates: CertificateFiles, state_in_memory: bool = False) -> None:
        self.work_dir = Path(work_dir)
        self.certificates = certificates
        self.flwr_home = self.work_dir / "flwr-home"
        self.log_path = self.work_dir / "superlink.log"
        # Flower 1.42 serves the Control, Fleet and Runtime APIs on this one HTTPS port.
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # With 20 SuperNodes on 2 cores, Flower 1.42's SQLite state file raised "database is
        # locked" on pull-messages, and the run stalled. Memory state avoids the file lock.
        self.state_in_memory = state_in_memory
        self.nodes: list[SuperNodeProcess] = []
        self._superlink: subprocess.Popen | None = None

    @property
    def superlink_pid(self) -> int | None:
        return self._superlink.pid if self._superlink is not None else None

    def env(self) -> dict[str, str]:
        """Environment for every Flower process and command of this deployment."""
        env = flower_env(self.flwr_home)
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        return env

    def __enter__(self) -> LocalDeployment:
        try:
            self.start_superlink()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start_superlink(self) -> None:
        """Start the SuperLink with TLS and node authentication; return once its port accepts connections."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{FEDERATION}"\n\n'
            f'[superlink.{FEDERATION}]\naddress = "{self.address}"\n'
            f'root-certificates = "{self.certificates.ca_certificate.resolve()}"\n'
        )
        command = [
            find_executable("flower-superlink"),
            "--ssl-ca-certfile", str(self.certificates.ca_certificate),
            "--ssl-certfile", str(self.certificates.server_certificate),
            "--ssl-keyfile", str(self.certificates.server_key),
            "--enable-supernode-auth",
            "--isolation", "subprocess",
            "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            # Without --database Flower keeps the SuperLink's state in memory.
            *([] if self.state_in_memory else ["--database", str(self.work_dir / "superlink.db")]),
        ]
        self._superlink = _start(command, self.env(), self.log_path)

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._superlink.poll() is not None:
                raise DeploymentError(
                    f"flower-superlink exited with code {self._superlink.returncode} during startup. "
                    f"See {self.log_path}"
                )
            if port_open(self.port):
                logger.info("SuperLink ready on %s with TLS and node authentication (log: %s)", self.address, self.log_path)
                return
            time.sleep(0.2)
        raise DeploymentError(
            f"flower-superlink did not open port {self.port} within {STARTUP_TIMEOUT_S:.0f} s. See {self.log_path}"
        )

    def register_node(self, public_key: Path) -> int:
        """Register a SuperNode public key (OpenSSH format) with the SuperLink; return its node id."""
        result = self._flwr(["supernode", "register", str(public_key), FEDERATION, "--format", "json"])
        try:
            reply = json.loads(result.stdout)
        except json.JSONDecodeError:
            reply = {}
        if result.returncode != 0 or not reply.get("success"):
            raise DeploymentError(
                f"flwr supernode register {public_key} failed with exit code {result.returncode}: "
                f"{(result.stdout + result.stderr).strip()[-2000:]}"
            )
        node_id = int(reply["node-id"])
        logger.info("registered SuperNode %d with public key %s", node_id, public_key)
        return node_id

    def list_nodes(self) -> list[dict[str, Any]]:
        """Return the SuperLink's node table from `flwr supernode ls --format json`."""
        result = self._flwr(["supernode", "ls", FEDERATION, "--format", "json"])
        if result.returncode != 0:
            raise DeploymentError(
                f"flwr supernode ls failed with exit code {result.returncode}: {(result.stdout + result.stderr).strip()[-2000:]}"
            )
        return list(json.loads(result.stdout).get("nodes", []))

    def wait_for_online_nodes(self, count: int, timeout: float, poll_interval: float = 2.0) -> list[dict[str, Any]]:
        """Poll the node table until `count` nodes are online; raise DeploymentError after `timeout` s.

        A `flwr supernode ls` call that fails or times out is logged and retried, because
        on a loaded machine one call can take longer than CLI_TIMEOUT_S.
        """
        deadline = time.monotonic() + timeout
        online: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                online = [node for node in self.list_nodes() if node.get("status") == "online"]
            except DeploymentError as err:
                logger.warning("listing SuperNodes failed, retrying: %s", err)
            if len(online) >= count:
                return online
            exited = [node.name for node in self.nodes if node.process.poll() is not None]
            if exited:
                raise DeploymentError(
                    f"SuperNodes {exited} exited while waiting for {count} online nodes. "
                    f"See their logs in {self.work_dir}"
                )
            time.sleep(poll_interval)
        raise DeploymentError(f"only {len(online)} of {count} SuperNodes came online within {timeout:.0f} s")

    def start_supernode(
        self,
        name: str,
        private_key: Path,
        node_config: Mapping[str, Any],
        root_certificates: Path | None = None,
        max_retries: int = 3,
        max_wait_time: float = 30.0,
    ) -> SuperNodeProcess:
        """Start a SuperNode that authenticates with `private_key`, without waiting for it to connect.

        `max_retries` and `max_wait_time` (seconds) bound how long the node tries to reach
        the SuperLink before it gives up. `root_certificates` defaults to the deployment's CA.
        """
        log_path = self.work_dir / f"{name}.log"
        command = [
            find_executable("flower-supernode"),
            "--superlink", self.address,
            "--root-certificates", str(root_certificates or self.certificates.ca_certificate),
            "--auth-supernode-private-key", str(private_key),
            "--node-config", format_run_config(dict(node_config)),
            "--isolation", "subprocess",
            # Each SuperNode serves its own Runtime API to its ClientApp processes.
            "--host", "127.0.0.1",
            "--port", str(free_port()),
            "--max-retries", str(max_retries),
            "--max-wait-time", str(max_wait_time),
        ]
        node = SuperNodeProcess(name, _start(command, self.env(), log_path), log_path)
        self.nodes.append(node)
        logger.info("started SuperNode %s (pid %d, log: %s)", name, node.pid, log_path)
        return node

    def run_app(
        self,
        app_dir: Path,
        run_config: Mapping[str, Any],
        timeout: float,
        output: IO[str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Submit the Flower App in `app_dir`, stream its logs, and wait until the run has finished.

        Returns flwr's process with its output in `stdout` (also written to `output` when
        given). Its return code is 1 when the run did not end as `finished:completed`.
        Raises DeploymentError when the run takes longer than `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        command = [
            find_executable("flwr"), "run", str(app_dir), FEDERATION, "--stream",
            "--run-config", format_run_config(dict(run_config)),
        ]
        try:
            result = subprocess.run(
                command, env=self.env(), timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        except subprocess.TimeoutExpired as err:
            raise DeploymentError(f"the run did not finish within {timeout:.0f} s. See {self.log_path}") from err
        stdout = result.stdout

        # `flwr run --stream` in Flower 1.42 exits with code 0 when its log stream breaks,
        # for example on a loaded SuperLink, while the run goes on. Ask the SuperLink instead.
        started = re.search(r"Successfully started run (\d+)", stdout)
        returncode = result.returncode
        if returncode == 0 and started is not None:
            status = self.wait_for_run(int(started.group(1)), timeout=max(deadline - time.monotonic(), 1.0))
            if status != "finished:completed":
                stdout += f"\nrun {started.group(1)} ended with status {status}\n"
                returncode = 1
        if output is not None:
            output.write(stdout)
        return subprocess.CompletedProcess(command, returncode, stdout, None)

    def wait_for_run(self, run_id: int, timeout: float, poll_interval: float = 5.0) -> str:
        """Poll the run's status until it starts with `finished`; return it, for example `finished:completed`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = self._flwr(["ls", FEDERATION, "--run-id", str(run_id), "--format", "json"])
                runs = json.loads(result.stdout).get("runs", [])
            except (DeploymentError, json.JSONDecodeError) as err:
                logger.warning("reading the status of run %d failed, retrying: %s", run_id, err)
                runs = []
            status = str(runs[0].get("status", "")) if runs else ""
            if status.startswith("finished"):
                return status
            if time.monotonic() + poll_interval > deadline:
                raise DeploymentError(
                    f"run {run_id} did not finish within {timeout:.0f} s (last status {status!r}). See {self.log_path}"
                )
            time.sleep(poll_interval)

    def stop(self) -> None:
        """Stop every SuperNode, then the SuperLink, with all their child processes."""
        superlink, self._superlink = self._superlink, None
        stop_process_trees([node.process for node in self.nodes] + [superlink])

    def _flwr(self, arguments: list[str]) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [find_executable("flwr"), *arguments],
                env=self.env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as err:
            raise DeploymentError(f"flwr {' '.join(arguments)} did not finish within {CLI_TIMEOUT_S:.0f} s") from err


def _start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start `command` with stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
