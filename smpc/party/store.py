"""A computing party's durable state: jobs, shares and rejections.

Layout under the party's store directory::

    store.sqlite                 jobs, shares (metadata), rejections; WAL, synchronous=FULL
    shares/<job>/<input>/<site>.share   the decrypted envelope body: this party's
                                 share (a 32-byte seed or the array's limbs)

Durability is the point: a party acknowledges a share only after
:meth:`PartyStore.put_share` returned, and that method writes the body to a
temporary file, fsyncs it, renames it into place, fsyncs the directory and only
then commits the metadata row. A crash at any point leaves either no row (the
site re-publishes what was not acknowledged) or a row whose file is complete; the
daemon removes what a crash left without a row (a temporary file, a renamed file
whose row was never committed) when it starts (:meth:`PartyStore.recover`). A
write that fails (a full disk) removes its file again and stores nothing. A
restart therefore recovers every acknowledged share and every job, and the files
under ``shares/`` are exactly those of the rows.

Re-delivery is normal under MQTT QoS 1: the same (job, input, site) with the
same digest is a duplicate, stored once and acknowledged again; with another
digest it is a conflict and changes nothing. A site's upload for a job is one set
with one upload id: a share of another upload of the same (job, site) is a conflict
too, so a party never holds a mix of two sharings.

A job is recorded once with its signer; its closing message is recorded once; what
the party published for it (its signed status and result messages) is kept in
``releases``, so a re-delivered close is answered with the same bytes and never
computed again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from smpc.errors import UserError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id        TEXT PRIMARY KEY,
    message   BLOB NOT NULL,      -- the first accepted signed job message, as received
    received  REAL NOT NULL,
    status    TEXT NOT NULL DEFAULT 'open',  -- open, computing, done, failed
    analyst   TEXT NOT NULL DEFAULT '',      -- who signed it: the only one who may close it
    closed    BLOB                -- the signed message that closed it (set once)
);
CREATE TABLE IF NOT EXISTS releases (
    job       TEXT NOT NULL,
    position  INTEGER NOT NULL,   -- 0: the signed status; then the result messages in order
    output    TEXT NOT NULL,
    body      BLOB NOT NULL,      -- exactly the bytes published (re-sent on a re-delivered close)
    PRIMARY KEY (job, position)
);
CREATE TABLE IF NOT EXISTS shares (
    job          TEXT NOT NULL,
    input        TEXT NOT NULL,
    site         TEXT NOT NULL,
    digest       TEXT NOT NULL,   -- SHA-256 of the body, from the signed header
    envelope_id  TEXT NOT NULL,
    seed         INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    header       TEXT NOT NULL,   -- the envelope header as JSON
    stored       REAL NOT NULL,
    upload       TEXT NOT NULL DEFAULT '',  -- the site's upload id: one set per (job, site)
    PRIMARY KEY (job, input, site)
);
CREATE TABLE IF NOT EXISTS rejections (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           REAL NOT NULL,
    job          TEXT,
    input        TEXT,
    site         TEXT,
    reason       TEXT NOT NULL
);
"""


class ShareConflict(UserError):
    """A share for this (job, input, site) is stored already, with another digest."""


@dataclass(frozen=True)
class StoredShare:
    job: str
    input: str
    site: str
    digest: str
    envelope_id: str
    seed: bool
    size: int
    header: str
    stored: float
    path: Path
    upload: str = ""


@dataclass(frozen=True)
class StoredJob:
    id: str
    message: bytes
    received: float
    status: str
    analyst: str = ""
    closed: bytes | None = None


@dataclass(frozen=True)
class Release:
    """What a party published when it finished a job: its status and result messages."""

    status: bytes
    results: tuple[tuple[str, bytes], ...]


_JOB_COLUMNS = "id, message, received, status, analyst, closed"
_MIGRATIONS = (  # columns added since the first store layout
    "ALTER TABLE jobs ADD COLUMN analyst TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN closed BLOB",
    "ALTER TABLE shares ADD COLUMN upload TEXT NOT NULL DEFAULT ''",
)


def _stored_job(row: tuple) -> StoredJob:
    closed = None if row[5] is None else bytes(row[5])
    return StoredJob(row[0], bytes(row[1]), row[2], row[3], row[4], closed)


