"""A background worker that reads predicted experts into RAM (and, when worth it, into free GPU slots) ahead of use.

The compute path only hands it the latest guess and never waits for it: a guess not started when the next one
arrives is dropped, since its layer has begun. Reads go through the store, so the RAM budget holds; an exception
in the worker is kept and raised on the compute path at the next submit() or at close().
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class PrefetchError(RuntimeError):
    """The prefetch worker failed; the cause is chained."""


@dataclass(frozen=True, slots=True)
class Job:
    layer: int
    experts: tuple[int, ...]  # most likely first
    tokens: int  # tokens in the forward pass that made the guess
    on_done: Callable[[int, int, float], None] | None = None  # (expert, bytes read, seconds) per expert read


class Prefetcher:
    """One worker thread running `fetch(layer, expert, tokens) -> (bytes read, seconds)` over the latest job."""

    def __init__(self, fetch: Callable[[int, int, int], tuple[int, float]], name: str = "kimi-prefetch") -> None:
        self._fetch = fetch
        self._job: Job | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self.error: BaseException | None = None
        self.jobs = 0
        self.dropped = 0  # jobs replaced before they started
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Replace any waiting job with this one; raises PrefetchError if the worker has failed."""
        self._raise_error()
        with self._cond:
            if self._stopping:
                return
            if self._job is not None:
                self.dropped += 1
            self._job = job
            self.jobs += 1
            self._cond.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is waiting or running (tests and benchmarks); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: (self._job is None and not self._busy) or self._stopping, timeout)

    def close(self) -> None:
        """Stop the worker (it finishes the expert it is reading) and join it; raises the worker's error, if any."""
        with self._cond:
            self._stopping = True
            self._job = None
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        self._raise_error()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise PrefetchError(f"the prefetch worker failed: {error!r}") from error

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait_for(lambda: self._job is not None or self._stopping)
                    if self._stopping:
                        return
                    job, self._job = self._job, None
                    self._busy = True
                assert job is not None
                for expert in job.experts:
                    with self._cond:
                        if self._stopping or self._job is not None:  # a newer guess: this layer has begun
                            break
                    read, seconds = self._fetch(job.layer, expert, job.tokens)
                    if job.on_done is not None:
                        job.on_done(expert, read, seconds)
        except BaseException as e:  # kept for the compute path; nothing is lost
            log.debug("prefetch worker failed", exc_info=True)
            self.error = e
        finally:
            with self._cond:
                self._busy = False
                self._stopping = True
                self._cond.notify_all()
