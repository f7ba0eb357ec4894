"""How a script ends on a problem the user can fix (a missing file, a bad value, data or checkpoint
that does not fit): one line on stderr naming the problem and the fix, exit status 2, no traceback
(MINIMIND_DEBUG=1 shows it). Anything else is a bug and keeps its traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

from minimind.checkpoint import CheckpointError

from learner.learner import TrainingDiverged

from recipes.prometheus import PrometheusError

T = TypeVar("T")

USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                                                 PermissionError, ValueError, CheckpointError, TrainingDiverged,
                                                 PrometheusError)
"""ValueError covers the project's own DataError, TokenizerError, ConfigError and config validation."""


class RunStopped(RuntimeError):
    """A run that ended early for a reason outside the user's input (an actor died, Ctrl-C, SIGTERM):
    one line saying where it stopped and how --resume continues, exit status `exit_code`."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def run_or_exit(body: Callable[[], T]) -> T:
    """`body()`, with a user error turned into `error: <message>` on stderr and exit status 2."""
    try:
        return body()
    except (*USER_ERRORS, RunStopped) as e:
        if os.environ.get("MINIMIND_DEBUG", "0") not in ("", "0"):
            raise
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())  # one line, always
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(e.exit_code if isinstance(e, RunStopped) else 2) from None
