"""Helpers shared by the benchmark scripts: run `fedgraft simulate`, describe the machine, write results.

Every simulation runs as its own `python -m fedgraft.cli simulate` subprocess, so each
one starts its own SuperLink on 127.0.0.1 and measures the same thing a user's command
does. The subprocess's output goes to `<run dir>.log` beside the run directory, and the
per-round table rows are echoed while the run goes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import psutil

from fedgraft.config import ConfigError, RunConfig

__all__ = [
    "BenchmarkError",
    "SimulationResult",
    "add_run_arguments",
    "default_work_dir",
    "describe_machine",
    "format_percent",
    "format_points",
    "markdown_table",
    "median",
    "positive_int",
    "read_run",
    "run_options",
    "run_simulation",
    "simulate_options",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Seconds between two reads of a running simulation's log.
POLL_SECONDS = 2.0
# Seconds a timed-out simulation gets to stop its SuperLink after SIGINT before it is killed.
STOP_GRACE_SECONDS = 30.0
# Lines of a failed simulation's log shown in the error.
TAIL_LINES = 30

# A per-round table row as the ServerApp logs it: "INFO fedgraft.server.app:     3 |     0.4123 | ...".
_ROUND_ROW = re.compile(r"fedgraft\.server\.app: +(\d+ \|.*)$")


class BenchmarkError(RuntimeError):
    """A simulation or a measurement failed; the message names the run and its log file."""


@dataclass(frozen=True)
class SimulationResult:
    """One finished `fedgraft simulate` run and the wall-clock time around its subprocess."""

    run_dir: Path
    config: dict[str, Any]  # config.json: the resolved run config, hyphenated keys
    metrics: dict[str, Any]  # metrics.json: {"rounds": [...], "summary": {...}}
    # From starting the subprocess to its exit, SuperLink start included. For a run read
    # from disk it is the ServerApp's own `seconds`, which leaves out the process start-up.
    wall_seconds: float
    log_path: Path | None  # None for a run read from disk

    @property
    def summary(self) -> dict[str, Any]:
        return self.metrics["summary"]

    @property
    def final_test_accuracy(self) -> float:
        return float(self.summary["final_test_accuracy"])

    def incomplete_rounds(self) -> list[int]:
        """Return the training rounds in which fewer nodes trained than num-clients * fraction-train."""
        num_clients = int(self.config["num-clients"])
        expected = max(1, round(num_clients * float(self.config["fraction-train"])))
        return [
            record["round"]
            for record in self.metrics["rounds"]
            if record["round"] >= 1 and record["nodes_trained"] < expected
        ]


def simulate_options(values: Mapping[str, Any]) -> list[str]:
    """Turn RunConfig field values into `fedgraft simulate` options, leaving out None values."""
    options: list[str] = []
    for name, value in values.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            options.append(flag if value else "--no-" + flag[2:])
        else:
            options.extend([flag, str(value)])
    return options


def read_run(run_dir: Path) -> SimulationResult:
    """Read a finished run directory. Raise BenchmarkError when it lacks a config or a summary."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    metrics_path = run_dir / "metrics.json"
    for path in (config_path, metrics_path):
        if not path.is_file():
            raise BenchmarkError(f"{path} not found; pass a run directory written by `fedgraft simulate`")

    metrics = json.loads(metrics_path.read_text())
    if not metrics.get("summary"):
        raise BenchmarkError(f"{metrics_path} has no summary: the run was interrupted or is still running")
    return SimulationResult(
        run_dir=run_dir,
        config=json.loads(config_path.read_text()),
        metrics=metrics,
        wall_seconds=float(metrics["summary"]["seconds"]),
        log_path=None,
    )


def run_simulation(run_dir: Path, options: Sequence[str], timeout_s: float, label: str) -> SimulationResult:
    """Run `fedgraft simulate OPTIONS --run-dir RUN_DIR` in a subprocess and read its results.

    The wall-clock time covers the whole subprocess, from start to exit. Raises
    BenchmarkError, with the last lines of the log, when the run fails, times out or ends
    without a summary. A run that times out gets SIGINT, so it stops its SuperLink, and
    is killed with its child processes after STOP_GRACE_SECONDS.
    """
    run_dir = Path(run_dir).resolve()
    if (run_dir / "metrics.json").exists():
        raise BenchmarkError(f"run directory {run_dir} already contains a run; pass another --work-dir")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.parent / f"{run_dir.name}.log"
    command = [sys.executable, "-m", "fedgraft.cli", "simulate", *options, "--run-dir", str(run_dir)]

    print(f"[{label}] started {datetime.now():%H:%M:%S}; log: {log_path}", flush=True)
    with open(log_path, "w") as log, open(log_path) as reader:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        echo = _RoundRowEcho(reader, label)
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while True:
            try:
                # CPython's wait() polls at least every 50 ms, so it adds at most that to the time.
                process.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                echo.read_new_lines()
            except KeyboardInterrupt:
                # Ctrl-C reached the simulation too, so give it time to stop its SuperLink.
                _stop(process, interrupt=False)
                raise
            if time.perf_counter() - started > timeout_s:
                _stop(process, interrupt=True)
                raise BenchmarkError(
                    f"[{label}] did not finish within {timeout_s:.0f} s (--run-timeout) and was stopped; "
                    f"last lines of {log_path}:\n{_tail(log_path)}"
                )
        wall_seconds = time.perf_counter() - started
        echo.read_new_lines(final=True)

    if process.returncode != 0:
        raise BenchmarkError(
            f"[{label}] `fedgraft simulate` exited with code {process.returncode}; "
            f"last lines of {log_path}:\n{_tail(log_path)}"
        )
    try:
        result = read_run(run_dir)
    except BenchmarkError as err:
        raise BenchmarkError(f"[{label}] {err}; last lines of {log_path}:\n{_tail(log_path)}") from err
    result = SimulationResult(run_dir, result.config, result.metrics, wall_seconds, log_path)

    print(
        f"[{label}] finished in {wall_seconds:.1f} s: final test accuracy {format_percent(result.final_test_accuracy)} %",
        flush=True,
    )
    incomplete = result.incomplete_rounds()
    if incomplete:
        print(f"[{label}] warning: fewer nodes than expected trained in rounds {incomplete}", flush=True)
    return result


