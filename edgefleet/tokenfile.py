"""Read a secret (an enrollment token) from a file rather than the command line.

Why: a ``--token VALUE`` argument is in ``/proc/PID/cmdline``, which every local
user can read (``ps``); the contents of a 0600 file, or the environment
(``/proc/PID/environ`` is readable only by the process's own user), are not.
"""

from __future__ import annotations

from pathlib import Path

ENROLL_TOKEN_FILE_ENV = "EDGEFLEET_ENROLL_TOKEN_FILE"


class TokenFileError(ValueError):
    """The token file cannot be read or holds no token."""


def read_token_file(path: Path) -> str:
    """The token in ``path``, surrounding whitespace (a trailing newline) stripped."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TokenFileError(f"cannot read the token file {path}: {reason}") from None
    if not token:
        raise TokenFileError(f"the token file {path} is empty")
    return token
