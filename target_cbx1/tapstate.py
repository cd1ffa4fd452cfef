"""state_output: singer. The tap's STATE messages, each written once every record before it is done."""

from __future__ import annotations

import collections
import logging
import sys
import threading
import typing as t

from target_cbx1 import jsonio

if t.TYPE_CHECKING:
    from target_cbx1.ledger import StateLedger

logger = logging.getLogger("target-cbx1.state")
_NOTHING = object()


class TapStateForwarder:
    """Holds each tap STATE until every record read before it has its outcome, then writes its value.

    A Singer runner (Meltano) stores the last STATE the target writes as the tap's bookmark, so a
    STATE is never written ahead of the records it covers, never twice in a row, and not at all
    once records were left unwritten (a request failed after its retries, a stream stopped): the next
    run then reads those records again.
    """

    def __init__(self, ledger: StateLedger, records_left_unwritten: t.Callable[[], bool]) -> None:
        self._ledger = ledger
        self._records_left_unwritten = records_left_unwritten
        self._pending: collections.deque[tuple[dict[str, int], t.Any]] = collections.deque()
        self._last_written: t.Any = _NOTHING
        self._held_back = False
        self._lock = threading.Lock()

    def received(self, value: t.Any) -> None:
        """A STATE from the tap: remember how far each stream had been read when it came."""
        with self._lock:
            self._pending.append((self._ledger.positions(), value))
        self.forward_ready()

    def forward_ready(self) -> None:
        """Write, in order, every held STATE whose records all have their outcome."""
        with self._lock:
            while self._pending and self._ledger.decided_through(self._pending[0][0]):
                if self._records_left_unwritten():
                    if not self._held_back:
                        logger.warning(
                            "Records were left unwritten (a request failed after its retries, or a stream's "
                            "endpoint is missing): the tap's STATE is not advanced past it, so the next "
                            "run reads those records again"
                        )
                        self._held_back = True
                    return
                _, value = self._pending.popleft()
                if value != self._last_written:
                    # The bare value, as Singer runners read a target's state.
                    sys.stdout.write(jsonio.encode_text(value) + "\n")
                    sys.stdout.flush()
                    self._last_written = value
