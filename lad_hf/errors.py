"""One exception type for bad user input: the CLI prints its message as one line and exits 2."""


class LADError(ValueError):
    """Bad input or configuration. The message says what is wrong and how to fix it."""
