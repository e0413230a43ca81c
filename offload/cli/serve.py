"""The `serve` command: load the engine with a progress bar, print the plan, run the ASGI app on uvicorn (CLI layer)."""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from offload.cli.console import err, fail
from offload.cli.load import load_engine, model_dir
from offload.cli.options import (
    ModelOpt,
    ProfileOpt,
    run_options,
)
from offload.planner.plan import RuntimeConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@run_options()
def serve_cmd(
    model: ModelOpt = None,
    profile: ProfileOpt = "auto",
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require `Authorization: Bearer KEY`.")] = None,
    model_name: Annotated[str | None, typer.Option(help="Name in /v1/models (default: the folder's name).")] = None,
    max_queue: Annotated[int, typer.Option(help="Requests waiting beyond the running one before 503.")] = 16,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="A web origin (e.g. http://localhost:3000) whose pages may call this server: CORS for it, and the "
            "no-key guard lets it through (repeatable)."
        ),
    ] = None,
    read_timeout: Annotated[
        float, typer.Option(help="Seconds a request's headers, and then its body, may take to arrive (408 after).")
    ] = 30.0,
    max_connections: Annotated[
        int, typer.Option(help="Open connections at once, idle keep-alive ones included (503 past it).")
    ] = 128,
    kv_cache_gb: Annotated[
        float | None,
        typer.Option(
            help="GB of RAM for finished requests' caches, shared by all (a shared system prompt is prefilled "
            "once); 0 turns reuse off. Default: the plan's (the RAM the experts leave, at least one context)."
        ),
    ] = None,
    kv_cache_dir: Annotated[Path | None, typer.Option(help="Also keep them in this folder, across restarts.")] = None,
    kv_cache_disk_gb: Annotated[float, typer.Option(help="GB of --kv-cache-dir they may use.")] = 20.0,
    *,
    runtime: RuntimeConfig,
) -> None:
    """An OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models, /health."""
    run_server(
        model_dir=model_dir(model),
        host=host,
        port=port,
        api_key=api_key,
        model_name=model_name,
        profile=profile,
        max_queue=max_queue,
        runtime=runtime,
        allow_origins=tuple(allow_origin or ()),
        read_timeout=read_timeout,
        max_connections=max_connections,
        kv_cache_gb=kv_cache_gb,
        kv_cache_dir=kv_cache_dir,
        kv_cache_disk_gb=kv_cache_disk_gb,
    )


def run_server(
    *,
    model_dir: Path,
    host: str,
    port: int,
    api_key: str | None,
    model_name: str | None,
    profile: str,
    max_queue: int,
    runtime: RuntimeConfig,
    allow_origins: tuple[str, ...] = (),
    read_timeout: float = 30.0,
    max_connections: int = 128,
    kv_cache_gb: float | None = None,
    kv_cache_dir: Path | None = None,
    kv_cache_disk_gb: float = 20.0,
) -> None:
    """Serve until Ctrl-C. The port is taken first, so a busy one fails before minutes of loading."""
    if max_queue < 0:
        raise fail(f"--max-queue {max_queue}: use 0 (no waiting) or more")
    if not read_timeout > 0:
        raise fail(f"--read-timeout {read_timeout}: give the seconds a request may take to arrive (more than 0)")
    if max_connections < 1:
        raise fail(f"--max-connections {max_connections}: allow at least 1")
    if (kv_cache_gb is not None and kv_cache_gb < 0) or kv_cache_disk_gb < 0:
        raise fail("--kv-cache-gb and --kv-cache-disk-gb take 0 or more GB")
    if kv_cache_dir is not None and kv_cache_dir.exists() and not kv_cache_dir.is_dir():
        raise fail(f"--kv-cache-dir {kv_cache_dir} is a file; give a folder (it is created if missing)")
    if not 0 <= port <= 65535:
        raise fail(f"--port {port}: a TCP port is 0 to 65535 (0: any free one)")
    if api_key is not None and not api_key.strip():
        raise fail("--api-key is empty; give the key clients must send, or leave the option out")
    try:
        sock = _bind(host, port)
    except OSError as e:
        raise fail(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port or --host") from None
    try:
        engine = load_engine(model_dir, runtime, profile)
    except BaseException:
        sock.close()
        raise
    import uvicorn

    from offload.planner.report import summary_lines
    from offload.server.app import ALIAS, create_app
    from offload.server.connections import guarded_protocol
    from offload.server.shutdown import GRACE_S, Shutdown, StoppingServer

    name = model_name or model_dir.resolve().name
    bound_port = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}/v1"
    with engine:
        err.print("\n".join(summary_lines(engine.plan)), style="dim", markup=False, highlight=False)
        if kv_cache_gb != 0:
            try:
                budget = None if kv_cache_gb is None else int(kv_cache_gb * 1e9)
                kv = engine.enable_prefix_cache(budget, kv_cache_dir, int(kv_cache_disk_gb * 1e9))
            except OSError as e:
                raise fail(f"--kv-cache-dir: {e}") from None
            where = f", and up to {kv_cache_disk_gb:g} GB in {kv_cache_dir}" if kv_cache_dir else ""
            err.print(
                f"[dim]prefix cache: up to {kv.budget / 1e9:.2f} GB of finished requests' caches in RAM{where}[/]"
            )
        err.print(
            f"serving [bold]{name}[/] (also as {ALIAS}) at [bold]{url}[/], context {engine.max_context:,} "
            f"tokens, one request at a time, {max_queue} more may wait; Ctrl-C stops"
        )
        if host not in LOOPBACK and api_key is None:
            err.print(f"[yellow]listening on {host} without --api-key: anyone who reaches this port can use it[/]")
        server_log = logging.getLogger("offload.server")
        if server_log.level == logging.NOTSET:
            server_log.setLevel(logging.INFO)  # one line per request, beside uvicorn's access log
        shutdown = Shutdown()
        app = create_app(
            engine,
            name,
            api_key,
            max_queue,
            host=host,
            allow_origins=allow_origins,
            shutdown=shutdown,
            read_timeout=read_timeout,
        )
        protocol = guarded_protocol(read_timeout, max_connections)
        config = uvicorn.Config(app, http=protocol, log_level="info", timeout_graceful_shutdown=GRACE_S)
        # uvicorn raises the signal again once it has shut down; SIGTERM's default would end the process there,
        # before the engine closes, so it becomes an exception, as Ctrl-C is
        previous = signal.signal(signal.SIGTERM, _terminated)
        try:
            StoppingServer(config, shutdown).run(sockets=[sock])
        except (KeyboardInterrupt, Terminated):  # the stop asked for, done
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        err.print("stopped")


class Terminated(Exception):
    """SIGTERM arrived after uvicorn's own shutdown."""


def _terminated(sig: int, frame: FrameType | None) -> None:
    raise Terminated()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, as uvicorn would make it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
