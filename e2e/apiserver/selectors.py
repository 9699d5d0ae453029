"""Label and field selectors: parsing and matching, pure functions.

Label selectors follow the server's grammar: ``a=b``, ``a==b``, ``a!=b``,
``a in (x,y)``, ``a notin (x)``, ``a`` (exists) and ``!a`` (absent), joined by
commas. Field selectors are ``path=value``, ``path==value`` or ``path!=value``
joined by commas, where the path is a dotted field path such as
``metadata.name`` or ``spec.nodeName``.

A parse error raises :class:`SelectorError`, which the handlers answer with
400 BadRequest as the real server does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    """A selector that does not parse."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return present and value in self.values
        if self.op == "!=":
            return not present or value not in self.values
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        return not present


_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse a label selector; an empty or missing one selects everything."""
    if not text:
        return []
    reqs = []
    for part in _split_top(text):
        eq = _EQ_RE.match(part)
        if eq:
            op = "!=" if eq.group(2) == "!=" else "="
            reqs.append(Requirement(eq.group(1), op, frozenset([eq.group(3)])))
            continue
        st = _SET_RE.match(part)
        if not st:
            raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
        neg, key, op, values = st.groups()
        if op:
            if neg:
                raise SelectorError(f"unable to parse requirement: {part.strip()!r}")
            vals = frozenset(v.strip() for v in values.split(",") if v.strip())
            reqs.append(Requirement(key, op, vals))
        else:
            reqs.append(Requirement(key, "!" if neg else "exists"))
    return reqs


def labels_match(reqs: list[Requirement], obj: Mapping[str, Any]) -> bool:
    if not reqs:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    negate: bool
    value: str


def parse_field_selector(
    text: str | None, allowed: Callable[[str], bool] | None = None
) -> list[FieldRequirement]:
    """Parse a field selector; ``allowed(path)`` refuses paths the resource does not index."""
    if not text:
        return []
    reqs = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = re.match(r"^\s*([A-Za-z0-9._]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise SelectorError(f"invalid selector: {part.strip()!r}; can't understand it")
        path, op, value = m.groups()
        if allowed is not None and not allowed(path):
            raise SelectorError(f'field label not supported: "{path}"')
        reqs.append(FieldRequirement(path, op == "!=", value))
    return reqs


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a field as the server compares it (missing: empty string)."""
    cur: Any = obj
    for key in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(key)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def fields_match(reqs: list[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    for req in reqs:
        equal = field_value(obj, req.path) == req.value
        if equal == req.negate:
            return False
    return True
