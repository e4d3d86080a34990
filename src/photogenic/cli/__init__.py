"""The `photogenic` command line: `main` is the group; each module below adds its commands to it."""

from photogenic.cli import cluster, run, stages, store  # noqa: F401  (each registers its commands)
from photogenic.cli.base import main

__all__ = ["main"]
