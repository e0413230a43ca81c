"""OffloadError: the base of every error that means "the user must change something" (a flag, a file, a request).

The CLI shows these as one line and exit code 2; anything else is a bug and keeps its traceback. They subclass
ValueError, since each one is a bad value given from outside.
"""

from __future__ import annotations


class OffloadError(ValueError):
    """Bad input from outside this program; the message says what to change."""
