"""Error hierarchy: every error the package raises on bad input is a ``WGatesError``.

Each subclass also derives from the built-in type a caller would expect (``ValueError`` for a bad
value, ``TypeError`` for a wrong type, ``RuntimeError`` for a failed operation), so
``except ValueError`` keeps working for users who do not know this package.
"""

from __future__ import annotations


class WGatesError(Exception):
    """Base class of every error raised by wgates_plugin."""


class ConfigError(WGatesError, ValueError):
    """A configuration value is invalid; the message names the field, the value and what is allowed."""


class ConfigTypeError(WGatesError, TypeError):
    """A configuration value has the wrong type."""


class TracingError(WGatesError, RuntimeError):
    """torch-pruning could not trace the model's channel dependencies."""


class BudgetError(WGatesError, ValueError):
    """A FLOPs / latency budget cannot be met under the per-layer bounds."""


class ExportError(WGatesError, RuntimeError):
    """The pruned model does not reproduce the gated model, or pruning failed."""


class StateError(WGatesError, RuntimeError):
    """An operation was called in the wrong state (e.g. training after ``freeze()``)."""


class MeasurementError(WGatesError, ValueError):
    """A value derived from measurements is outside its domain (e.g. a latency budget above 1).

    The message names the measured values and how to measure again (more repeats, an idle machine).
    """


class LatencyContextError(ConfigError):
    """Latency data (samples or an LPNet) was measured in another context than the one it is used in."""


class FileFormatError(ConfigError):
    """A file we load is corrupt, tampered with, of another format or declares sizes past the limits.

    The message names the file and what is wrong. Nothing in a file is ever executed.
    """


class MissingFileError(FileFormatError, FileNotFoundError):
    """A file we load does not exist (also a ``FileNotFoundError``)."""
