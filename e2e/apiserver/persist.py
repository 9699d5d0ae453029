"""SQLite write-through persistence for ``--data-dir``.

One table holds the current objects (resource key, namespace, name, JSON body),
one row holds the global resourceVersion. Every write commits before the
server answers, in WAL mode with ``synchronous=NORMAL``: a killed server
process never loses an acknowledged write (a power cut could lose the last
few, which the lab does not need to survive).

The event history is not persisted: after a restart, watches from a
resourceVersion older than the restart get 410 Gone and re-list, which is what
clients do after a real API server's compaction.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    resource TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (resource, namespace, name)
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SqlitePersistence:
    def __init__(self, data_dir: str | Path) -> None:
        path = Path(data_dir)
        # Only the data dir itself, never its parents (see server.check_data_dir).
        path.mkdir(exist_ok=True)
        self.path = path / "objects.sqlite3"
        self.db = sqlite3.connect(str(self.path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def load(self) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
        row = self.db.execute("SELECT value FROM state WHERE key = 'rv'").fetchone()
        rv = int(row[0]) if row else 0
        rows = [
            (str(resource), json.loads(body))
            for resource, body in self.db.execute("SELECT resource, body FROM objects")
        ]
        return rv, rows

    def save(self, key: str, namespace: str, name: str, obj: dict[str, Any], rv: int) -> None:
        body = json.dumps(obj, separators=(",", ":"))
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT OR REPLACE INTO objects (resource, namespace, name, body) "
                "VALUES (?, ?, ?, ?)",
                (key, namespace, name, body),
            )
            self._set_rv(rv)

    def delete(self, key: str, namespace: str, name: str, rv: int) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "DELETE FROM objects WHERE resource = ? AND namespace = ? AND name = ?",
                (key, namespace, name),
            )
            self._set_rv(rv)

    def _set_rv(self, rv: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('rv', ?)", (rv,))

    def close(self) -> None:
        self.db.close()
