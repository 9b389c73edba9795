"""The one exception type for errors caused by user input."""


class CofreError(Exception):
    """An error caused by user input; the CLI prints it as one line and exits with code 2."""
