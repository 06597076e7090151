"""User-facing errors: the CLI prints their message as one line and exits non-zero, without a traceback.

Raise ``EngineError`` (or a subclass) for anything a user can fix: a wrong path, a malformed file, a bad flag.
Programming errors stay ordinary exceptions so that they keep their traceback.
"""

from __future__ import annotations


class EngineError(Exception):
    """A problem with the user's input or environment, described in one line that names the file/field."""

    exit_code = 2


class DataError(EngineError):
    """A dataset folder, annotation file or image is missing, malformed or inconsistent."""


class ConfigError(EngineError):
    """A model/training/index configuration or checkpoint does not fit what was asked for."""
