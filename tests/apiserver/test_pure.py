"""Pure parts of the lab API server: selectors, patches, schema validation, the store.

Scenarios:
- label selectors: equality, inequality, set-based, existence; parse errors;
- field selectors: equality and inequality on dotted paths; refused paths;
- JSON patch: add/remove/replace/move/copy/test, "-" append, escaped pointers, errors;
- merge patch: null deletes, maps merge, lists replace;
- strategic merge: conditions merge by type, finalizers merge as a set,
  $deleteFromPrimitiveList, $patch: delete on a list item and on a map, $retainKeys;
- schema: type, required, enum, pattern, minimum/maximum, minLength, nested arrays;
  pruning of unknown fields and defaulting; integers outside int64 (and floats
  beyond 2^53) are not of type integer nor int-or-string, nor a metadata integer;
- settings: port, history and bookmark interval ranges (NaN and infinity refused),
  a data dir that is a file or whose parent is missing; a store refuses a
  history under 1; a closing store ends new watches at once;
- names: RFC 1123 subdomain and label checks;
- rules: what an update keeps (main resource vs /status), which types track
  generation and what counts as a spec change, delete answers, preconditions,
  continue tokens;
- store: resourceVersion per write, event history floor after compaction and overflow,
  owner index follows ownerReferences.
"""

from __future__ import annotations

from typing import Any

import pytest

from e2e.apiserver import patch, rules, selectors, server, validation
from e2e.apiserver.errors import ApiError
from e2e.apiserver.resources import Registry
from e2e.apiserver.store import Store


def obj(labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "x", "namespace": "ns", "labels": labels or {}}, **extra}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a!=b", {"a": "b"}, False),
        ("a in (b, c)", {"a": "c"}, True),
        ("a notin (b,c)", {"a": "c"}, False),
        ("a notin (b,c)", {}, True),
        ("a", {"a": ""}, True),
        ("!a", {"a": "x"}, False),
        ("a=b,c in (d)", {"a": "b", "c": "d"}, True),
        ("vmoverlay.io/pool=default", {"vmoverlay.io/pool": "default"}, True),
        ("", {}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert selectors.labels_match(selectors.parse_label_selector(selector), obj(labels)) is expected


@pytest.mark.parametrize("bad", ["a in (b", "a b", "!a in (b)", "=b"])
def test_label_selector_errors(bad: str) -> None:
    with pytest.raises(selectors.SelectorError):
        selectors.parse_label_selector(bad)


def test_field_selectors() -> None:
    pod = obj(spec={"nodeName": "n1", "hostNetwork": True})
    parse = selectors.parse_field_selector
    assert selectors.fields_match(parse("spec.nodeName=n1,metadata.namespace=ns"), pod)
    assert not selectors.fields_match(parse("spec.nodeName!=n1"), pod)
    assert selectors.fields_match(parse("spec.hostNetwork=true"), pod)
    assert selectors.fields_match(parse("spec.missing="), pod)
    with pytest.raises(selectors.SelectorError, match="not supported"):
        parse("spec.x=1", allowed=lambda p: p.startswith("metadata."))
    with pytest.raises(selectors.SelectorError):
        parse("nonsense")


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "c/d": 1, "e~f": 2}
    ops = [
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "remove", "path": "/c~1d"},
        {"op": "replace", "path": "/e~0f", "value": 5},
        {"op": "copy", "from": "/a/b", "path": "/copy"},
        {"op": "move", "from": "/copy", "path": "/moved"},
        {"op": "test", "path": "/moved/3", "value": 3},
    ]
    assert patch.json_patch(doc, ops) == {"a": {"b": [0, 1, 2, 3]}, "e~f": 5, "moved": [0, 1, 2, 3]}
    assert doc == {"a": {"b": [1, 2]}, "c/d": 1, "e~f": 2}


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "remove", "path": "/nope"}],
        [{"op": "replace", "path": "/nope", "value": 1}],
        [{"op": "add", "path": "/a/b/9", "value": 1}],
        [{"op": "jump", "path": "/a"}],
        [{"op": "add", "path": "a"}],
        {"op": "add"},
    ],
)
def test_json_patch_errors(ops: Any) -> None:
    with pytest.raises(patch.PatchError):
        patch.json_patch({"a": {"b": []}}, ops)


