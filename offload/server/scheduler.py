"""One generation at a time: a FIFO of jobs run by one worker thread, a bounded wait list, and withdrawal.

The engine computes on its calling thread and is not thread-safe, so every job runs on the one worker. A request
that cannot wait (max_queue jobs already wait behind the running one) is refused at once rather than left to time
out. A client that goes away withdraws its job: a waiting job leaves the list, a running one is cancelled and stops
after its current token, so the next job starts. On shutdown (`stop_all`) every job is stopped at once and told so.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Job(Protocol):
    def run(self, delivered: Callable[[], None]) -> None:
        """The work, on the worker thread. Call `delivered()` just before handing the client its last event: from
        then on the job no longer counts as running, so a client that answers at once is not refused a place."""

    def cancel(self) -> None:
        """Stop soon (any thread); a job cancelled before it starts must not start."""

    def stop(self) -> None:
        """The server stops: cancel, and tell the client now rather than when the current step ends."""


class QueueFull(Exception):
    """max_queue jobs already wait behind the running one."""


class Closed(Exception):
    """The server is shutting down: no job is taken any more."""


class Scheduler:
    """Runs submitted jobs one at a time, in order, on its own thread; at most `max_queue` wait."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue = {max_queue}; use 0 (no waiting: one request at a time) or more")
        self.max_queue = max_queue
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="kimi-offload-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float | None = 30.0) -> None:
        """Drop the waiting jobs, cancel the running one and wait for the worker to end."""
        with self._cond:
            self._closed = True
            for job in self._waiting:
                job.cancel()
            self._waiting.clear()
            if self._running is not None:
                self._running.cancel()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a job; QueueFull when the wait list is full."""
        with self._cond:
            if self._closed:
                raise Closed()
            if self.full:
                raise QueueFull()
            self._waiting.append(job)
            self._cond.notify()

    def stop_all(self) -> None:
        """Shutdown: take no more jobs, and stop the running and the waiting ones at once (any thread)."""
        with self._cond:
            self._closed = True
            waiting, running = list(self._waiting), self._running
            self._waiting.clear()
            self._cond.notify_all()
        for job in ([running] if running is not None else []) + waiting:
            job.stop()
        log.info("shutting down: %d running and %d waiting requests stopped", running is not None, len(waiting))

    @property
    def closed(self) -> bool:
        return self._closed

    def withdraw(self, job: Job) -> None:
        """The client is gone: drop the job if it waits, cancel it if it runs; nothing once it has finished."""
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                job.cancel()
                log.info("a waiting request was withdrawn before it ran: its client went away")
            elif self._running is job:
                job.cancel()

    @property
    def full(self) -> bool:
        """True when a job submitted now would be refused."""
        # a job not yet picked up while nothing runs is the next to run, not a waiting one
        return len(self._waiting) >= self.max_queue + (self._running is None)

    @property
    def running(self) -> int:
        return int(self._running is not None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _delivered(self, job: Job) -> None:
        with self._cond:
            if self._running is job:
                self._running = None

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._running = self._waiting.popleft()
            try:
                job.run(functools.partial(self._delivered, job))
            except Exception:  # a job reports its own errors; this keeps the worker alive if one does not
                log.exception("a job failed on the engine thread")
            finally:
                with self._cond:
                    self._running = None
