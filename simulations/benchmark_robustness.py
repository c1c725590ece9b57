"""Benchmark: test accuracy of each strategy when some nodes send poisoned updates.

For every strategy of --strategies it runs the default `fedgraft simulate` job once
clean and once per attack. An attack is a poison (`--poisons`, such as scale:100 or
sign-flip) sent by the first K partitions (0 to K - 1) for every K of
`--poisoned-counts`. Krum runs with `--num-malicious-nodes` equal to the largest K,
clean runs included, because a deployment fixes that assumption before any attacker is
identified. The table gives each run's final test accuracy and its difference from the
same strategy's clean run, and marks whether a robust strategy stays within
--tolerance points of it.

A run whose directory under --work-dir already contains a finished run is read back, not
run again, so an interrupted benchmark continues where it stopped. The seconds of such a
run are the ServerApp's own, without the process start-up.

A last run checks the NaN guard: FedAvg with partition 0 sending NaN updates. It
reports how many train replies the guards rejected and the final accuracy.

Full benchmark (21 runs), from the repository root:

    .venv/bin/python -m fedgraft.simulations.benchmark_robustness

Quick check of the script itself (minutes, numbers meaningless):

    .venv/bin/python -m fedgraft.simulations.benchmark_robustness --rounds 1 --num-clients 5 \\
        --max-samples-per-client 40 --test-samples 100 --strategies fedavg,krum \\
        --poisons scale:100 --poisoned-counts 1 --output /tmp/robustness.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedgraft.client.poisoning import Poison
from fedgraft.config import STRATEGY_NAMES
from fedgraft.simulations.benchmark_common import (
    BenchmarkError,
    SimulationResult,
    add_run_arguments,
    default_work_dir,
    format_percent,
    format_points,
    markdown_table,
    read_run,
    run_options,
    run_simulation,
    simulate_options,
    write_results,
)

ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum")
NAN_POISON = "nan"


def _names(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{option} {text!r}: expected names from {', '.join(allowed)}")
    return names


def _poisons(text: str) -> list[str]:
    poisons = [part.strip() for part in text.split(",") if part.strip()]
    for poison in poisons:
        try:
            Poison.parse(poison)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return poisons


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 1, such as 1,2")
    return counts


def attack_options(poison: str, count: int) -> dict[str, Any]:
    """Return the RunConfig values that make partitions 0 to count - 1 send `poison`."""
    return {"poisoned_nodes": ",".join(str(node) for node in range(count)), "poison": poison}


def run_one(label: str, values: dict[str, Any], args: argparse.Namespace, work_dir: Path) -> SimulationResult:
    """Run one simulation, or read it back when --work-dir already contains its finished run directory."""
    run_dir = work_dir / label
    if (run_dir / "metrics.json").is_file():
        result = read_run(run_dir)
        print(f"[{label}] reusing the finished run in {run_dir}", flush=True)
        return result
    return run_simulation(run_dir, simulate_options(values), args.run_timeout, label)


def measure(args: argparse.Namespace, overrides: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """Run the clean and attacked runs of every strategy, then the NaN check."""
    malicious = max(args.poisoned_counts)
    runs = []
    for strategy in args.strategies:
        values = {**overrides, "strategy": strategy}
        if strategy == "krum":
            values["num_malicious_nodes"] = malicious
        clean = run_one(f"{strategy}-clean", values, args, work_dir)
        runs.append({"strategy": strategy, "poison": "", "poisoned": 0,
                     "test_accuracy": clean.final_test_accuracy, "seconds": clean.wall_seconds})
        for poison in args.poisons:
            for count in args.poisoned_counts:
                label = f"{strategy}-{poison.replace(':', '')}-x{count}"
                result = run_one(label, {**values, **attack_options(poison, count)}, args, work_dir)
                runs.append({"strategy": strategy, "poison": poison, "poisoned": count,
                             "test_accuracy": result.final_test_accuracy, "seconds": result.wall_seconds})

    nan_check = None
    if args.nan_check:
        result = run_one("fedavg-nan-x1", {**overrides, "strategy": "fedavg", **attack_options(NAN_POISON, 1)},
                         args, work_dir)
        rejected = [entry for record in result.metrics["rounds"] for entry in record.get("rejected", [])]
        nan_check = {
            "test_accuracy": result.final_test_accuracy,
            "rounds": len(result.metrics["rounds"]) - 1,
            "rejected_replies": len(rejected),
            "reasons": sorted({entry["reason"] for entry in rejected}),
            "nodes": sorted({entry["node"] for entry in rejected}),
        }
    return {"runs": runs, "nan_check": nan_check}


def summarize(results: dict[str, Any], tolerance: float, num_clients: int) -> str:
    """Return the markdown table: accuracy per run, difference from clean, target met."""
    clean = {run["strategy"]: run["test_accuracy"] for run in results["runs"] if run["poisoned"] == 0}
    rows = []
    for run in results["runs"]:
        difference = run["test_accuracy"] - clean[run["strategy"]]
        attack = "clean" if run["poisoned"] == 0 else f"{run['poison']}, {run['poisoned']} of {num_clients} nodes"
        if run["poisoned"] == 0 or run["strategy"] not in ROBUST_STRATEGIES:
            met = "-"
        else:
            met = "yes" if difference >= -tolerance / 100 else "no"
        rows.append([
            run["strategy"], attack, format_percent(run["test_accuracy"]),
            "-" if run["poisoned"] == 0 else format_points(difference), met, f"{run['seconds']:.0f}",
        ])
    table = markdown_table(
        ["strategy", "attack", "test accuracy %", "vs clean (points)", f"robust within {tolerance:g} points",
         "seconds"],
        rows,
    )
    nan_check = results["nan_check"]
    if nan_check is not None:
        table += (
            f"\nNaN guard (fedavg, partition 0 sends NaN): {nan_check['rejected_replies']} train replies "
            f"rejected in {nan_check['rounds']} rounds, from node(s) {nan_check['nodes']} "
            f"({'; '.join(nan_check['reasons']) or 'no reason logged'}); final test accuracy "
            f"{format_percent(nan_check['test_accuracy'])} %.\n"
        )
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark: test accuracy of each strategy with poisoned nodes against a clean run.",
    )
    parser.add_argument(
        "--strategies", type=lambda text: _names(text, STRATEGY_NAMES, "--strategies"),
        default=["fedavg", *ROBUST_STRATEGIES],
        help="Comma-separated strategies [default: fedavg,fedmedian,fedtrimmedavg,krum].",
    )
    parser.add_argument("--poisons", type=_poisons, default=["scale:100", "sign-flip"],
                        help="Comma-separated poisons: scale:FACTOR, sign-flip or nan [default: scale:100,sign-flip].")
    parser.add_argument("--poisoned-counts", type=_counts, default=[1, 2],
                        help="Comma-separated numbers of poisoned nodes, partitions 0 to K - 1 [default: 1,2].")
    parser.add_argument("--tolerance", type=float, default=5.0,
                        help="Accuracy points a robust strategy may lose against its clean run [default: 5].")
    parser.add_argument("--nan-check", action=argparse.BooleanOptionalAction, default=True,
                        help="Also run FedAvg with one node sending NaN updates [default: on].")
    add_run_arguments(parser, "robustness")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = run_options(args, parser)
    num_clients = overrides.get("num_clients", 10)
    if max(args.poisoned_counts) >= num_clients:
        parser.error(f"--poisoned-counts {max(args.poisoned_counts)} leaves no honest node among {num_clients}")
    work_dir = (args.work_dir or default_work_dir("robustness")).resolve()
    print(f"run directories and logs: {work_dir}", flush=True)

    try:
        results = measure(args, overrides, work_dir)
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    table = summarize(results, args.tolerance, num_clients)
    print("\n" + table)
    settings = {
        "strategies": args.strategies, "poisons": args.poisons, "poisoned_counts": args.poisoned_counts,
        "tolerance_points": args.tolerance, "run_overrides": overrides, "work_dir": str(work_dir),
    }
    write_results(args.output, "robustness", settings, results, table)
    print(f"results: {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
