"""The `fedgraft` command line: simulate, report, continual, compare, download-data, download-weights.

Every `simulate` option is generated from a RunConfig field, so the options, the config
file keys and Flower's run config keys are one list. Bad input exits with code 2 before
any work starts.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from fedgraft.config import OPTION_GROUPS, ConfigError, RunConfig
from fedgraft.continual.cli import compare_command, continual_command

__all__ = ["main"]


def _run_config_options(command):
    """Add one option per RunConfig field, grouped as OPTION_GROUPS orders them."""
    fields = sorted(RunConfig.fields(), key=lambda f: OPTION_GROUPS.index(f.metadata["group"]))
    for f in reversed(fields):
        name = f.name.replace("_", "-")
        if isinstance(f.default, bool):
            default = name if f.default else f"no-{name}"
            help_text = f"[{f.metadata['group']}] {f.metadata['help']}  [default: --{default}]"
            command = click.option(f"--{name}/--no-{name}", f.name, default=None, help=help_text)(command)
            continue
        option_type = {int: int, float: float, str: str}[type(f.default)]
        help_text = f"[{f.metadata['group']}] {f.metadata['help']}  [default: {f.default!r}]"
        command = click.option("--" + name, f.name, type=option_type, default=None, help=help_text)(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """Federated transfer learning: a pretrained backbone on every node, heads trained locally."""


cli.add_command(continual_command)
cli.add_command(compare_command)


@cli.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file of option values (keys as the option names); options given here win.")
@_run_config_options
def simulate(config_file: Path | None, **options) -> None:
    """Run a federated simulation on Flower's simulation engine and write a run directory."""
    from fedgraft.simulation_runner import preflight, resume_config, run_simulation_job

    try:
        if options.get("resume"):
            cfg = resume_config(Path(options["resume"]))
            click.echo(f"resuming {cfg.resume} with its own config.json; other options are ignored", err=True)
        else:
            values = RunConfig.from_toml(config_file) if config_file else {}
            values.update({name: value for name, value in options.items() if value is not None})
            cfg = RunConfig(**values).validate()
        plan = preflight(cfg)
    except ConfigError as err:
        raise click.UsageError(str(err)) from None
    sys.exit(run_simulation_job(cfg, plan))


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir: Path) -> None:
    """Print the summary and per-round table of a finished run directory."""
    from fedgraft.run_report import print_report

    try:
        print_report(run_dir)
    except (FileNotFoundError, ValueError) as err:
        raise click.UsageError(str(err)) from None


@cli.command("download-data")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True,
              help="Folder that receives the Fashion-MNIST files.")
def download_data(data_dir: Path) -> None:
    """Download Fashion-MNIST with torchvision's downloader (needs a network connection)."""
    from fedgraft.data.errors import DataError
    from fedgraft.data.fashion_mnist import download_fashion_mnist

    try:
        path = download_fashion_mnist(data_dir)
    except DataError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Fashion-MNIST is in {path}; pass --data-dir {path}")


@cli.command("download-weights")
@click.argument("backbone")
def download_weights(backbone: str) -> None:
    """Download a torchvision backbone's ImageNet weights into torchvision's cache (needs a network)."""
    from fedgraft.models.errors import ModelError
    from fedgraft.models.torchvision_backbones import download_torchvision_weights

    try:
        path = download_torchvision_weights(backbone)
    except ModelError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"weights for {backbone} are in {path}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
