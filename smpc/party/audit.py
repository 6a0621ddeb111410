"""A party's audit trail: an append-only, hash-chained log of what it accepted and released.

One canonical JSON object per line in ``<store>/audit.jsonl``::

    {"event": ..., <fields>, "hash": H_k, "prev": H_(k-1), "seq": k, "time": ...}

``hash`` is the SHA-256 of the entry's canonical JSON without ``hash``, and ``prev`` the
hash of the entry before (64 zeros for the first), so editing an entry breaks its own
hash, and removing or reordering entries breaks ``seq`` and ``prev``: :func:`verify`
names the first entry that does not fit. A log rewritten consistently from some entry on
is caught by the chain heads the party signed into its results (``Status.audit``), which
the analyst keeps in ``result.json``.

Entries are appended after the store committed what they describe and fsynced before the
party answers, so a crash loses at most the entry of the last step; a line cut short by
a crash (no newline) was never part of the chain and is dropped when the log is opened.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from smpc.errors import UserError

__all__ = ["AUDIT_FILE", "GENESIS", "AuditError", "AuditLog", "entries", "rows", "verify"]

GENESIS = "0" * 64
AUDIT_FILE = "audit.jsonl"
_COLUMNS = ("seq", "time", "event", "job", "hash", "prev")  # the table's own columns


class AuditError(UserError):
    """The audit log does not verify; the message names the first bad entry."""


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def entries(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, entry) of every complete line; AuditError for a line that is not JSON."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                return  # cut short by a crash: never part of the chain
            try:
                entry = json.loads(line)
            except ValueError:
                raise AuditError(f"{path}: line {number} is not a JSON entry") from None
            if not isinstance(entry, dict):
                raise AuditError(f"{path}: line {number} is not a JSON object")
            yield number, entry


def verify(path: Path, signed: Iterable[str] = ()) -> tuple[int, str]:
    """The number of entries and the chain head; AuditError naming the first bad entry, or
    a ``signed`` head (from a result.json) that is not the hash of an entry of the chain."""
    head, count = GENESIS, 0
    hashes = set()
    for number, entry in entries(path):
        where = f"{path}: entry {count} (line {number}, event {entry.get('event')!r})"
        if entry.get("hash") != _entry_hash(entry):
            raise AuditError(f"{where} was altered: its hash does not match its content")
        if entry.get("seq") != count:
            raise AuditError(
                f"{where} has seq {entry.get('seq')!r}, expected {count}: "
                "an entry before it was removed or the entries were reordered"
            )
        if entry.get("prev") != head:
            raise AuditError(
                f"{where} does not follow entry {count - 1} (prev hash differs): one of the two "
                "was altered and its hash recomputed"
            )
        head, count = entry["hash"], count + 1
        hashes.add(head)
    for signed_head in signed:
        if signed_head not in hashes:
            raise AuditError(
                f"{path}: the chain head {signed_head[:12]}… this party signed into a result "
                "is not in its log: the log was rewritten after it was signed"
            )
    return count, head


def rows(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The entries as table rows (``smpc audit show``): seq, time, event, job, details."""
    table = []
    for _, entry in entries(path):
        details = {
            k: v
            for k, v in entry.items()
            if k not in ("seq", "time", "event", "job", "hash", "prev")
        }
        table.append(
            {
                "seq": entry.get("seq"),
                "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.get("time", 0))),
                "event": entry.get("event"),
                "job": entry.get("job", ""),
                "details": " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(details.items())),
                "hash": str(entry.get("hash", ""))[:12],
            }
        )
    return table[-last:] if last else table


class AuditLog:
    """Appends entries to a party's audit log (see module docstring); thread-safe."""

    def __init__(self, store_root: Path) -> None:
        self.path = Path(store_root) / AUDIT_FILE
        self._lock = threading.Lock()
        self.count, self.head = 0, GENESIS
        last = self._last_line()  # continue the chain as written (verify checks it)
        if last:
            try:
                entry = json.loads(last)
                self.count, self.head = int(entry["seq"]) + 1, str(entry["hash"])
            except (ValueError, KeyError, TypeError):
                raise AuditError(f"{self.path}: its last line is not an audit entry") from None

    def _last_line(self) -> bytes:
        """The last complete line, after dropping a line a crash cut short; reads only the
        file's tail, so a long log costs a restart nothing."""
        if not self.path.exists():
            return b""
        with self.path.open("r+b") as f:
            pos = f.seek(0, os.SEEK_END)
            tail = b""
            while pos > 0 and tail.count(b"\n") < 2:
                step = min(pos, 1 << 16)
                pos -= step
                f.seek(pos)
                tail = f.read(step) + tail
            if tail and not tail.endswith(b"\n"):  # cut short: never part of the chain
                keep = tail.rfind(b"\n") + 1
                f.truncate(pos + keep)
                f.flush()
                os.fsync(f.fileno())
                tail = tail[:keep]
        return tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]

    def append(self, event: str, **fields: Any) -> str:
        """Append one entry (None fields left out), fsynced; return the new chain head."""
        with self._lock:
            entry = {k: v for k, v in fields.items() if v is not None}
            entry.update(event=event, seq=self.count, time=round(time.time(), 3), prev=self.head)
            entry["hash"] = _entry_hash(entry)
            new = not self.path.exists()
            line = _canonical(entry) + b"\n"
            with self.path.open("ab", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                try:
                    if f.write(line) != len(line):
                        raise OSError(errno.ENOSPC, "short write", str(self.path))
                    os.fsync(f.fileno())
                except OSError:  # a full disk: no part of the entry may stay behind
                    os.ftruncate(f.fileno(), size)
                    raise
            if new:  # the file's name must survive a crash too
                fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self.count, self.head = self.count + 1, entry["hash"]
            return self.head
