"""The terminal: one console for output, one for messages, and `fail`, the one way a command stops on bad input."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # messages hold paths: never wrap them


def fail(msg: str, code: int = 2) -> typer.Exit:
    """Print `msg` as an error and return the exit to raise (`raise fail(...) from None`)."""
    err.print(f"[bold red]error:[/] {msg}", markup=True, highlight=False)
    return typer.Exit(code)
