"""A stream's requests in flight: up to `size` at once, never two with the same lookup key in the run."""

from __future__ import annotations

import queue
import threading
import time
import typing as t

from target_cbx1.errors import StopRequested

Work = t.Callable[[], None]
CLOSE_WAIT_SECONDS = 5.0  # how long close() waits for each idle thread to end


class KeysInFlight:
    """The lookup keys of every request in flight in the run, shared by all the pools, so that two
    streams writing the same CBX1 objects (contacts and leads) never have one key in flight twice.
    `changed` is the one condition every pool waits on.
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.keys: set[str] = set()


class RequestPool:
    """Runs requests on up to `size` daemon threads while the caller goes on reading input.

    Threads start as requests need them and end at `close()`, so a pool never holds more than
    `size` threads and a finished stream holds none.

    A request waits until fewer than `size` are in flight and no request of the run holds one of its
    lookup keys, so the upserts of one key stay in input order. An error that must stop the run (an outage,
    refused credentials, a signal) is raised again in the caller's thread at its next call.
    """

    def __init__(
        self, size: int, name: str, stop_signal: t.Callable[[], str | None], in_flight: KeysInFlight
    ) -> None:
        self.size = size
        self.name = name
        self._stop_signal = stop_signal
        self._changed = in_flight.changed
        self._keys_in_flight = in_flight.keys
        self._running = 0
        self._error: BaseException | None = None
        self._jobs: queue.SimpleQueue[tuple[frozenset[str], Work | None]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, keys: frozenset[str], work: Work) -> None:
        """Run `work` once a thread is free and no request in flight holds one of `keys`."""
        with self._changed:
            while self._must_wait(keys):
                self._changed.wait()
            self._raise_if_failed_or_stopping()
            self._running += 1
            self._keys_in_flight |= keys
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
            while self._running and self._error is None:
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
        if self._error is not None:
            return False
        if self._stop_signal() is not None:
            return self._running > 0  # let the requests in flight finish, then stop
        return self._running >= self.size or not self._keys_in_flight.isdisjoint(keys)

    def _raise_if_failed_or_stopping(self) -> None:
        if self._error is not None:
            raise self._error
        signal_name = self._stop_signal()
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
                    self._error = self._error or exc
            finally:
                with self._changed:
                    self._running -= 1
                    self._keys_in_flight -= keys
                    self._changed.notify_all()
