"""`python -m offload.cli`: the same as `kimi-offload`."""

from offload.cli.app import app

app()