def test_json_patch_failed_test_is_marked() -> None:
    with pytest.raises(patch.PatchError) as err:
        patch.json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])
    assert err.value.test_failed


def test_merge_patch() -> None:
    doc = {"a": {"b": 1, "c": 2}, "l": [1, 2], "d": 1}
    assert patch.merge_patch(doc, {"a": {"b": None, "x": 3}, "l": [3], "d": None}) == {
        "a": {"c": 2, "x": 3},
        "l": [3],
    }


def test_strategic_merge_conditions_and_finalizers() -> None:
    node = {
        "metadata": {"name": "n", "finalizers": ["a"], "labels": {"x": "1"}},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "DiskPressure", "status": "False"},
            ]
        },
    }
    out = patch.strategic_merge(
        node,
        {
            "metadata": {"finalizers": ["b", "a"], "labels": {"y": "2", "x": None}},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "VxlanReady", "status": "True"},
                ]
            },
        },
    )
    assert out["metadata"]["finalizers"] == ["a", "b"]
    assert out["metadata"]["labels"] == {"y": "2"}
    assert out["status"]["conditions"] == [
        {"type": "Ready", "status": "True"},
        {"type": "DiskPressure", "status": "False"},
        {"type": "VxlanReady", "status": "True"},
    ]


def test_strategic_merge_directives() -> None:
    doc = {
        "metadata": {"finalizers": ["a", "b"]},
        "spec": {"containers": [{"name": "c1", "image": "i"}, {"name": "c2"}], "m": {"k": 1}},
        "status": {"conditions": [{"type": "A", "status": "True"}]},
    }
    out = patch.strategic_merge(
        doc,
        {
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
            "spec": {
                "containers": [{"name": "c2", "$patch": "delete"}, {"name": "c1", "image": "j"}],
                "m": {"$patch": "delete"},
                "$setElementOrder/containers": [{"name": "c1"}],
            },
            "status": {"$retainKeys": []},
        },
    )
    assert out["metadata"]["finalizers"] == ["b"]
    assert out["spec"] == {"containers": [{"name": "c1", "image": "j"}]}
    assert out["status"] == {}
    with pytest.raises(patch.PatchError, match="merge key"):
        patch.strategic_merge(doc, {"status": {"conditions": [{"status": "x"}]}})


def test_strategic_merge_replaces_unkeyed_lists() -> None:
    doc = {"spec": {"taints": [{"key": "a"}]}}
    assert patch.strategic_merge(doc, {"spec": {"taints": [{"key": "b"}]}}) == {
        "spec": {"taints": [{"key": "b"}]}
    }


SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["cidr"],
            "properties": {
                "cidr": {"type": "string", "pattern": "^[0-9./]+$"},
                "vni": {"type": "integer", "minimum": 1, "maximum": 10},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "pool": {"type": "string", "minLength": 1},
                "list": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"n": {"type": "integer"}}},
                },
                "any": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    },
}


def causes(value: dict[str, Any]) -> list[str]:
    return [message for _, _, message in validation.validate_schema(SCHEMA, value)]


