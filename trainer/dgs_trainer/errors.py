"""Errors of training, evaluation and captioning: all of them `DgsError`s, which `dgs` reports in one place."""

from __future__ import annotations

from dgs_sdk.errors import DgsError

__all__ = ["ConfigError", "RunFolderError", "TrainError"]


class TrainError(DgsError, ValueError):
    """A training run cannot start or continue; the message says why."""


class ConfigError(TrainError):
    """A run's configuration (flags, a --config file or a run's config.json) is invalid; the message names the key."""


class RunFolderError(TrainError):
    """A file of a run folder is missing or damaged; the message names it."""
