"""`fedgraft report`: the summary and per-round table of a run directory."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedgraft.server.run_directory import CONFIG_FILE, read_metrics

__all__ = ["print_report"]


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_report(run_dir: Path, console: Console | None = None) -> None:
    """Print what a run measured; raise FileNotFoundError when `run_dir` contains no run."""
    console = console or Console()
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    config = json.loads((run_dir / CONFIG_FILE).read_text()) if (run_dir / CONFIG_FILE).is_file() else {}

    table = Table(title=f"fedgraft run {run_dir}")
    for column in ("round", "train loss", "val acc", "test acc", "sent bytes", "received bytes",
                   "bytes/node (train)", "rejected", "seconds"):
        table.add_column(column, justify="right")
    for r in metrics["rounds"]:
        table.add_row(
            str(r["round"]), _cell(r["train_loss"]), _cell(r["val_accuracy"]), _cell(r["test_accuracy"]),
            f"{r['bytes_sent']:,}", f"{r['bytes_received']:,}", f"{r['train_bytes_sent_per_node']:,}",
            str(len(r["rejected"])), _cell(r["seconds"], 1),
        )
    console.print(table)

    summary = metrics.get("summary") or {}
    if config:
        rounds = summary.get("rounds", config.get("rounds"))
        console.print(
            f"config: {config.get('num-clients')} clients, {rounds} rounds, "
            f"strategy {config.get('strategy')}, backbone {config.get('backbone')} ({config.get('mode')}), "
            f"partition {config.get('partition')} (alpha {config.get('alpha')}), seed {config.get('seed')}"
        )
    continual = summary.get("continual")
    if continual:
        console.print(
            f"continual: stream {continual['stream']}, {continual['num_tasks']} tasks x "
            f"{continual['rounds_per_task']} rounds, node strategy {continual['cl_strategy']}; "
            f"average accuracy [bold]{_cell(continual['average_accuracy'])}[/bold], "
            f"forgetting {_cell(continual['average_forgetting'])}, BWT {_cell(continual['backward_transfer'])}, "
            f"FWT {_cell(continual['forward_transfer'])} (matrix.json, node-forgetting.json, task-curves.png)"
        )
    if summary:
        console.print(
            f"final test accuracy: [bold]{_cell(summary.get('final_test_accuracy'))}[/bold], "
            f"validation accuracy: {_cell(summary.get('final_val_accuracy'))}, "
            f"time: {_cell(summary.get('seconds'), 1)} s, model: {summary.get('model')}"
        )
    else:
        console.print("[yellow]this run has no summary: it was interrupted or is still running")
