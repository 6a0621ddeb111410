"""A site's sealed envelopes kept on disk until every party acknowledged them, so a re-run
re-sends the same sharing."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from smpc.party.store import write_durably
from smpc.wire.messages import Job


def default_keep_dir(site: str) -> Path:
    """Where ``smpc upload`` keeps a site's sealed envelopes: ``$XDG_STATE_HOME/smpc``."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "smpc" / site / "uploads"


class KeptUpload:
    """A site's sealed envelopes of one job, on disk until every party acknowledged them.

    A re-run of the same upload (after a broker restart, a crash, a timeout) re-sends
    these very envelopes instead of sharing again, so every party ends up with the same
    sharing. Layout: ``DIR/<job>-<digest>/upload.json`` (the upload id and the file of
    each envelope) and one file per envelope, ``complete`` once all were stored; the
    digest of the signed job's content keeps another job of the same id apart.
    """

    def __init__(self, root: Path, job: Job) -> None:
        content = json.dumps(job.unclosed().model_dump(mode="json"), sort_keys=True).encode()
        self.dir = Path(root) / f"{job.id}-{hashlib.sha256(content).hexdigest()[:16]}"

    @property
    def complete(self) -> bool:
        return (self.dir / "complete").exists()

    def load(self) -> tuple[str, dict[tuple[str, int], bytes]] | None:
        """The kept upload id and envelopes, or None when there are none."""
        index = self.dir / "upload.json"
        if not index.exists():
            return None
        doc = json.loads(index.read_text())
        envelopes = {}
        for key, file in doc["envelopes"].items():
            name, _, party = key.rpartition("@")
            envelopes[(name, int(party))] = (self.dir / file).read_bytes()
        return doc["upload"], envelopes

    def save(self, upload_id: str, envelopes: Mapping[tuple[str, int], bytes]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for (name, party), envelope in envelopes.items():
            files[f"{name}@{party}"] = file = f"{name}.{party}.envelope"
            write_durably(self.dir / file, envelope)
        doc = {"upload": upload_id, "envelopes": files}
        write_durably(self.dir / "upload.json", json.dumps(doc).encode())

    def finish(self) -> None:
        """Every party stored every envelope: keep only the marker."""
        write_durably(self.dir / "complete", b"")
        for file in self.dir.glob("*.envelope"):
            file.unlink()
