"""HotGlue's incremental state file: kept current while running, read on start to resume a job."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
import typing as t
from pathlib import Path

from target_cbx1 import jsonio

if t.TYPE_CHECKING:
    from target_cbx1.ledger import StateLedger

HOTGLUE_HOME = Path("/home/hotglue")
FILE_NAME = "incremental_target_state.json"
JOURNAL_SUFFIX = ".journal"
JOURNAL_INTERVAL_SECONDS = 1.0  # a crash loses at most the outcomes of this last stretch
MIN_SNAPSHOT_BYTES = 64 * 1024  # the file is not rewritten mid-run before the journal reaches this
JOURNAL_GROWTH = 4  # the file is rewritten when the journal has grown to this many times its size
JOURNAL_FIELDS = ("hash", "success", "id", "externalId", "lookupKey")
PROBE_BYTES = 64 * 1024  # written once at start, to find a full disk before the run needs it

logger = logging.getLogger("target-cbx1.incremental")


def state_file_path(setting: str | None) -> Path | None:
    """incremental_state_path, else HotGlue's file when JOB_ID is set and its folder exists, else None."""
    if setting:
        return Path(setting)
    job_id = os.environ.get("JOB_ID")
    if job_id and (HOTGLUE_HOME / job_id).is_dir():
        return HOTGLUE_HOME / job_id / FILE_NAME
    return None


