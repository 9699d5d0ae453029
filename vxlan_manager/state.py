"""What the agent owns on this node, remembered across restarts.

The state file (``/run/vmoverlay/agent-<node>-<netns inode>.json`` by default) records the
FDB and neighbour entries the agent created. A restarted agent reads it before
it touches anything, so it removes entries it made for a VM that left while it
was down, and never removes an entry someone else made. ``/run`` is a tmpfs:
after a reboot the file is gone, and so are the devices and their entries.

Format: one JSON object per line. The first line is a full snapshot
(``{"version": 1, "device": ..., "bridge": ..., "fdb": [[mac, dst]...],
"neighbours": [[ip, mac]...]}``); later lines are changes appended as they
happen (``{"add_fdb": [...], "del_fdb": [...], "add_neigh": [...],
"del_neigh": [...]}``), so a change costs one small append instead of
rewriting thousands of entries. :meth:`OwnershipFile.compact` rewrites the
snapshot atomically (temporary file + rename) at full resyncs. An entry is
recorded *before* it is created and forgotten *after* it is removed, so a
``kill -9`` at any moment never leaves an entry we made but do not know we
own; a torn last line is ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vxlan_manager.desired import FdbEntry, NeighEntry

VERSION = 1
COMPACT_AFTER = 1000  # appended lines before the next full resync compacts the file


class StateError(RuntimeError):
    pass


@dataclass
class OwnedState:
    device: str = ""
    bridge: str = ""
    fdb: set[FdbEntry] = field(default_factory=set)
    neighbours: set[NeighEntry] = field(default_factory=set)

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "device": self.device,
            "bridge": self.bridge,
            "fdb": sorted([e.mac, e.dst] for e in self.fdb),
            "neighbours": sorted([n.ip, n.mac] for n in self.neighbours),
        }

    def apply(self, record: dict[str, Any]) -> None:
        if "version" in record:
            self.device = str(record.get("device") or "")
            self.bridge = str(record.get("bridge") or "")
            self.fdb = {FdbEntry(str(m), str(d)) for m, d in record.get("fdb") or ()}
            self.neighbours = {
                NeighEntry(str(i), str(m)) for i, m in record.get("neighbours") or ()
            }
            return
        self.fdb |= {FdbEntry(str(m), str(d)) for m, d in record.get("add_fdb") or ()}
        self.fdb -= {FdbEntry(str(m), str(d)) for m, d in record.get("del_fdb") or ()}
        self.neighbours |= {NeighEntry(str(i), str(m)) for i, m in record.get("add_neigh") or ()}
        self.neighbours -= {NeighEntry(str(i), str(m)) for i, m in record.get("del_neigh") or ()}


class OwnershipFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.appended = 0

    def load(self) -> OwnedState:
        """The recorded state; empty when there is none (first start, or after a reboot)."""
        state = OwnedState()
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return state
        except OSError as exc:
            raise StateError(f"failed to read state file {self.path}: {exc.strerror}") from exc
        for n, line in enumerate(lines):
            try:
                record = json.loads(line)
                state.apply(record)
            except (ValueError, TypeError, AttributeError) as exc:
                if n == len(lines) - 1:
                    break  # torn last append from a kill -9: the change it describes never happened
                raise StateError(
                    f"state file {self.path} line {n + 1} is malformed: {exc}; "
                    "remove the file to start afresh (entries the agent made may then stay)"
                ) from exc
        self.appended = max(0, len(lines) - 1)
        return state

    def append(
        self,
        *,
        add_fdb: Iterable[FdbEntry] = (),
        del_fdb: Iterable[FdbEntry] = (),
        add_neigh: Iterable[NeighEntry] = (),
        del_neigh: Iterable[NeighEntry] = (),
    ) -> None:
        record = {
            key: [list(e) for e in entries]
            for key, entries in (
                ("add_fdb", add_fdb),
                ("del_fdb", del_fdb),
                ("add_neigh", add_neigh),
                ("del_neigh", del_neigh),
            )
            if entries
        }
        if not record:
            return
        try:
            with self.path.open("a") as out:
                out.write(json.dumps(record, separators=(",", ":")) + "\n")
        except OSError as exc:
            raise StateError(f"failed to write state file {self.path}: {exc.strerror}") from exc
        self.appended += 1

    def compact(self, state: OwnedState, *, force: bool = False) -> None:
        if not force and self.appended < COMPACT_AFTER and self.path.exists():
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            try:
                with os.fdopen(fd, "w") as out:
                    out.write(json.dumps(state.snapshot(), separators=(",", ":")) + "\n")
                os.replace(tmp, self.path)
            except OSError:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise StateError(f"failed to write state file {self.path}: {exc.strerror}") from exc
        self.appended = 0
