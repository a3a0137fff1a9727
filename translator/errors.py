"""Errors a user can cause. The CLI prints them in one line and exits with status 2."""


class TranslatorError(Exception):
    """Base class for every error caused by user input (files, config, arguments)."""


class ConfigError(TranslatorError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(TranslatorError):
    """A corpus is missing, unreadable, misaligned or empty."""


class ModelDirError(TranslatorError):
    """A model or export directory is missing files or is not a translator model."""


class TrainingError(TranslatorError):
    """Training cannot go on (for example the loss became NaN or Inf)."""


class ExportError(TranslatorError):
    """An export cannot be written, or failed its parity check."""


class EnsembleError(TranslatorError):
    """Models given as one ensemble cannot be decoded together (their tokenizers, languages or
    length limits differ)."""