def test_schema_validation_messages() -> None:
    assert causes({"spec": {"cidr": "10.0.0.0/8"}}) == []
    assert causes({}) == ["spec: Required value"]
    assert causes({"spec": {}}) == ["spec.cidr: Required value"]
    assert causes({"spec": {"cidr": "x"}}) == [
        "spec.cidr: Invalid value: \"x\": spec.cidr in body should match '^[0-9./]+$'"
    ]
    (msg,) = causes({"spec": {"cidr": "1", "vni": 11}})
    assert msg == "spec.vni: Invalid value: 11: spec.vni in body should be less than or equal to 10"
    (msg,) = causes({"spec": {"cidr": "1", "vni": 0}})
    assert "greater than or equal to 1" in msg
    (msg,) = causes({"spec": {"cidr": "1", "vni": True}})
    assert msg == (
        'spec.vni: Invalid value: "boolean": spec.vni in body must be of type integer: "boolean"'
    )
    (msg,) = causes({"spec": {"cidr": "1", "mode": "c"}})
    assert msg == 'spec.mode: Unsupported value: "c": supported values: "a", "b"'
    (msg,) = causes({"spec": {"cidr": "1", "pool": ""}})
    assert "at least 1 chars long" in msg
    (msg,) = causes({"spec": {"cidr": "1", "list": [{"n": "x"}]}})
    assert msg.startswith("spec.list[0].n: Invalid value")
    (msg,) = causes({"spec": {"cidr": "1", "labels": {"a": 1}}})
    assert msg.startswith('spec.labels.a: Invalid value: "integer"')


def test_prune_and_default() -> None:
    value = {
        "apiVersion": "v",
        "kind": "K",
        "metadata": {"name": "x", "anything": 1},
        "spec": {
            "cidr": "1",
            "unknown": 1,
            "any": {"free": {"form": 1}},
            "list": [{"n": 1, "m": 2}],
        },
        "junk": True,
    }
    validation.prune_and_default(SCHEMA, value)
    assert value == {
        "apiVersion": "v",
        "kind": "K",
        "metadata": {"name": "x", "anything": 1},
        "spec": {"cidr": "1", "any": {"free": {"form": 1}}, "list": [{"n": 1}], "mode": "a"},
    }


@pytest.mark.parametrize(
    ("name", "label", "ok"),
    [
        ("node-1", False, True),
        ("default-198-19-0-7", False, True),
        ("a.b.c", False, True),
        ("a.b", True, False),
        ("Upper", False, False),
        ("-x", False, False),
        ("x" * 254, False, False),
        ("x" * 64, True, False),
    ],
)
def test_names(name: str, label: bool, ok: bool) -> None:
    assert (validation.validate_name(name, label=label) == []) is ok


def put(store: Store, name: str, **meta: Any) -> dict[str, Any]:
    return store.put("g/things", {"metadata": {"name": name, **meta}})


def test_store_versions_history_and_index() -> None:
    store = Store(history=3)
    a = put(store, "a", uid="ua")
    b = put(store, "b", uid="ub", ownerReferences=[{"uid": "ua"}])
    assert (a["metadata"]["resourceVersion"], b["metadata"]["resourceVersion"]) == ("1", "2")
    assert store.dependents_of("ua") == [("g/things", "", "b")]
    put(store, "b", uid="ub")
    assert store.dependents_of("ua") == []
    assert store.can_replay(0)
    put(store, "c")
    assert not store.can_replay(0) and store.can_replay(1)
    gone = store.remove("g/things", "", "a")
    assert gone is not None and gone["metadata"]["resourceVersion"] == "5"
    assert store.locate("ua") is None
    assert [e.type for e in store.events_after("g/things", 3)] == ["ADDED", "DELETED"]
    store.compact()
    assert not store.can_replay(4) and store.can_replay(5)


def test_update_rules() -> None:
    registry = Registry()
    pods = registry.lookup("", "v1", "pods")
    cms = registry.lookup("", "v1", "configmaps")
    assert pods is not None and cms is not None
    old = {
        "metadata": {
            "name": "p",
            "namespace": "d",
            "uid": "u",
            "resourceVersion": "5",
            "generation": 1,
        },
        "spec": {"a": 1},
        "status": {"phase": "Running"},
    }
    new = {
        "metadata": {"name": "p", "uid": "forged", "labels": {"x": "y"}},
        "spec": {"a": 2},
        "status": {"phase": "Failed"},
    }
    main = rules.merge_for_update(pods, old, new, None)
    assert main["status"] == {"phase": "Running"} and main["spec"] == {"a": 2}
    assert main["metadata"]["uid"] == "u" and main["metadata"]["labels"] == {"x": "y"}
    assert main["metadata"]["namespace"] == "d" and main["metadata"]["resourceVersion"] == "5"
    status = rules.merge_for_update(pods, old, new, "status")
    assert status["spec"] == {"a": 1} and status["status"] == {"phase": "Failed"}
    assert status["metadata"] == old["metadata"]
    assert not rules.tracks_generation(pods) and not rules.tracks_generation(cms)
    assert rules.spec_part(pods, old) == {"spec": {"a": 1}}


