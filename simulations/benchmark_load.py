"""Load benchmark: many SuperNodes against one TLS-authenticated SuperLink on 127.0.0.1.

Each repeat creates a CA and one key pair per node, starts a SuperLink with TLS and
`--enable-supernode-auth`, registers the keys and starts `--num-nodes` SuperNodes. Every
node gets its own `.npz` of `--samples-per-node` Fashion-MNIST training images and its
own cache folder, so the backbone goes to every node. The main job then runs for
`--rounds` rounds with tiny settings, and every node trains and evaluates in every round.

While the job runs, a sampler reads the resident memory (RSS) of the SuperLink's process
tree (`flower-superlink`, `flower-superexec` and the ServerApp process) and of all
SuperNode trees (ClientApp processes included) every `--sample-interval` seconds. It
reports the rounds completed, the nodes that trained in each round, the seconds per
round from `metrics.json`, round 0 (backbone distribution and the server's test
features) and the peak memory. Full benchmark, from the repository root:

    .venv/bin/python -m fedgraft.simulations.benchmark_load

Quick check of the script itself:

    .venv/bin/python -m fedgraft.simulations.benchmark_load --num-nodes 2 --rounds 1 \\
        --output /tmp/load.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fedgraft.data.fashion_mnist import load_fashion_mnist
from fedgraft.server.certificates import create_certificates
from fedgraft.server.local_deployment import DeploymentError, LocalDeployment
from fedgraft.simulations.benchmark_common import (
    RESULTS_DIR,
    BenchmarkError,
    default_work_dir,
    markdown_table,
    median,
    positive_int,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20


@dataclass
class PeakMemory:
    """Peak RSS of the SuperLink's process tree and of all SuperNode trees together, in bytes."""

    superlink: int = 0
    supernodes: int = 0
    samples: int = 0


@dataclass
class MemorySampler:
    """Sample the RSS of a deployment's process trees in a background thread."""

    deployment: LocalDeployment
    interval: float
    # Below this many bytes of available system memory the sampler stops the deployment,
    # so that the benchmark fails instead of pushing the machine into the OOM killer.
    min_available: int
    peak: PeakMemory = field(default_factory=PeakMemory)
    min_available_seen: int | None = None
    stopped_for_memory: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 * self.interval)

    def _run(self) -> None:
        while not self._stop.is_set():
            superlink = _tree_rss(self.deployment.superlink_pid)
            supernodes = sum(_tree_rss(node.pid) for node in self.deployment.nodes)
            self.peak.superlink = max(self.peak.superlink, superlink)
            self.peak.supernodes = max(self.peak.supernodes, supernodes)
            self.peak.samples += 1

            available = psutil.virtual_memory().available
            self.min_available_seen = min(available, self.min_available_seen or available)
            if available < self.min_available:
                self.stopped_for_memory = True
                self.deployment.stop()
                return
            self._stop.wait(self.interval)


def _tree_rss(pid: int | None) -> int:
    """Return the summed RSS of process `pid` and its descendants, 0 when it is gone."""
    if pid is None:
        return 0
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in family:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def export_node_data(folder: Path, num_nodes: int, samples_per_node: int, seed: int) -> list[Path]:
    """Write `num_nodes` disjoint, seeded samples of the Fashion-MNIST training split as .npz files."""
    train = load_fashion_mnist("train")
    if num_nodes * samples_per_node > len(train.labels):
        raise BenchmarkError(
            f"{num_nodes} nodes x {samples_per_node} samples exceed the {len(train.labels)} training "
            "images. Lower --num-nodes or --samples-per-node."
        )
    order = np.random.default_rng(seed).permutation(len(train.labels))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for node in range(num_nodes):
        chosen = order[node * samples_per_node:(node + 1) * samples_per_node]
        path = folder / f"node-{node + 1}.npz"
        np.savez(path, x=train.images[chosen], y=train.labels[chosen])
        paths.append(path)
    return paths


