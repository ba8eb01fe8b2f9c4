"""User-facing errors. The CLI prints them on one line and exits with code 2 (no traceback)."""


class ReflowError(Exception):
    """Base class: a problem with the user's input, data or run, with a message saying how to fix it."""


class ConfigError(ReflowError, ValueError):
    """An invalid recipe, key or value."""


class DataError(ReflowError, ValueError):
    """A dataset that cannot feed the requested policy or stage."""


class CheckpointError(ReflowError, ValueError):
    """A missing, foreign or incompatible checkpoint, teacher or output directory."""


class TrainingError(ReflowError, RuntimeError):
    """Training went wrong in a way the user can act on (e.g. a non-finite loss)."""


class HubError(ReflowError, RuntimeError):
    """A Hub push / download that cannot proceed: bad repo id, no token, no write access, a failed request."""


class RenamedSettingWarning(FutureWarning):
    """A setting written under its old name: it still works; the message names the new one (the CLI prints it
    on one line)."""
