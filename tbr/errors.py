"""User-facing errors. The CLI prints these without a traceback; anything else is a bug."""


class TbrError(Exception):
    """Base class: the message tells the user what went wrong and how to fix it."""


class ConfigError(TbrError):
    """A bad option, YAML key or value."""


class DataError(TbrError):
    """Malformed or missing input data; the message names file, line and column where it can."""


class ModelError(TbrError):
    """An unknown model name, a missing model package or an unloadable checkpoint."""


class EndpointError(TbrError):
    """An OpenAI-compatible endpoint that cannot be reached or keeps failing."""
