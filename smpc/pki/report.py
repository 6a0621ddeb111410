"""What one run of :func:`smpc.pki.provision.init_keys` did, as the operator reads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["Action", "InitReport", "ReportEntry", "plural"]


Action = Literal["created", "reissued", "kept"]


@dataclass(frozen=True)
class ReportEntry:
    """One key or certificate and what :func:`init_keys` did with it."""

    action: Action
    path: Path  # relative to the output directory
    reason: str = ""


@dataclass
class InitReport:
    """What :func:`init_keys` created, reissued and kept, for the operator to read."""

    out_dir: Path
    entries: list[ReportEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)  # group dir -> label
    summary: str = ""

    def _paths(self, action: Action) -> list[Path]:
        return [e.path for e in self.entries if e.action == action]

    @property
    def created(self) -> list[Path]:
        return self._paths("created")

    @property
    def reissued(self) -> list[Path]:
        return self._paths("reissued")

    @property
    def kept(self) -> list[Path]:
        return self._paths("kept")

    def lines(self) -> list[str]:
        """One line per CA directory and kit, then notes and what to do next."""
        by_group: dict[str, list[ReportEntry]] = {}
        for entry in self.entries:
            by_group.setdefault(_group_of(entry.path), []).append(entry)
        out: list[str] = []
        for group, entries in by_group.items():
            parts = []
            for action in ("created", "reissued", "kept"):
                items = [
                    str(e.path.relative_to(group)) + (f" ({e.reason})" if e.reason else "")
                    for e in entries
                    if e.action == action
                ]
                if items:
                    parts.append(f"{action} {', '.join(items)}")
            label = self.groups.get(group, "")
            out.append(
                f"{self.out_dir / group}{f' ({label})' if label else ''}: {'; '.join(parts)}"
            )
        if self.summary:
            out.append(self.summary)
        out.extend(f"note: {note}" for note in self.notes)
        out.append(
            f"next: give each participant only its own {self.out_dir / 'kits'}/<name>/ "
            f"directory; keep {self.out_dir / 'ca'}/ offline"
        )
        return out


def plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def _group_of(path: Path) -> str:
    parts = path.parts
    return str(Path(*parts[:2])) if parts[0] == "kits" and len(parts) > 2 else parts[0]