class PartyStore:
    """SQLite metadata plus one fsynced file per share (see module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "shares").mkdir(parents=True, exist_ok=True)
        # One connection, used by one thread at a time (the daemon hands each message
        # to a worker thread and awaits it before taking the next).
        self._db = sqlite3.connect(
            self.root / "store.sqlite", isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for migration in _MIGRATIONS:  # a store written by an earlier version
            with contextlib.suppress(sqlite3.OperationalError):
                self._db.execute(migration)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PartyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs -----------------------------------------------------------------------------
    def put_job(self, job_id: str, message: bytes, analyst: str = "") -> bool:
        """Record a job once, with its signer; True if it is new."""
        with self._transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO jobs (id, message, received, analyst) VALUES (?, ?, ?, ?)",
                (job_id, message, time.time(), analyst),
            )
        return cur.rowcount == 1

    def job(self, job_id: str) -> StoredJob | None:
        row = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return _stored_job(row) if row else None

    def jobs(self) -> list[StoredJob]:
        rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY received")
        return [_stored_job(r) for r in rows]

    def close_job(self, job_id: str, message: bytes) -> bool:
        """Record the message that closes a job, once; True if this call recorded it."""
        with self._transaction():
            cur = self._db.execute(
                "UPDATE jobs SET closed = ?, status = 'computing' WHERE id = ? AND closed IS NULL",
                (message, job_id),
            )
        return cur.rowcount == 1

    def set_job_status(self, job_id: str, status: str) -> None:
        with self._transaction():
            self._db.execute("UPDATE jobs SET status = ? WHERE id = ?", (status, job_id))

    def release(
        self, job_id: str, state: str, status: bytes, results: tuple[tuple[str, bytes], ...] = ()
    ) -> None:
        """Record what is published for a finished job (``state``: done or failed), once."""
        with self._transaction():
            if self._db.execute("SELECT 1 FROM releases WHERE job = ?", (job_id,)).fetchone():
                return
            rows = [(job_id, 0, "", status)]
            rows += [(job_id, i, name, body) for i, (name, body) in enumerate(results, 1)]
            self._db.executemany(
                "INSERT INTO releases (job, position, output, body) VALUES (?, ?, ?, ?)", rows
            )
            self._db.execute("UPDATE jobs SET status = ? WHERE id = ?", (state, job_id))

    def released(self, job_id: str) -> Release | None:
        """What was published for a finished job, byte for byte (None: not finished)."""
        rows = self._db.execute(
            "SELECT output, body FROM releases WHERE job = ? ORDER BY position", (job_id,)
        ).fetchall()
        if not rows:
            return None
        return Release(bytes(rows[0][1]), tuple((r[0], bytes(r[1])) for r in rows[1:]))

    # -- shares ---------------------------------------------------------------------------
    def share_path(self, job: str, input: str, site: str) -> Path:
        return self.root / "shares" / job / input / f"{site}.share"

    def put_share(
        self,
        *,
        job: str,
        input: str,
        site: str,
        digest: str,
        envelope_id: str,
        seed: bool,
        header: str,
        body: bytes | bytearray | memoryview,
        upload: str = "",
    ) -> Literal["stored", "duplicate"]:
        """Store a verified share durably; idempotent for the same digest.

        Every share of one (job, site) must carry the same upload id: the first one
        stored decides, another is a :class:`ShareConflict`.
        """
        other = self._db.execute(
            "SELECT upload FROM shares WHERE job = ? AND site = ? AND upload != ? LIMIT 1",
            (job, site, upload),
        ).fetchone()
        if other is not None:
            raise ShareConflict(
                f"job {job}: site {site!r} already uploaded set {other[0] or '(none)'}; "
                f"refusing a share of another upload ({upload or '(none)'}): the parties "
                "never mix two sharings (re-send the first upload's envelopes)"
            )
        existing = self._db.execute(
            "SELECT digest FROM shares WHERE job = ? AND input = ? AND site = ?",
            (job, input, site),
        ).fetchone()
        if existing is not None:
            if existing[0] == digest:
                return "duplicate"
            raise ShareConflict(
                f"job {job}: input {input!r} from site {site!r} is already stored with digest "
                f"{existing[0][:16]}…, refusing another ({digest[:16]}…)"
            )
        path = self.share_path(job, input, site)
        write_durably(path, body)
        try:
            self._insert_share(job, input, site, digest, envelope_id, seed, header, body, upload)
        except BaseException:
            path.unlink(missing_ok=True)  # no row refers to it: not stored, not acknowledged
            raise
        return "stored"

    def _insert_share(
        self,
        job: str,
        input: str,
        site: str,
        digest: str,
        envelope_id: str,
        seed: bool,
        header: str,
        body: bytes | bytearray | memoryview,
        upload: str,
    ) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO shares (job, input, site, digest, envelope_id, seed, size, header,"
                " stored, upload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job,
                    input,
                    site,
                    digest,
                    envelope_id,
                    int(seed),
                    len(body),
                    header,
                    time.time(),
                    upload,
                ),
            )

    def recover(self) -> list[Path]:
        """Remove what a crash left under ``shares/`` (the daemon calls it once at start,
        before it stores anything): temporary files of an interrupted write and share
        files no row refers to (renamed into place, then killed before the commit).
        Neither was acknowledged, so the site re-sends it. Returns the removed paths."""
        known = {s.path for s in self.shares()}
        removed = []
        for path in sorted((self.root / "shares").rglob("*")):
            if path.is_file() and path not in known:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def share(self, job: str, input: str, site: str) -> StoredShare | None:
        """The stored share of one (job, input, site), if any."""
        return next((s for s in self.shares(job) if (s.input, s.site) == (input, site)), None)

    def shares(self, job: str | None = None) -> list[StoredShare]:
        query = (
            "SELECT job, input, site, digest, envelope_id, seed, size, header, stored, upload"
            " FROM shares"
        )
        rows = (
            self._db.execute(query + " WHERE job = ? ORDER BY input, site", (job,))
            if job is not None
            else self._db.execute(query + " ORDER BY job, input, site")
        )
        return [
            StoredShare(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                bool(r[5]),
                r[6],
                r[7],
                r[8],
                path=self.share_path(r[0], r[1], r[2]),
                upload=r[9],
            )
            for r in rows
        ]

    def read_share(self, share: StoredShare) -> bytes:
        body = share.path.read_bytes()
        if len(body) != share.size:
            raise UserError(
                f"stored share {share.path} has {len(body)} bytes, expected {share.size}"
            )
        return body

    # -- rejections -----------------------------------------------------------------------
    def reject(self, reason: str, *, job: str | None, input: str | None, site: str | None) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO rejections (at, job, input, site, reason) VALUES (?, ?, ?, ?, ?)",
                (time.time(), job, input, site, reason),
            )

    def rejections(self) -> list[dict[str, object]]:
        rows = self._db.execute("SELECT at, job, input, site, reason FROM rejections ORDER BY id")
        return [dict(zip(("at", "job", "input", "site", "reason"), r, strict=True)) for r in rows]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def write_durably(path: Path, body: bytes | bytearray | memoryview) -> None:
    """Temporary file, fsync, atomic rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:  # e.g. ENOSPC: leave no partial file taking the space
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
