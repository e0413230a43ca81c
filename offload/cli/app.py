"""The `kimi-offload` command line: the typer app and its commands, one module each."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from offload.cli import bench, bench_kernels, chat, generate, inspect_model, make_model, plan, profiles, serve

app = typer.Typer(
    help="Run Kimi K2.5-class MoE checkpoints with experts offloaded to RAM and disk.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


app.command("make-model")(make_model.make_model)
app.command("inspect")(inspect_model.inspect_cmd)
app.command("generate")(generate.generate_cmd)
app.command("chat")(chat.chat_cmd)
app.command("serve")(serve.serve_cmd)
app.command("bench")(bench.bench_cmd)
app.command("bench-kernels")(bench_kernels.bench_kernels_cmd)
app.command("profiles")(profiles.profiles_cmd)
app.command("plan")(plan.plan_cmd)