def run_once(args: argparse.Namespace, repeat: int) -> dict[str, Any]:
    """Start a fresh deployment, run the main job once and return its measurements."""
    work_dir = args.work_dir / f"repeat-{repeat}"
    certificates = create_certificates(work_dir / "certs", node_keys=args.num_nodes)
    data_paths = export_node_data(work_dir / "node-data", args.num_nodes, args.samples_per_node, seed=repeat)
    run_dir = work_dir / "run"
    run_config = {
        "num-clients": args.num_nodes, "rounds": args.rounds, "seed": repeat,
        "max-samples-per-client": args.samples_per_node, "test-samples": args.test_samples,
        "image-size": args.image_size, "local-epochs": 1, "round-timeout": args.round_timeout,
        "run-dir": str(run_dir), "cache-dir": str(work_dir / "server-cache"),
    }

    in_memory = args.superlink_state == "memory"
    with LocalDeployment(work_dir / "deployment", certificates, state_in_memory=in_memory) as deployment:
        for index, data_path in enumerate(data_paths):
            deployment.register_node(certificates.node_public_keys[index])
        # Nodes start in batches. When 20 started at once on 2 busy cores, one node's
        # activation request timed out on its side after the SuperLink had accepted it.
        # Flower 1.42 then rejected the retry with code 2004, and the node exited.
        started = time.monotonic()
        for index, data_path in enumerate(data_paths):
            deployment.start_supernode(
                f"supernode-{index + 1}",
                certificates.node_private_keys[index],
                {"data-path": str(data_path), "cache-dir": str(work_dir / f"node-cache-{index + 1}")},
                max_wait_time=args.node_max_wait_time,
            )
            if (index + 1) % args.start_batch == 0 or index + 1 == len(data_paths):
                deployment.wait_for_online_nodes(index + 1, timeout=args.startup_timeout, poll_interval=5.0)
        online_seconds = time.monotonic() - started
        print(f"repeat {repeat}: {args.num_nodes} SuperNodes online after {online_seconds:.1f} s", flush=True)

        log_path = work_dir / "flwr-run.log"
        run_started = time.monotonic()
        sampler = MemorySampler(deployment, args.sample_interval, min_available=int(args.min_available_gib * 2**30))
        with sampler, open(log_path, "w") as log:
            result = deployment.run_app(REPO, run_config, timeout=args.run_timeout, output=log)
        run_seconds = time.monotonic() - run_started

    if sampler.stopped_for_memory:
        raise BenchmarkError(
            f"repeat {repeat}: available memory fell below {args.min_available_gib} GiB with {args.num_nodes} "
            f"SuperNodes, so the deployment was stopped. Lower --num-nodes. See {log_path}"
        )

    metrics_path = run_dir / "metrics.json"
    if result.returncode != 0 or not metrics_path.is_file():
        raise BenchmarkError(f"repeat {repeat}: flwr run exited with code {result.returncode}. See {log_path}")
    rounds = json.loads(metrics_path.read_text())["rounds"]
    measured = {
        "repeat": repeat,
        "nodes_online_seconds": round(online_seconds, 1),
        "run_seconds": round(run_seconds, 1),
        "rounds_completed": sum(1 for record in rounds[1:] if record["nodes_trained"] > 0),
        "nodes_trained_per_round": [record["nodes_trained"] for record in rounds[1:]],
        "round_0_seconds": round(rounds[0]["seconds"], 1),
        "round_seconds": [round(record["seconds"], 1) for record in rounds[1:]],
        "final_test_accuracy": rounds[-1]["test_accuracy"],
        "superlink_peak_rss_mib": round(sampler.peak.superlink / MIB, 1),
        "supernodes_peak_rss_mib": round(sampler.peak.supernodes / MIB, 1),
        "memory_samples": sampler.peak.samples,
        "min_available_memory_mib": round((sampler.min_available_seen or 0) / MIB, 1),
        "log": str(log_path),
    }
    print(f"repeat {repeat}: {json.dumps(measured)}", flush=True)
    return measured


