"""HotGlue's incremental state file: kept current while running, read on start to resume a job."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
import time
import typing as t
from pathlib import Path

from target_cbx1 import jsonio

if t.TYPE_CHECKING:
    from target_cbx1.ledger import StateLedger

HOTGLUE_HOME = Path("/home/hotglue")
FILE_NAME = "incremental_target_state.json"
SAVE_INTERVAL_SECONDS = 2.0
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
    """The state of a running job on disk, replaced atomically so that a reader never sees half of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved_at = time.monotonic()
        self._warned = False
        self._lock = threading.Lock()

    def load(self) -> dict[str, t.Any] | None:
        """The state an earlier run of the job left, or None (no file, or one that cannot be used)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("Cannot read the incremental state %s (%s); starting afresh", self.path, exc)
            return None
        try:
            state = jsonio.decode(text) if text.strip() else None
        except jsonio.DecodeError as exc:
            logger.warning("The incremental state %s is not valid JSON (%s); starting afresh", self.path, exc)
            return None
        if not isinstance(state, dict) or not isinstance(state.get("bookmarks"), dict):
            if state is not None:
                logger.warning("The incremental state %s has no bookmarks; starting afresh", self.path)
            return None
        return state

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

    def save_if_due(self, ledger: StateLedger) -> None:
        """Save when the last save is more than SAVE_INTERVAL_SECONDS old."""
        if time.monotonic() - self._saved_at >= SAVE_INTERVAL_SECONDS:
            self.save(ledger)

    def save(self, ledger: StateLedger) -> None:
        """Write the state atomically (one save at a time)."""
        with self._lock:
            self._save(ledger)

    def _save(self, ledger: StateLedger) -> None:
        self._saved_at = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, ledger.write)
        except OSError as exc:
            if not self._warned:
                logger.warning("Cannot write the incremental state %s (%s); the run goes on", self.path, exc)
                self._warned = True


def write_atomically(path: Path, write: t.Callable[[t.IO[str]], object]) -> None:
    """Write a file beside `path`, then rename it into place: a reader never sees half of it.

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
