"""The command line: the only layer that talks to the terminal. `app` is the `kimi-offload` entry point."""

from offload.cli.app import app

__all__ = ["app"]
