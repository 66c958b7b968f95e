"""User-facing errors: raised for bad input, printed as one line by the CLI and shown as a message by the app."""


class WorkbenchError(Exception):
    """A problem the user can fix (bad file, unknown name, impossible request). Never a bug."""
