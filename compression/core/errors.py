"""Every error the compression engine raises on purpose.

    CompressionError                 base class; catch this to catch them all
    ├── ProfileError                 unknown profile, malformed YAML, bad key or value
    ├── ModelSourceError             a model name / hf:DIR / py:module:factory that cannot be built
    ├── UntraceableModelError        Torch-Pruning cannot build a dependency graph for the model
    ├── DataError                    calibration/validation data missing, empty or the wrong shape
    ├── VariantError                 a saved variant that is missing files or fails its checksum
    └── Cancelled                    the caller asked a running compression to stop

Messages say what was expected, what arrived and how to fix it.
"""

from __future__ import annotations


class CompressionError(Exception):
    """Base class of the engine's errors."""


class ProfileError(CompressionError, ValueError):
    """A device profile is unknown or invalid."""


class ModelSourceError(CompressionError, ValueError):
    """A model source string cannot be resolved to a model."""


class UntraceableModelError(CompressionError):
    """Torch-Pruning cannot trace the model into a dependency graph."""


class DataError(CompressionError, ValueError):
    """Calibration or validation data is missing, empty or does not fit the model."""


class VariantError(CompressionError):
    """A saved variant directory is incomplete or corrupted."""


class Cancelled(CompressionError):
    """A running compression was cancelled by its caller."""
