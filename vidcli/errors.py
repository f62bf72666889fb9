"""The exceptions vidcli raises for things a user can fix; `console.py` turns them into one line.

Exit codes: 2 for usage, recipe and input errors (the user must change the command or a file),
1 for runtime failures (network, disk, a stage that failed while running).
"""


class VidcliError(Exception):
    """Base class: a message for the user, an optional hint (the way out), an exit code."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class UsageError(VidcliError):
    """Bad command-line input: a value, a file or a combination of options that cannot work."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe that does not parse or validate; the message names the file and the key."""


class ShapeError(UsageError):
    """A frame count or size the model cannot take; the message lists the ones it can."""


class CheckpointError(UsageError):
    """Weights that do not match the model they are loaded into (missing/unexpected keys)."""


class DownloadError(VidcliError):
    """A download that failed: network, authorisation, unknown repository, disk."""


class StageFailed(VidcliError):
    """A stage that started but could not finish."""
