"""Errors that end a job with one message naming the sample, file or field."""


class HistoflowError(Exception):
    """Base class: the message is what the user sees, so it must say what and where."""


class ConfigError(HistoflowError):
    """A config value or sample-sheet field is wrong; the message names the field."""


class SlideError(HistoflowError):
    """A slide cannot be used; the message names the sample and the file."""

    def __init__(self, message: str, sample: str | None = None, path: str | None = None):
        where = []
        if sample:
            where.append(f"sample '{sample}'")
        if path:
            where.append(f"file '{path}'")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.sample = sample
        self.path = path


class ModelError(HistoflowError):
    """A model card, model or weights file is wrong; the message names the file or field."""
