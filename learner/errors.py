"""How a script ends on a problem the user can fix (a missing file, a bad value, data or checkpoint
that does not fit): one line on stderr naming the problem and the fix, exit status 2, no traceback
(MINIMIND_DEBUG=1 shows it). Anything else is a bug and keeps its traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

from minimind.checkpoint import CheckpointError

from .learner import TrainingDiverged

T = TypeVar("T")

USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                                                 PermissionError, ValueError, CheckpointError, TrainingDiverged)
"""ValueError covers the project's own DataError, TokenizerError, ConfigError and config validation."""


def run_or_exit(body: Callable[[], T]) -> T:
    """`body()`, with a user error turned into `error: <message>` on stderr and exit status 2."""
    try:
        return body()
    except USER_ERRORS as e:
        if os.environ.get("MINIMIND_DEBUG", "0") not in ("", "0"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
