"""Benchmark 3: wall time of the default simulation with the feature cache against without it.

For every seed from 0 to REPEATS - 1 it runs the default `fedgraft simulate` twice:

- cache on (`--cache-features`): each node runs the frozen backbone once over its data
  and trains the head on the stored features. Every run gets a fresh, empty cache
  folder, so the first-time feature extraction and the backbone transfer are included;
- cache off (`--no-cache-features`): each node runs the frozen backbone on every batch of
  every local epoch, as a plain PyTorch training loop over images does. It also gets a
  fresh cache folder, for the backbone store and the server's test features.

The time of a run is the wall-clock time of its whole subprocess, SuperLink start
included. The two runs of a seed alternate which goes first, so neither always gets the
colder start. It reports both times, both test accuracies, the ratio of the median times
(target <= 0.2) and the largest per-seed accuracy difference (target <= 1 point). The
cache-off run passes every training image through the backbone in every local epoch, so
it is the long one. Full benchmark, from the repository root:

    .venv/bin/python -m fedgraft.simulations.benchmark_speed

Quick check of the script itself:

    .venv/bin/python -m fedgraft.simulations.benchmark_speed --repeats 1 --rounds 1 \\
        --num-clients 2 --max-samples-per-client 40 --test-samples 100 --output /tmp/speed.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedgraft.simulations.benchmark_common import (
    BenchmarkError,
    SimulationResult,
    add_run_arguments,
    default_work_dir,
    format_percent,
    format_points,
    markdown_table,
    median,
    positive_int,
    run_options,
    run_simulation,
    simulate_options,
    write_results,
)

# Targets: the cached run takes at most a fifth of the uncached run's time, and the two
# final test accuracies differ by at most one percentage point.
MAX_TIME_RATIO = 0.2
MAX_ACCURACY_DIFFERENCE = 0.01


def timed_run(
    work_dir: Path, seed: int, cache_features: bool, overrides: dict[str, Any], timeout_s: float
) -> SimulationResult:
    """Run the default simulation for `seed` with a fresh, empty cache folder."""
    name = "cache-on" if cache_features else "cache-off"
    cache_dir = work_dir / f"seed{seed}-{name}-cache"
    if cache_dir.exists() and any(cache_dir.iterdir()):
        raise BenchmarkError(
            f"cache folder {cache_dir} is not empty, so the run would not start cold; pass another --work-dir"
        )
    options = {**overrides, "seed": seed, "cache_features": cache_features, "cache_dir": str(cache_dir)}
    label = f"seed {seed}, feature cache {'on' if cache_features else 'off'}"
    if not cache_features:
        print(f"[{label}] this run recomputes the backbone's features in every local epoch; expect it to be slow",
              flush=True)
    return run_simulation(work_dir / f"seed{seed}-{name}", simulate_options(options), timeout_s, label)


def measure_seed(seed: int, overrides: dict[str, Any], args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Time the cached and the uncached run of one seed. Even seeds start with the cached run."""
    order = (True, False) if seed % 2 == 0 else (False, True)
    runs = {cache: timed_run(work_dir, seed, cache, overrides, args.run_timeout) for cache in order}
    cached, uncached = runs[True], runs[False]
    return {
        "seed": seed,
        "first_run": "cache on" if order[0] else "cache off",
        "cache_on": _run_entry(cached),
        "cache_off": _run_entry(uncached),
        "time_ratio": cached.wall_seconds / uncached.wall_seconds,
        "accuracy_difference": cached.final_test_accuracy - uncached.final_test_accuracy,
    }


def _run_entry(run: SimulationResult) -> dict[str, Any]:
    return {
        "run_dir": str(run.run_dir),
        "wall_seconds": run.wall_seconds,
        "server_seconds": float(run.summary["seconds"]),  # the ServerApp's own clock, without the SuperLink start
        "final_test_accuracy": run.final_test_accuracy,
        "incomplete_rounds": run.incomplete_rounds(),
    }


