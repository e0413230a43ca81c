"""An OpenAI-compatible HTTP server over one Engine (`kimi-offload serve`).

Why Starlette on uvicorn, and not FastAPI: the server has four routes and one hard requirement on its answers,
that every error is OpenAI's JSON shape with the status OpenAI would use. FastAPI's pydantic layer validates first
and answers its own 422 shape; bending that back means overriding its handlers and still shipping the dependency.
Here requests.py checks each body by hand into frozen dataclasses, with messages that name the field, and
Starlette only routes. uvicorn is the ASGI server Starlette is tested on; streaming (server-sent events) and
noticing a client that hangs up are small ASGI code in streaming.py.

Threading: the event loop parses and answers; prompts are rendered on a thread pool; the engine runs on one worker
thread owned by scheduler.py (one generation at a time, FIFO, a bounded wait list, 503 beyond it), and jobs.py
relays each generated piece back to the request's loop.
"""
