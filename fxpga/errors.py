"""The one exception type the command line turns into a one-line message and exit status 1."""


class FxpgaError(Exception):
    """A user-facing error: the message names what was wrong, what was expected, and where."""