def summarize(per_seed: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Return the medians, the ratio and the accuracy check, and their markdown table."""
    on_seconds = median(entry["cache_on"]["wall_seconds"] for entry in per_seed)
    off_seconds = median(entry["cache_off"]["wall_seconds"] for entry in per_seed)
    on_accuracy = median(entry["cache_on"]["final_test_accuracy"] for entry in per_seed)
    off_accuracy = median(entry["cache_off"]["final_test_accuracy"] for entry in per_seed)
    time_ratio = on_seconds / off_seconds
    on_server = median(entry["cache_on"]["server_seconds"] for entry in per_seed)
    off_server = median(entry["cache_off"]["server_seconds"] for entry in per_seed)
    largest_difference = max(abs(entry["accuracy_difference"]) for entry in per_seed)
    summary = {
        "cache_on_wall_seconds": on_seconds,
        "cache_off_wall_seconds": off_seconds,
        "time_ratio": time_ratio,
        "time_ratio_met": time_ratio <= MAX_TIME_RATIO,
        "cache_on_server_seconds": on_server,
        "cache_off_server_seconds": off_server,
        "server_time_ratio": on_server / off_server,
        "cache_on_accuracy": on_accuracy,
        "cache_off_accuracy": off_accuracy,
        "largest_accuracy_difference": largest_difference,
        "accuracy_difference_met": largest_difference <= MAX_ACCURACY_DIFFERENCE,
    }

    def seconds(entry_key: str) -> str:
        return ", ".join(f"{entry[entry_key]['wall_seconds']:.1f}" for entry in per_seed)

    def accuracies(entry_key: str) -> str:
        return ", ".join(format_percent(entry[entry_key]["final_test_accuracy"]) for entry in per_seed)

    def met(ok: bool) -> str:
        return "yes" if ok else "no"

    ratios = ", ".join(f"{entry['time_ratio']:.3f}" for entry in per_seed)
    differences = ", ".join(format_points(entry["accuracy_difference"]) for entry in per_seed)
    rows = [
        ["wall time, feature cache on (s)", f"{on_seconds:.1f} ({seconds('cache_on')})", "", ""],
        ["wall time, feature cache off (s)", f"{off_seconds:.1f} ({seconds('cache_off')})", "", ""],
        ["time ratio, on / off (of the medians)",
         f"{time_ratio:.3f} ({ratios})",
         f"<= {MAX_TIME_RATIO}", met(summary["time_ratio_met"])],
        ["time ratio by the ServerApp's clock, without process start-up",
         f"{summary['server_time_ratio']:.3f} ({on_server:.1f} s / {off_server:.1f} s)", "", ""],
        ["test accuracy, feature cache on (%)", f"{format_percent(on_accuracy)} ({accuracies('cache_on')})", "", ""],
        ["test accuracy, feature cache off (%)", f"{format_percent(off_accuracy)} ({accuracies('cache_off')})", "", ""],
        ["accuracy difference on - off, largest absolute value (points)",
         f"{100 * largest_difference:.2f} ({differences})",
         f"<= {100 * MAX_ACCURACY_DIFFERENCE:.0f}", met(summary["accuracy_difference_met"])],
    ]
    seeds = ", ".join(str(entry["seed"]) for entry in per_seed)
    caption = f"Median over seeds {seeds}; per-seed values in brackets.\n\n"
    return summary, caption + markdown_table(["measure", "value", "target", "met"], rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark 3: wall time of the default simulation with and without the feature cache.",
    )
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="Seeds to run, FIRST_SEED to FIRST_SEED + REPEATS - 1 [default: 3].")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="First seed, to add repeats to an earlier measurement [default: 0].")
    add_run_arguments(parser, "speed")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = run_options(args, parser)
    work_dir = (args.work_dir or default_work_dir("speed")).resolve()
    seeds = range(args.first_seed, args.first_seed + args.repeats)
    print(f"run directories, logs and cache folders: {work_dir}", flush=True)

    try:
        per_seed = [measure_seed(seed, overrides, args, work_dir) for seed in seeds]
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    summary, table = summarize(per_seed)
    print("\n" + table)
    settings = {"repeats": args.repeats, "seeds": list(seeds), "run_overrides": overrides, "work_dir": str(work_dir)}
    write_results(args.output, "speed", settings, {"summary": summary, "per_seed": per_seed}, table)
    print(f"results: {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
