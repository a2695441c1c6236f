"""Exit codes of the `appliance` command, and the error a command raises to choose one.

Kept apart from `cli.py` so that packages adding sub-commands never import the core's CLI.
"""

from __future__ import annotations

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_MODEL, EXIT_INTERNAL = 0, 2, 3, 4, 1


class CommandError(Exception):
    """A failure a command reports to the user with its own exit code (no traceback)."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
