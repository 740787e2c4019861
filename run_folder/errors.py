"""The error every reader of a run folder raises: its message names the file and what to do."""

from task.errors import UserError

REDO = "run the simulation again"


class RunFolderError(UserError):
    """A folder is not a (completed, intact) run folder; the message says what to do."""
