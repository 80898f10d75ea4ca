"""One convention for every command-line tool of the toolkit (``infer.*``, ``train.*``, ``data.distill``): a command
that cannot do what it was asked prints one line ``error: <what went wrong and what to do>`` on stderr and exits
with status 2, as argparse's own usage errors do; success is 0; anything else (status 1 with a traceback) is a bug.
"""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_ERROR = 2


class CliError(SystemExit):
    """Raised by :func:`fail`: exit status 2; ``str(error)`` is the message (for callers and tests)."""

    def __init__(self, message: str):
        super().__init__(EXIT_ERROR)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(message) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2."""
    message = str(message)
    if message.startswith("error: "):
        message = message[len("error: ") :]
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise CliError(message)