def test_delete_answer_and_preconditions() -> None:
    registry = Registry()
    pods, cms = registry.lookup("", "v1", "pods"), registry.lookup("", "v1", "configmaps")
    assert pods is not None and cms is not None
    obj = {"metadata": {"name": "x", "uid": "u", "resourceVersion": "3"}}
    assert rules.delete_answer(pods, obj) is obj
    answer = rules.delete_answer(cms, obj)
    assert answer["status"] == "Success" and answer["details"] == {
        "name": "x",
        "kind": "configmaps",
        "uid": "u",
    }
    rules.check_preconditions(cms, obj, {"uid": "u", "resourceVersion": "3"})
    for pre in ({"uid": "v"}, {"resourceVersion": "2"}):
        with pytest.raises(ApiError) as err:
            rules.check_preconditions(cms, obj, pre)
        assert err.value.code == 409 and "Precondition failed" in err.value.message


def test_continue_tokens() -> None:
    token = rules.encode_continue(42, "ns/name")
    assert rules.decode_continue(token) == "ns/name"
    with pytest.raises(ApiError) as err:
        rules.decode_continue("not-a-token")
    assert err.value.code == 400


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (2**63 - 1, True),
        (-(2**63), True),
        (2**63, False),
        (2**64 - 129, False),
        (-(2**63) - 1, False),
        (4.0, True),
        (2.0**60, False),
    ],
)
def test_integer_type_is_int64(value: float, ok: bool) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    causes = validation.validate_schema(schema, {"n": value})
    assert (causes == []) is ok
    if not ok:
        assert causes[0][0] == "n" and 'Invalid value: "number"' in causes[0][2]
    ios = {"type": "object", "properties": {"n": {"x-kubernetes-int-or-string": True}}}
    if isinstance(value, int):
        assert (validation.validate_schema(ios, {"n": value}) == []) is ok


def test_metadata_integer_beyond_int64_is_a_decode_error() -> None:
    problem = validation.decode_problem({"metadata": {"generation": 2**64}}, builtin=True)
    assert problem is not None and "metadata.generation" in problem and "int64" in problem
    assert validation.decode_problem({"metadata": {"generation": 2**63 - 1}}, builtin=True) is None


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (server.check_port, [0, 1, 65535], [-1, 65536, 70000]),
        (server.check_history, [1, 10000, server.MAX_HISTORY], [0, -5, server.MAX_HISTORY + 1]),
        (
            server.check_bookmark_interval,
            [0.001, 5.0, 3600.0],
            [0.0, -1.0, float("nan"), float("inf"), 3600.5],
        ),
    ],
)
def test_setting_ranges(check: Any, good: list[float], bad: list[float]) -> None:
    for value in good:
        assert check(value) == value
    for value in bad:
        with pytest.raises(server.BadSetting, match="out of range"):
            check(value)


def test_data_dir_checks(tmp_path: Any) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(server.DataDirError, match="is not a directory"):
        server.check_data_dir(file)
    with pytest.raises(server.DataDirError, match="parent"):
        server.check_data_dir(tmp_path / "a" / "b")
    assert server.check_data_dir(tmp_path / "a") == tmp_path / "a"
    assert not (tmp_path / "a").exists()
    with pytest.raises(server.DataDirError, match="does not exist"):
        server.check_output_file("kubeconfig", tmp_path / "a" / "kc")


def test_store_history_and_closing() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Store(history=0)
    store = Store(history=1)
    open_sub = store.subscribe("v1/configmaps")
    assert store.shut_down_watches() == 1
    assert open_sub.queue.get_nowait() is None
    late = store.subscribe("v1/configmaps")
    assert late.queue.get_nowait() is None
