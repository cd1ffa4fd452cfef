"""A deadline for an answer's status line and headers: a server that trickles them is cut off."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
import typing as t

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class Watchdog:
    """One thread that shuts the socket of every request still waiting for its answer's headers
    at its deadline. Arming and disarming are a dictionary update: the thread is woken only when a
    deadline comes before the one it waits for (after an idle spell), not for every request.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._armed: dict[int, tuple[float, socket.socket]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._wakes_at: float | None = None  # when the thread wakes next; None: when woken

    def arm(self, sock: socket.socket, deadline: float) -> int:
        with self._changed:
            token = next(self._tokens)
            self._armed[token] = (deadline, sock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="cbx1-watchdog", daemon=True)
                self._thread.start()
            elif self._wakes_at is None or deadline < self._wakes_at:
                self._changed.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._changed:
            self._armed.pop(token, None)

    def _watch(self) -> None:
        with self._changed:
            while True:
                if not self._armed:
                    self._wakes_at = None
                    self._changed.wait()
                    continue
                now = time.monotonic()
                expired = [token for token, (deadline, _) in self._armed.items() if deadline <= now]
                for token in expired:
                    _, sock = self._armed.pop(token)
                    with contextlib.suppress(OSError):  # already closed
                        sock.shutdown(socket.SHUT_RDWR)
                if self._armed:
                    self._wakes_at = min(deadline for deadline, _ in self._armed.values())
                    self._changed.wait(self._wakes_at - now)


class _Watched:
    """A connection whose wait for an answer's headers ends at `answer_timeout` seconds."""

    watchdog: t.ClassVar[Watchdog]
    answer_timeout: t.ClassVar[float]
    sock: socket.socket | None

    def getresponse(self) -> t.Any:
        sock = self.sock
        token = None if sock is None else self.watchdog.arm(sock, time.monotonic() + self.answer_timeout)
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            if token is not None:
                self.watchdog.disarm(token)


def watched_pool_classes(watchdog: Watchdog, answer_timeout: float) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3 pool classes whose connections give up on headers that take longer than the timeout."""
    limits = {"watchdog": watchdog, "answer_timeout": answer_timeout}
    plain = type("WatchedHTTPConnection", (_Watched, HTTPConnection), limits)
    secure = type("WatchedHTTPSConnection", (_Watched, HTTPSConnection), limits)
    return {
        "http": type("WatchedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": plain}),
        "https": type("WatchedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": secure}),
    }
