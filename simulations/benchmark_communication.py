"""Benchmark 2: bytes per client and round against the size of the trainable part and of the whole model.

From one `fedgraft simulate` run (a new default run, or an existing run directory given
with --run-dir) it reports:

- the bytes the server sent to and received from each training node per round, the
  median over rounds 1 to R of `train_bytes_sent_per_node` and
  `train_bytes_received_per_node` (arrays with their serialization headers);
- the trainable part's bytes, the sum of numel * element_size over the model's
  `trainable_state_dict()`, and the ratio of the per-round bytes to it (target <= 1.05);
- the whole model's bytes (backbone and head state dict) and its ratio to the larger
  per-round figure (target >= 300);
- round 0's one-time backbone transfer, in all and per node that received it.

The model is rebuilt in this process from the run's config.json. A new run gets a fresh
cache folder, so every node lacks the backbone and round 0 shows its transfer. Full
benchmark, from the repository root:

    .venv/bin/python -m fedgraft.simulations.benchmark_communication

Quick check of the script itself:

    .venv/bin/python -m fedgraft.simulations.benchmark_communication --rounds 1 --num-clients 2 \\
        --max-samples-per-client 40 --test-samples 100 --output /tmp/communication.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fedgraft.config import RunConfig
from fedgraft.data.sources import test_data
from fedgraft.models.factory import build_transfer_model
from fedgraft.simulations.benchmark_common import (
    BenchmarkError,
    SimulationResult,
    add_run_arguments,
    default_work_dir,
    markdown_table,
    median,
    read_run,
    run_options,
    run_simulation,
    simulate_options,
    write_results,
)

# Targets: per-round bytes at most 5 % above the trainable bytes (the serialization
# headers), and the whole model at least 300 times the per-round bytes.
MAX_ROUND_TO_TRAINABLE = 1.05
MIN_FULL_TO_ROUND = 300.0


def state_nbytes(state: Mapping[str, torch.Tensor]) -> int:
    """Return the bytes of a state dict's tensors: numel * element_size, summed."""
    return sum(tensor.numel() * tensor.element_size() for tensor in state.values())


def measure(run: SimulationResult) -> dict[str, Any]:
    """Return the per-round, trainable, whole-model and backbone-transfer bytes of one run."""
    rounds = run.metrics["rounds"]
    training_rounds = [record for record in rounds if record["round"] >= 1]
    if not training_rounds:
        raise BenchmarkError(f"{run.run_dir} has no training round; it needs --rounds 1 or more")
    sent_per_node = median(record["train_bytes_sent_per_node"] for record in training_rounds)
    received_per_node = median(record["train_bytes_received_per_node"] for record in training_rounds)
    if not sent_per_node or not received_per_node:
        raise BenchmarkError(f"{run.run_dir}: no node replied in the training rounds, so there is nothing to compare")

    # Rebuild the model the server built, with the class count of its test data.
    cfg = RunConfig.from_run_config(run.config).validate()
    model = build_transfer_model(cfg, num_classes=len(test_data(cfg).class_names))
    trainable_bytes = state_nbytes(model.trainable_state_dict())
    full_bytes = state_nbytes(model.state_dict())
    backbone_bytes = state_nbytes(model.backbone.state_dict())

    round_zero = next((record for record in rounds if record["round"] == 0), None)
    backbone_sent = round_zero["bytes_sent"] if round_zero else 0
    nodes_sent = int(run.summary.get("backbone_nodes_sent", 0))
    larger_per_node = max(sent_per_node, received_per_node)
    return {
        "run_dir": str(run.run_dir),
        "backbone": cfg.backbone,
        "mode": cfg.mode,
        "training_rounds": len(training_rounds),
        "trainable_parameters": run.summary.get("trainable_parameters"),
        "bytes_sent_per_node_per_round": sent_per_node,
        "bytes_received_per_node_per_round": received_per_node,
        "trainable_bytes": trainable_bytes,
        "sent_to_trainable": sent_per_node / trainable_bytes,
        "received_to_trainable": received_per_node / trainable_bytes,
        "full_model_bytes": full_bytes,
        "full_to_round": full_bytes / larger_per_node,
        "backbone_state_bytes": backbone_bytes,
        "round0_bytes_sent": backbone_sent,
        "round0_nodes_sent": nodes_sent,
        "round0_nodes_cached": int(run.summary.get("backbone_nodes_cached", 0)),
        "round0_bytes_per_node": backbone_sent / nodes_sent if nodes_sent else None,
        "bytes_sent_rounds_1_to_r": sum(record["bytes_sent"] for record in training_rounds),
        "bytes_received_rounds_1_to_r": sum(record["bytes_received"] for record in training_rounds),
    }