def results_table(runs: list[dict[str, Any]]) -> str:
    """Return one row per repeat and, for several repeats, a median row."""
    def row(label: str, run: dict[str, Any]) -> list[str]:
        return [
            label,
            f"{run['rounds_completed']}",
            f"{median(run['round_seconds']):.1f}",
            f"{run['round_0_seconds']:.1f}",
            f"{run['superlink_peak_rss_mib']:.0f}",
            f"{run['supernodes_peak_rss_mib']:.0f}",
            f"{run['nodes_online_seconds']:.1f}",
        ]

    header = [
        "repeat", "rounds completed", "s per round (median)", "round 0 s",
        "SuperLink peak RSS (MiB)", "all SuperNodes peak RSS (MiB)", "nodes online after s",
    ]
    rows = [row(str(run["repeat"]), run) for run in runs]
    if len(runs) > 1:
        rows.append([
            "median",
            f"{median(run['rounds_completed'] for run in runs):g}",
            f"{median(median(run['round_seconds']) for run in runs):.1f}",
            f"{median(run['round_0_seconds'] for run in runs):.1f}",
            f"{median(run['superlink_peak_rss_mib'] for run in runs):.0f}",
            f"{median(run['supernodes_peak_rss_mib'] for run in runs):.0f}",
            f"{median(run['nodes_online_seconds'] for run in runs):.1f}",
        ])
    return markdown_table(header, rows)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fedgraft.simulations.benchmark_load",
        description="Run the main job on many SuperNodes over TLS with node authentication, on 127.0.0.1.",
    )
    parser.add_argument("--num-nodes", type=positive_int, default=20, help="SuperNodes to start (default: 20).")
    parser.add_argument("--rounds", type=positive_int, default=3, help="Federated rounds (default: 3).")
    parser.add_argument("--repeats", type=positive_int, default=1, help="Fresh deployments to run (default: 1).")
    parser.add_argument(
        "--samples-per-node", type=positive_int, default=20, help="Training images per node (default: 20)."
    )
    parser.add_argument(
        "--test-samples", type=positive_int, default=100, help="Test images the server evaluates on (default: 100)."
    )
    parser.add_argument("--image-size", type=positive_int, default=32, help="Input side in pixels (default: 32).")
    parser.add_argument(
        "--round-timeout", type=float, default=900.0, help="Seconds the server waits for one round's replies (default: 900)."
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=900.0,
        help="Seconds to wait for all SuperNodes to come online (default: 900).",
    )
    parser.add_argument(
        "--start-batch", type=positive_int, default=5,
        help="SuperNodes started together before waiting for them to come online (default: 5).",
    )
    parser.add_argument(
        "--node-max-wait-time", type=float, default=300.0,
        help="Seconds a SuperNode keeps trying to reach the SuperLink before it gives up (default: 300).",
    )
    parser.add_argument(
        "--run-timeout", type=float, default=5400.0, help="Seconds one `flwr run` may take (default: 5400)."
    )
    parser.add_argument(
        "--sample-interval", type=float, default=0.5, help="Seconds between two memory samples (default: 0.5)."
    )
    parser.add_argument(
        "--min-available-gib", type=float, default=3.0,
        help="Stop the run when available system memory falls below this many GiB (default: 3).",
    )
    parser.add_argument(
        "--superlink-state", choices=("file", "memory"), default="memory",
        help="Where the SuperLink keeps its state: an SQLite file, or memory (default: memory). With 20 "
        "SuperNodes the file raised 'database is locked' in Flower 1.42.",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="Folder for certificates, data, logs and runs.")
    parser.add_argument(
        "--output", type=Path, default=RESULTS_DIR / "load.json",
        help="Results JSON; a markdown table is written beside it with the suffix .md.",
    )
    args = parser.parse_args(argv)
    args.work_dir = args.work_dir or default_work_dir("load")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    print(f"work directory: {args.work_dir}", flush=True)
    try:
        runs = [run_once(args, repeat) for repeat in range(args.repeats)]
    except (BenchmarkError, DeploymentError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    settings = {
        key: getattr(args, key)
        for key in (
            "num_nodes", "rounds", "repeats", "samples_per_node", "test_samples", "image_size", "sample_interval",
            "min_available_gib", "start_batch", "node_max_wait_time", "superlink_state",
        )
    }
    table = results_table(runs)
    write_results(args.output, "load", settings, {"runs": runs}, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
