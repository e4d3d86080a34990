"""The `photogenic` command: the group, logging, friendly errors and the config options every command takes."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from photogenic.config import PRESETS, ConfigError, load_config
from photogenic.manifest import ManifestError
from photogenic.redact import secret_env_values
from photogenic.storage import StoreError
from photogenic.train.distributed import RankLostError

__all__ = ["main", "config_options", "friendly_errors", "setup_logging"]


_QUIET = ("great_expectations", "botocore", "urllib3", "alembic", "mlflow", "kfp")


class _RedactingFilter(logging.Filter):
    """Replaces the values of credential environment variables in every log record, and keeps
    libraries' INFO chatter out of the stage log (they set their own logger levels on import)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        quiet = record.name.startswith(_QUIET) or "/kfp/" in record.pathname.replace("\\", "/")  # kfp logs as root
        if record.levelno < max(self.level, logging.WARNING) and quiet:
            return False
        secrets = secret_env_values()
        if secrets:
            message = record.getMessage()
            for secret in secrets:
                message = message.replace(secret, "<redacted>")
            record.msg, record.args = message, None
        return True


def setup_logging(level: int = logging.INFO) -> None:
    # MLflow installs its own handler at import time; its table-creation chatter is not news.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_RedactingFilter(level))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


_DEBUG = {"on": False}  # set by `photogenic --debug`


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Errors print one clear line and exit 1 instead of a traceback (`photogenic --debug` shows it)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, StoreError, ManifestError, RankLostError) as exc:
            if _DEBUG["on"]:
                raise
            raise click.ClickException(str(exc)) from exc
        except click.ClickException:
            raise
        except Exception as exc:
            if _DEBUG["on"]:
                raise
            raise click.ClickException(
                f"{type(exc).__name__}: {exc} (an unexpected error: run `photogenic --debug ...` for the traceback)"
            ) from exc

    return wrapper


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--preset, --config, --workspace and trailing `key=value` overrides, resolved into `config: Config`."""

    @click.option("--preset", "-p", default=None, help=f"Named preset: {', '.join(PRESETS)} (default: demo).")
    @click.option(
        "--config", "-c", "config_file", type=click.Path(dir_okay=False), help="YAML config file (a path or store URI)."
    )
    @click.option("--workspace", "-w", envvar="PHOTOGENIC_WORKSPACE", help="Workspace folder (store, MLflow, reports).")
    @click.argument("overrides", nargs=-1)
    @functools.wraps(fn)
    def wrapper(
        preset: str | None, config_file: str | None, workspace: str | None, overrides: tuple[str, ...], **kw: Any
    ) -> Any:
        extra = [f"workspace={workspace}"] if workspace else []
        try:
            config = load_config(preset, config_file, [*extra, *overrides])
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        return fn(config=config, **kw)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--debug", is_flag=True, help="Debug logging, and a traceback with every error.")
def main(verbose: bool, debug: bool) -> None:
    """Photogenic: quality-tuning for text-to-image models (Emu's recipe) as a Kubeflow pipeline.

    Every command takes the same config: a --preset, a --config YAML file and `dotted.key=value`
    overrides, in that order of precedence.
    """
    _DEBUG["on"] = debug
    setup_logging(logging.DEBUG if verbose or debug else logging.INFO)
