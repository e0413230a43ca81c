"""Stopping a forward pass from another thread: the generation's cancel event, checked between units of work."""

from __future__ import annotations

import threading


class Cancelled(Exception):
    """A forward pass stopped on request."""


def check(stop: threading.Event | None, where: str) -> None:
    """Raise Cancelled when `stop` is set; `where` says what had not run yet (for the log)."""
    if stop is not None and stop.is_set():
        raise Cancelled(f"forward pass stopped before {where}")
