"""The list-then-watch cache, driven by a scripted list function (no API server).

Scenarios:
- the first list reports every object as ADDED and fills the cache;
- a relist reports objects that vanished as DELETED with their last state, changed
  ones as MODIFIED, unchanged ones not at all;
- an object deleted and created again under the same name while the watch was down
  (another UID) is reported as DELETED (old UID) and ADDED (new UID), so the VM's
  release is not lost.
"""

from __future__ import annotations

from typing import Any

from ipam.informer import Informer
from vmoverlay.logs import get_logger


def vm(name: str, uid: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "db", "name": name, "uid": uid, "resourceVersion": rv}}


class Script:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def __call__(self, **_: Any) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": "99"}, "items": list(self.items)}


def test_relist_reports_differences_by_uid() -> None:
    script = Script()
    seen: list[tuple[str, str | None, str | None]] = []

    def handler(kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        uid = lambda o: o["metadata"]["uid"] if o else None  # noqa: E731
        seen.append((kind, uid(old), uid(new)))

    informer = Informer(resource="vms", list_fn=script, handler=handler, log=get_logger("t"))
    script.items = [vm("a", "ua", "1"), vm("b", "ub", "2"), vm("c", "uc", "3")]
    assert informer._relist() == "99"
    assert seen == [("ADDED", None, "ua"), ("ADDED", None, "ub"), ("ADDED", None, "uc")]

    seen.clear()
    script.items = [vm("a", "ua", "1"), vm("b", "ub", "5"), vm("c", "uc2", "6")]
    informer._relist()
    assert sorted(seen) == [
        ("ADDED", None, "uc2"),
        ("DELETED", "uc", None),
        ("MODIFIED", "ub", "ub"),
    ]
    assert informer.get("db/c") == vm("c", "uc2", "6")

    seen.clear()
    script.items = []
    informer._relist()
    assert sorted(seen) == [
        ("DELETED", "ua", None),
        ("DELETED", "ub", None),
        ("DELETED", "uc2", None),
    ]
    assert informer.items() == []
