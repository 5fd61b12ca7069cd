"""The toolkit's small exception hierarchy. Messages name the file to open and the fix."""
from __future__ import annotations


class ToolkitError(Exception):
    """Base class: a problem the user can fix (bad config, bad environment, held lock)."""


class ConfigError(ToolkitError):
    """A configuration file or flag is invalid."""


class EnvError(ToolkitError):
    """An environment directory or its env.yaml is invalid."""


class LockHeldError(ToolkitError):
    """Another daemon holds the run directory."""