class _RoundRowEcho:
    """Prints the per-round table rows that appear in a growing log file."""

    def __init__(self, reader: TextIO, label: str) -> None:
        self.reader = reader
        self.label = label
        self.partial_line = ""  # text after the last newline, completed by a later read

    def read_new_lines(self, final: bool = False) -> None:
        lines = (self.partial_line + self.reader.read()).split("\n")
        self.partial_line = "" if final else lines.pop()
        for line in lines:
            match = _ROUND_ROW.search(line.rstrip())
            if match:
                print(f"[{self.label}] round {match.group(1)}", flush=True)


def _stop(process: subprocess.Popen, interrupt: bool) -> None:
    """Give a simulation time to stop its SuperLink, then kill what is left of it.

    With `interrupt` it first sends the simulation SIGINT. `fedgraft simulate` handles
    it by stopping its SuperLink together with the processes the SuperLink started.
    """
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    if interrupt:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


# ---------------------------------------------------------------------------------------
# Command-line arguments shared by the scripts.


def positive_int(text: str) -> int:
    """Parse an argparse value that must be an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not an integer >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a number > 0")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Add --work-dir, --run-timeout, --output and the RunConfig overrides for quick runs."""
    parser.add_argument(
        "--work-dir", type=Path, default=None,
        help=f"Folder for the run directories and their logs [default: a new folder under {default_work_dir(name).parent}].",
    )
    parser.add_argument(
        "--run-timeout", type=_positive_float, default=10_800.0,
        help="Seconds one `fedgraft simulate` run may take before it is stopped [default: 10800].",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS_DIR / f"{name}.json",
        help="Results JSON; the markdown table goes beside it with the suffix .md [default: %(default)s].",
    )
    overrides = parser.add_argument_group("run overrides (for quick checks; RunConfig defaults otherwise)")
    overrides.add_argument("--rounds", type=positive_int, default=None, help="Federated rounds per run.")
    overrides.add_argument("--num-clients", type=positive_int, default=None, help="Client nodes per run.")
    overrides.add_argument(
        "--max-samples-per-client", type=int, default=None,
        help="Cap on each client's samples, train and validation together; 0 means no cap.",
    )
    overrides.add_argument(
        "--test-samples", type=int, default=None, help="Server test images; 0 means all 10,000."
    )


def run_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Return the RunConfig overrides given on the command line, checked as `fedgraft simulate` checks them.

    Exits through `parser.error` when a value is invalid, before any run starts.
    """
    overrides = {
        name: getattr(args, name)
        for name in ("rounds", "num_clients", "max_samples_per_client", "test_samples")
        if getattr(args, name) is not None
    }
    try:
        RunConfig(**overrides).validate()
    except ConfigError as err:
        parser.error(str(err))
    return overrides


def default_work_dir(name: str) -> Path:
    """Return a new timestamped folder under the system temporary folder for one benchmark."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / "fedgraft-benchmarks" / f"{name}-{stamp}"


# ---------------------------------------------------------------------------------------
# Results.


def median(values: Iterable[float]) -> float | None:
    """Return the median of `values`, or None for no values."""
    values = list(values)
    return statistics.median(values) if values else None


def format_percent(fraction: float | None) -> str:
    """Format an accuracy in [0, 1] as a percentage with two decimals."""
    return "-" if fraction is None else f"{100 * fraction:.2f}"


def format_points(difference: float | None) -> str:
    """Format a difference of two accuracies in [0, 1] as signed percentage points."""
    return "-" if difference is None else f"{100 * difference:+.2f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Return a GitHub markdown table; the first column is left-aligned, the others right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def describe_machine() -> dict[str, Any]:
    """Return the CPU, memory and software versions that a benchmark result depends on."""
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable_cpus = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "flwr": _version("flwr"),
        "fedgraft": _version("fedgraft"),
        "fedgraft_commit": _git_commit(),
    }


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """Return `git describe --always --dirty` of the fedgraft checkout, or None outside git."""
    try:
        completed = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip() or None


def write_results(output: Path, benchmark: str, settings: dict[str, Any], results: dict[str, Any], table: str) -> None:
    """Write the results JSON to `output` and the markdown table to `output` with the suffix .md."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": benchmark,
        "command": ["python", *sys.orig_argv[1:]],
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "settings": settings,
        "results": results,
    }
    output.write_text(json.dumps(payload, indent=2) + "\n")
    output.with_suffix(".md").write_text(table)
