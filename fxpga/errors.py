"""The one exception type the command line turns into a one-line message and exit status 1."""


class FxpgaError(Exception):
    """A user-facing error: the message names what was wrong, what was expected, and where."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: every ``finally`` and
    ``except BaseException`` that removes a temporary file or kills a child process runs."""
