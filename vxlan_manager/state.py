"""What the agent owns on this node, remembered across restarts.

The state file (``/run/vmoverlay/agent-<node>.json`` by default) lists the FDB
and neighbour entries the agent created. A restarted agent reads it before it
touches anything, so it removes entries it made for a VM that left while it
was down, and never removes an entry someone else made. ``/run`` is a tmpfs:
after a reboot the file is gone, and so are the devices and their entries.

The file is written atomically (write to a temporary file, then rename), so a
``kill -9`` at any moment leaves either the old or the new version.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vxlan_manager.desired import FdbEntry, NeighEntry

VERSION = 1


class StateError(RuntimeError):
    pass


@dataclass
class OwnedState:
    device: str = ""
    bridge: str = ""
    fdb: set[FdbEntry] = field(default_factory=set)
    neighbours: set[NeighEntry] = field(default_factory=set)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "device": self.device,
                "bridge": self.bridge,
                "fdb": sorted([e.mac, e.dst] for e in self.fdb),
                "neighbours": sorted([n.ip, n.mac] for n in self.neighbours),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> OwnedState:
        try:
            data = json.loads(text)
            return cls(
                device=str(data.get("device") or ""),
                bridge=str(data.get("bridge") or ""),
                fdb={FdbEntry(str(m), str(d)) for m, d in data.get("fdb") or ()},
                neighbours={NeighEntry(str(i), str(m)) for i, m in data.get("neighbours") or ()},
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise StateError(f"state file is malformed: {exc}") from exc


def load(path: Path) -> OwnedState | None:
    """The saved state, or None when there is none (first start, or after a reboot)."""
    try:
        return OwnedState.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"failed to read state file {path}: {exc.strerror}") from exc


def save(path: Path, state: OwnedState) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as out:
            out.write(state.to_json())
        os.replace(tmp, path)
    except OSError as exc:
        raise StateError(f"failed to write state file {path}: {exc.strerror}") from exc