class IncrementalStateFile:
    """The state of a job on disk, replaced atomically so that a reader never sees half of it.

    While a run goes on (`start`), outcomes are appended to a journal beside the file once a second,
    from a thread of its own; the file itself is rewritten only when the journal has grown to
    JOURNAL_GROWTH times its size, and at the end. So a run writes about three times the final
    state, not the state every few seconds, and a crash loses at most the last second of outcomes.
    `load` reads the file and its journal (a torn last line is ignored).

    A journal line is `[stream, hash, success, id, externalId, lookupKey]`, with a seventh item, an
    object of the entry's other keys (error, hgBatchId, mapped_record), when it has any: the keys'
    names are not repeated on every line. Lines `[stream, bookmark]`, the journal's first form, are
    read too.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal_path = path.with_name(path.name + JOURNAL_SUFFIX)
        self.bytes_written = 0
        self._snapshot_bytes = 0
        self._journal_bytes = 0
        self._warned = False
        self._lock = threading.Lock()
        self._ledger: StateLedger | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> dict[str, t.Any] | None:
        """The state an earlier run of the job left (its file and journal), or None (none, or one that
        cannot be used). In the journal, a later entry for a record replaces the earlier one.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            logger.warning("Cannot read the incremental state %s (%s); starting afresh", self.path, exc)
            return None
        try:
            state = jsonio.decode(text) if text.strip() else {"bookmarks": {}}
        except jsonio.DecodeError as exc:
            logger.warning("The incremental state %s is not valid JSON (%s); starting afresh", self.path, exc)
            return None
        if not isinstance(state, dict) or not isinstance(state.get("bookmarks"), dict):
            logger.warning("The incremental state %s has no bookmarks; starting afresh", self.path)
            return None
        journal = list(self._journal_lines())
        if not text.strip() and not journal:
            return None
        return {"bookmarks": merged(state["bookmarks"], journal)}

    def _journal_lines(self) -> t.Iterator[tuple[str, dict[str, t.Any]]]:
        try:
            lines = self.journal_path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning(
                "Cannot read the incremental journal %s (%s); it is left out", self.journal_path, exc
            )
            return
        for line in lines:
            try:
                stream, bookmark = journal_entry(jsonio.decode(line))
            except (jsonio.DecodeError, ValueError, TypeError):
                return  # a line torn by a crash, the last one: what came before it stands
            if isinstance(stream, str):
                yield stream, bookmark

    def check_writable(self) -> None:
        """Raise OSError now, rather than at the end of the run, when the file cannot be written:
        a probe file beside it is written, flushed to disk and removed.
        """
        if self.path.exists() and not self.path.is_file():
            raise OSError(f"{self.path} is not a regular file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=self.path.parent, prefix=f".{self.path.name}.") as probe:
            probe.write(b" " * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())

    def start(self, ledger: StateLedger) -> None:
        """Keep the file current for the rest of the run: write it now (an earlier run's entries
        included), then journal every outcome, from a thread of its own.
        """
        self._ledger = ledger
        ledger.keep_decisions()
        self.save(ledger, keep_journal=True)
        self._thread = threading.Thread(target=self._keep_current, name="cbx1-journal", daemon=True)
        self._thread.start()

    def _keep_current(self) -> None:
        while not self._stop.wait(JOURNAL_INTERVAL_SECONDS):
            if self._ledger is not None:
                self.flush(self._ledger)

    def flush(self, ledger: StateLedger) -> None:
        """Append the outcomes decided since the last flush to the journal; rewrite the file instead
        once the journal has grown to twice its size.
        """
        with self._lock:
            if self._stop.is_set():  # saved for good: the journal is done with
                return
            lines = [journal_line(stream, entry.as_bookmark()) for stream, entry in ledger.decided_since()]
            if not lines:
                return
            data = b"\n".join(lines) + b"\n"
            try:
                with self.journal_path.open("ab") as journal:
                    journal.write(data)
            except OSError as exc:
                self._warn(exc)
                return
            self.bytes_written += len(data)
            self._journal_bytes += len(data)
            if self._journal_bytes >= JOURNAL_GROWTH * max(self._snapshot_bytes, MIN_SNAPSHOT_BYTES):
                self._snapshot(ledger)

    def save(self, ledger: StateLedger, *, keep_journal: bool = False) -> None:
        """Write the whole state atomically (at the end, on a stop); the journal is then done with."""
        with self._lock:
            self._snapshot(ledger)
            if not keep_journal:
                self._stop.set()
                self.journal_path.unlink(missing_ok=True)

    def _snapshot(self, ledger: StateLedger) -> None:
        """Rewrite the file from the state, then start the journal afresh (decisions still queued go
        into the new journal; a record found in both is read once).
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            written = write_atomically(self.path, ledger.write)
            self.journal_path.write_bytes(b"")
        except OSError as exc:
            self._warn(exc)
            return
        self.bytes_written += written
        self._snapshot_bytes, self._journal_bytes = written, 0

    def _warn(self, exc: OSError) -> None:
        if not self._warned:
            logger.warning("Cannot write the incremental state %s (%s); the run goes on", self.path, exc)
            self._warned = True


def journal_line(stream: str, bookmark: dict[str, t.Any]) -> bytes:
    """A decided entry as one journal line (see IncrementalStateFile)."""
    line = [stream, *(bookmark.pop(name) for name in JOURNAL_FIELDS)]
    return jsonio.encode([*line, bookmark] if bookmark else line)


def journal_entry(line: t.Any) -> tuple[str, dict[str, t.Any]]:
    """(stream, bookmark) of a journal line; ValueError for a line that is neither form."""
    if isinstance(line, list) and len(line) == 2 and isinstance(line[1], dict):
        return line[0], line[1]  # the first form
    if not isinstance(line, list) or len(line) not in (6, 7):
        raise ValueError("not a journal line")
    rest = line[6] if len(line) == 7 else {}
    if not isinstance(rest, dict):
        raise ValueError("not a journal line")
    return line[0], {**dict(zip(JOURNAL_FIELDS, line[1:6], strict=True)), **rest}


def merged(
    bookmarks: t.Mapping[str, t.Any], journal: t.Iterable[tuple[str, dict[str, t.Any]]]
) -> dict[str, list]:
    """The file's entries with the journal's after them, one per record (hash): a later entry
    replaces an earlier one at the earlier one's place.
    """
    by_stream: dict[str, dict[str, t.Any]] = {}
    for stream, entries in bookmarks.items():
        kept = by_stream.setdefault(stream, {})
        for bookmark in entries if isinstance(entries, list) else []:
            if isinstance(bookmark, dict) and "hash" in bookmark:
                kept[str(bookmark["hash"])] = bookmark
    for stream, bookmark in journal:
        if "hash" in bookmark:
            by_stream.setdefault(stream, {})[str(bookmark["hash"])] = bookmark
    return {stream: list(kept.values()) for stream, kept in by_stream.items()}


def write_atomically(path: Path, write: t.Callable[[t.IO[str]], object]) -> int:
    """Write a file beside `path`, then rename it into place: a reader never sees half of it.
    Returns the bytes written.

    A symlink stays a symlink (the file it points to is replaced), an existing file keeps its
    permissions, and a new one is readable by its owner only (it may hold outcomes or a token).
    """
    path = path.resolve() if path.is_symlink() else path
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as temp:
        try:
            write(temp)
            temp.flush()  # here, not at close: a full disk must not leave the temporary file behind
            if path.exists():
                os.chmod(temp.name, stat.S_IMODE(path.stat().st_mode))
        except BaseException:
            temp.close()
            Path(temp.name).unlink(missing_ok=True)
            raise
    try:
        os.replace(temp.name, path)
    except OSError:
        Path(temp.name).unlink(missing_ok=True)
        raise
    return path.stat().st_size
