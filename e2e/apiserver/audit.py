"""An audit record of every API request served: who (User-Agent), verb, resource, answer.

Components identify themselves by User-Agent (``client.user_agent`` of the
official client), so the RBAC test can check that each component only uses
the verbs and resources its ClusterRole grants. The log is a bounded ring;
``GET /_lab/audit`` returns it filtered (see :mod:`e2e.apiserver.admin`).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AuditRecord:
    time: float
    userAgent: str  # the JSON field name, as in Kubernetes audit events
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int


class AuditLog:
    def __init__(self, size: int = 200_000) -> None:
        self.records: deque[AuditRecord] = deque(maxlen=size)

    def record(
        self,
        *,
        user_agent: str,
        verb: str,
        group: str,
        resource: str,
        subresource: str = "",
        namespace: str = "",
        name: str = "",
        code: int = 200,
    ) -> None:
        self.records.append(
            AuditRecord(
                time.time(), user_agent, verb, group, resource, subresource, namespace, name, code
            )
        )

    def query(
        self,
        *,
        user_agent: str | None = None,
        verb: str | None = None,
        resource: str | None = None,
    ) -> list[dict[str, Any]]:
        """Records whose User-Agent contains ``user_agent`` and whose verb/resource match."""
        return [
            asdict(r)
            for r in self.records
            if (not user_agent or user_agent in r.userAgent)
            and (not verb or r.verb == verb)
            and (not resource or r.resource == resource)
        ]

    def clear(self) -> None:
        self.records.clear()
