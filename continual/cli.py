"""The `fedgraft continual` and `fedgraft compare` commands.

Both train strategies along a task stream and write a run directory (see
`fedgraft.continual.outputs`). ``--strategy replay,ewc`` runs a comparison, and
`compare` is the same command that requires at least two strategies. Every option is
generated from a `ContinualConfig` field. Bad input exits with code 2 before any data
is loaded or any model is built.

The module imports Avalanche only when a command runs, because that import takes
seconds and ``--help`` should not wait for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedgraft.config import ConfigError
from fedgraft.continual.avalanche_warnings import hide_avalanche_deprecations
from fedgraft.continual.run_config import ContinualConfig

if TYPE_CHECKING:
    from fedgraft.continual.experiment import ContinualResult, ProgressUpdate

__all__ = ["compare_command", "continual_command"]


def _config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per ContinualConfig field, in field order."""
    for f in reversed(ContinualConfig.fields()):
        name = f.name.replace("_", "-")
        if f.name == "strategies":
            default = ",".join(f.default)
            command = click.option(
                "--strategy",
                "strategies",
                default=None,
                help=f"{f.metadata['help']}  [default: {default}]",
            )(command)
            continue
        help_text = f"{f.metadata['help']}  [default: {f.default!r}]"
        command = click.option(
            "--" + name, f.name, type=f.metadata["kind"], default=None, help=help_text
        )(command)
    return command


def _build_config(options: dict[str, Any]) -> ContinualConfig:
    """Build a validated config from the options given, keeping the defaults of the others."""
    values = {name: value for name, value in options.items() if value is not None}
    if "strategies" in values:
        values["strategies"] = tuple(name.strip() for name in values["strategies"].split(",") if name.strip())
    return ContinualConfig(**values).validate()


def _run(options: dict[str, Any], min_strategies: int) -> None:
    """Validate, prepare, train every strategy with a progress display, and write the run directory."""
    try:
        cfg = _build_config(options)
        if len(cfg.strategies) < min_strategies:
            raise ConfigError(
                f"--strategy is {','.join(cfg.strategies)!r}, but compare needs at least "
                f"{min_strategies} strategies, such as --strategy naive,replay. "
                "Use `fedgraft continual` for a single strategy."
            )
    except ConfigError as err:
        raise click.UsageError(str(err)) from None

    # Imported here because they import Avalanche (see the module docstring).
    from fedgraft.continual.errors import StreamError
    from fedgraft.continual.experiment import prepare, run_experiment
    from fedgraft.continual.outputs import resolve_run_dir, write_comparison, write_run_directory
    from fedgraft.data.errors import DataError
    from fedgraft.models.errors import ModelError

    try:
        prepared = prepare(cfg)
    except (DataError, StreamError, ModelError) as err:
        raise click.UsageError(str(err)) from None

    run_dir = resolve_run_dir(cfg)
    comparison = len(cfg.strategies) > 1
    results = []
    with _ProgressDisplay() as display, hide_avalanche_deprecations():
        for name in cfg.strategies:
            result = run_experiment(cfg, name, display.update, prepared)
            results.append(result)
            # Each strategy's folder is written as soon as it finishes, so an interrupted
            # comparison keeps the strategies that completed.
            write_run_directory(result, cfg, run_dir / name if comparison else run_dir)
    if comparison:
        write_comparison(results, cfg, run_dir, strategy_folders=False)

    _print_results(results, run_dir, comparison)


class _ProgressDisplay:
    """A rich progress display with one bar for the features and one per strategy."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> _ProgressDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.progress.__exit__(*exc_info)

    def update(self, progress_update: ProgressUpdate) -> None:
        """Move the bar of the update's strategy, or the features bar, creating it on first use."""
        strategy = progress_update.strategy
        key = strategy if strategy is not None else "features"
        if key not in self.bars:
            label = "backbone features (images)" if strategy is None else f"{strategy} (experiences)"
            self.bars[key] = self.progress.add_task(label, total=progress_update.total)
        self.progress.update(self.bars[key], completed=progress_update.done, total=progress_update.total)


def _print_results(results: list[ContinualResult], run_dir: Path, comparison: bool) -> None:
    table = Table(title="continual learning results (fractions of test images)")
    for column in ("strategy", "input", "avg accuracy", "forgetting", "BWT", "FWT", "seconds"):
        table.add_column(column, justify="left" if column in ("strategy", "input") else "right")
    for result in results:
        summary = result.summary
        table.add_row(
            result.strategy,
            result.input_kind.value,
            _number(summary.average_accuracy),
            _number(summary.average_forgetting),
            _number(summary.backward_transfer),
            _number(summary.forward_transfer),
            f"{result.stream_seconds:.1f}",
        )
    Console().print(table)
    heading = "comparison" if comparison else "run directory"
    click.echo(f"{heading} written to {run_dir}")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@click.command("continual", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@_config_options
def continual_command(**options: Any) -> None:
    """Train continual-learning strategies along a task stream and write a run directory.

    A comma-separated --strategy runs each strategy on the same stream, seed and initial
    head, and adds comparison.md and comparison.png.
    """
    _run(options, min_strategies=1)


@click.command("compare", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@_config_options
def compare_command(**options: Any) -> None:
    """Compare two or more continual-learning strategies (--strategy a,b,...) on one stream.

    The same as `fedgraft continual`, but it requires at least two strategies.
    """
    _run(options, min_strategies=2)