def format_table(result: dict[str, Any]) -> str:
    """Return the markdown table of one run's byte counts, ratios and whether the targets are met."""
    def met(ok: bool) -> str:
        return "yes" if ok else "no"

    ratio_sent = result["sent_to_trainable"]
    ratio_received = result["received_to_trainable"]
    full_ratio = result["full_to_round"]
    per_node_backbone = result["round0_bytes_per_node"]
    rows = [
        ["bytes sent per node per round (median, rounds 1 to R)", f"{result['bytes_sent_per_node_per_round']:,.0f}", "", ""],
        ["bytes received per node per round (median, rounds 1 to R)",
         f"{result['bytes_received_per_node_per_round']:,.0f}", "", ""],
        [f"trainable part ({result['trainable_parameters']:,} parameters)", f"{result['trainable_bytes']:,}", "", ""],
        ["sent per round / trainable", f"{ratio_sent:.4f}", f"<= {MAX_ROUND_TO_TRAINABLE}",
         met(ratio_sent <= MAX_ROUND_TO_TRAINABLE)],
        ["received per round / trainable", f"{ratio_received:.4f}", f"<= {MAX_ROUND_TO_TRAINABLE}",
         met(ratio_received <= MAX_ROUND_TO_TRAINABLE)],
        [f"whole model, {result['backbone']} and head", f"{result['full_model_bytes']:,}", "", ""],
        ["whole model / larger per-round figure", f"{full_ratio:,.1f}x", f">= {MIN_FULL_TO_ROUND:.0f}x",
         met(full_ratio >= MIN_FULL_TO_ROUND)],
        [f"round 0 backbone transfer, {result['round0_nodes_sent']} nodes", f"{result['round0_bytes_sent']:,}", "", ""],
        ["round 0 backbone transfer per node",
         "-" if per_node_backbone is None else f"{per_node_backbone:,.0f}", "", ""],
    ]
    return markdown_table(["measure", "bytes or ratio", "target", "met"], rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark 2: bytes per client and round against the trainable part and the whole model.",
    )
    parser.add_argument(
        "--run-dir", type=Path, default=None,
        help="Finished run directory to measure instead of starting a new run.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the new run [default: 0].")
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help="Backbone store and feature cache of the new run [default: a fresh folder in the work dir, "
        "so round 0 sends the backbone to every node].",
    )
    add_run_arguments(parser, "communication")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = run_options(args, parser)
    if args.run_dir is not None and overrides:
        parser.error("--run-dir measures an existing run, so it takes no run overrides such as --rounds")

    try:
        if args.run_dir is not None:
            run = read_run(args.run_dir.resolve())
            print(f"measuring the existing run {run.run_dir}", flush=True)
        else:
            work_dir = (args.work_dir or default_work_dir("communication")).resolve()
            cache_dir = (args.cache_dir or work_dir / "cache").resolve()
            options = {**overrides, "seed": args.seed, "cache_dir": str(cache_dir)}
            run = run_simulation(work_dir / "default", simulate_options(options), args.run_timeout, "default run")
        result = measure(run)
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    if result["round0_nodes_sent"] == 0:
        print("note: every node already held the backbone, so round 0 sent no weights", flush=True)
    table = format_table(result)
    print("\n" + table)
    settings = {
        "run_dir": str(args.run_dir) if args.run_dir else None,
        "seed": run.config.get("seed"),
        "run_overrides": overrides,
    }
    write_results(args.output, "communication", settings, result, table)
    print(f"results: {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
