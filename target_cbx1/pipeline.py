"""Requests in flight: per stream up to `size` at once, and never one lookup key twice in the run."""

from __future__ import annotations

import queue
import threading
import time
import typing as t

from target_cbx1.errors import StopRequested

Work = t.Callable[[], None]
CLOSE_WAIT_SECONDS = 5.0  # how long close() waits for each idle thread to end


class RunRequests:
    """What every request pool of a run shares: the lookup keys in flight (so that two streams
    writing the same CBX1 objects, contacts and leads, never have one key in flight twice), the
    first error that stopped a request, and the one condition they all wait on.

    `stop_signal` tells why the run stops, if it does; `stop(reason)` is called when a request
    ends in an error that must stop the run, so that requests waiting to retry stop waiting.
    """

    def __init__(self, stop_signal: t.Callable[[], str | None], stop: t.Callable[[str], None]) -> None:
        self.changed = threading.Condition()
        self.keys: set[str] = set()
        self.error: BaseException | None = None
        self.stop_signal = stop_signal
        self.stop = stop

    def raise_error(self) -> None:
        """Raise the error that stopped a request, if one did (before reading on, say)."""
        error = self.error  # read without the lock: it is set once, and this runs before every line
        if error is not None and not isinstance(error, StopRequested):
            raise error


class RequestPool:
    """Runs one stream's requests on up to `size` daemon threads while the caller reads on.

    Threads start as requests need them and end at `close()`, so a pool never holds more than
    `size` threads and a finished stream holds none.

    A request waits until fewer than `size` are in flight and no request of the run holds one of
    its lookup keys, so the upserts of one key stay in input order. An error that must stop the run
    (an outage, refused credentials, a redirect), in any stream, stops the run's waits and is raised
    again in the caller's thread at its next call to any pool (or `RunRequests.raise_error`).
    """

    def __init__(self, size: int, name: str, run: RunRequests) -> None:
        self.size = size
        self.name = name
        self._run = run
        self._changed = run.changed
        self._running = 0
        self._jobs: queue.SimpleQueue[tuple[frozenset[str], Work | None]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, keys: frozenset[str], work: Work) -> None:
        """Run `work` once a thread is free and no request in flight holds one of `keys`."""
        with self._changed:
            while self._must_wait(keys):
                self._changed.wait()
            self._raise_if_failed_or_stopping()
            self._running += 1
            self._run.keys |= keys
            if self._running > len(self._threads):
                self._start_thread()
        self._jobs.put((keys, work))

    def close(self) -> None:
        """End the pool's threads once the requests in flight are done (call after wait or settle)."""
        with self._changed:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._jobs.put((frozenset(), None))
        for thread in threads:
            thread.join(CLOSE_WAIT_SECONDS)

    def wait(self) -> None:
        """Return when nothing is in flight; raise the error that stopped a request, if any."""
        with self._changed:
            while self._running and self._run.error is None:
                self._changed.wait()
            self._raise_if_failed_or_stopping()

    def settle(self, deadline: float | None) -> bool:
        """Wait, at most until `deadline` (monotonic), for the requests in flight; errors are not raised.

        Returns whether nothing is in flight any more.
        """
        with self._changed:
            while self._running:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def _must_wait(self, keys: frozenset[str]) -> bool:
        if self._run.error is not None:
            return False
        if self._run.stop_signal() is not None:
            return self._running > 0  # let the requests in flight finish, then stop
        return self._running >= self.size or not self._run.keys.isdisjoint(keys)

    def _raise_if_failed_or_stopping(self) -> None:
        if self._run.error is not None:
            raise self._run.error
        signal_name = self._run.stop_signal()
        if signal_name is not None:
            raise StopRequested(signal_name)

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self.name}-{len(self._threads) + 1}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            keys, work = self._jobs.get()
            if work is None:
                return
            try:
                work()
            except BaseException as exc:  # handed to the caller's thread, which decides
                with self._changed:
                    first = self._run.error is None
                    self._run.error = self._run.error or exc
                if first and not isinstance(exc, StopRequested):
                    self._run.stop(type(exc).__name__)
            finally:
                with self._changed:
                    self._running -= 1
                    self._run.keys -= keys
                    self._changed.notify_all()
