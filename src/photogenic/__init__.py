"""Photogenic: quality-tuning for text-to-image models (Emu, Dai et al. 2023) as a Kubeflow pipeline."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("photogenic")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
