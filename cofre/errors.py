"""The one exception type for errors caused by user input, and the one-line message the CLI prints for it."""

from __future__ import annotations

import errno
import os
import sys

# OS errors a user can act on; any other OSError is reported the same way, with its strerror.
_OS_HINTS = {
    errno.ENOSPC: "free some space and rerun (a run resumes from its last complete checkpoint)",
    errno.EDQUOT: "free some space and rerun (a run resumes from its last complete checkpoint)",
    errno.EACCES: "check the permissions of the path",
    errno.EPERM: "check the permissions of the path",
    errno.EROFS: "write somewhere else (the file system is read-only)",
}


class CofreError(Exception):
    """An error caused by user input; the CLI prints it as one line and exits with code 2."""


def os_error_message(err: OSError) -> str:
    """`[Errno 28] No space left on device: 'x'` as one readable line naming the file and what to do."""
    what = err.strerror or type(err).__name__
    where = f": {err.filename}" if err.filename is not None else ""
    if err.filename2 is not None:
        where += f" -> {err.filename2}"
    hint = _OS_HINTS.get(err.errno) if err.errno is not None else None
    return f"{what}{where}" + (f"; {hint}" if hint else "")


def one_line(message: str) -> str:
    """Collapse a message to one line: the CLI promises exactly one line per error."""
    return " ".join(message.split())


def warn(message: str) -> None:
    """One `warning: <message>` line on stderr (the main process's only, as errors): something was healed."""
    if os.environ.get("RANK", "0") == "0":
        sys.stderr.write(f"warning: {one_line(message)}\n")
        sys.stderr.flush()
