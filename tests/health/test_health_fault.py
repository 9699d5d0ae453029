"""`vmoverlay-lab fault` against hand-built nodes (no agent): refusals and exact restores.

Two test namespaces stand in for lab nodes n1 (the hand-built node "a", VTEP 198.18.0.1,
entries toward 198.18.0.2 and 198.18.0.3) and n2 (just a VXLAN device with VTEP 198.18.0.2).

Scenarios:
- an fdb fault toward the node itself is refused, nothing is recorded or changed, and
  `fault clear` afterwards adds no entry (it used to add a self entry on clear);
- an fdb fault toward a peer whose entry is already gone is refused (its removal would add
  an entry that was never there);
- an fdb fault toward n2 deletes exactly that entry and its removal restores exactly it: the
  FDB afterwards equals the FDB before;
- an MTU outside the link's range (50, 70000) is refused up front naming the allowed range;
  an MTU equal to the current one (nothing to undo) too; the link is untouched;
- a VNI outside 24 bits, or equal to the current one, is refused; the device is untouched;
- options that do not fit the kind (--peer on drop-vxlan, --mtu on vni, no --peer on fdb)
  are refused by `fault add` with exit 2 and the reason, no traceback;
- drop-vxlan adds its table and its removal deletes it; an unrecorded table of that name
  (its removal would delete it) is refused and left as it was;
- stop-agent refuses an agent already stopped by someone else (its removal would continue
  it): the state comes from /proc/<pid>/stat;
- a netlink error reads "failed to <verb> <object>: <cause> (errno N); <what to do>";
- pure: check_arguments, mtu_problem, vni_problem.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from e2e.lab import fault
from e2e.lab.check import LabInfo
from e2e.netns import RunNamespaces
from tests.health.handbuilt import B, HandBuiltNode
from vxlan_manager.desired import FdbEntry
from vxlan_manager.netlink import Kernel


@pytest.fixture
def lab(netns: RunNamespaces, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabInfo]:
    a = HandBuiltNode(netns)
    a.build()
    b = netns.add("hc-b")
    netns.check(b, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])
    netns.check(b, ["ip", "addr", "add", f"{B}/24", "dev", "eth0"])
    netns.check(
        b, ["ip", "link", "add", "vmo-vx0", "type", "vxlan", "id", "4242", "dstport", "4789",
            "local", B, "nolearning"],
    )  # fmt: skip
    info = LabInfo(run_id=netns.run_id, kubeconfig="", nodes={"n1": a.ns, "n2": b})
    # The lab CLI finds this stand-in lab by its run id.
    monkeypatch.setattr(fault, "find_lab", lambda run: info)
    try:
        yield info
    finally:
        fault._faults_path(info).unlink(missing_ok=True)


def fdb(lab: LabInfo, node: str = "n1") -> set[FdbEntry]:
    with IPRoute(netns=lab.nodes[node]) as ipr:
        kernel = Kernel(ipr)
        return kernel.fdb_entries(ipr.link_lookup(ifname="vmo-vx0")[0])


def mtu(lab: LabInfo, ifname: str = "eth0") -> int:
    with IPRoute(netns=lab.nodes["n1"]) as ipr:
        return int(ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0].get_attr("IFLA_MTU"))


def test_fdb_toward_itself_is_refused_and_clear_adds_nothing(
    lab: LabInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    before = fdb(lab)
    assert fault.main(["add", "fdb", "--node", "n1", "--peer", "n1"]) == 2
    err = capsys.readouterr().err
    assert "is the node itself" in err and "Traceback" not in err
    assert fault.active(lab) == []
    assert fault.main(["clear"]) == 0
    assert fdb(lab) == before


def test_fdb_toward_a_peer_without_entry_is_refused(lab: LabInfo, netns: RunNamespaces) -> None:
    netns.check(
        lab.nodes["n1"], ["bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "vmo-vx0", "dst", B]
    )
    before = fdb(lab)
    with pytest.raises(fault.FaultError, match="no all-zero FDB entry toward n2"):
        fault.inject(lab, "fdb", "n1", peer="n2")
    assert fault.active(lab) == []
    fault.clear(lab)
    assert fdb(lab) == before  # nothing "restored" that was not there


def test_fdb_fault_restores_exactly_what_it_deleted(lab: LabInfo) -> None:
    before = fdb(lab)
    injected = fault.inject(lab, "fdb", "n1", peer="n2")
    assert before - fdb(lab) == {FdbEntry("00:00:00:00:00:00", B)}
    assert injected.undo == {"mac": "00:00:00:00:00:00", "vtep": B}
    fault.remove(lab, "fdb", "n1", peer="n2")
    assert fdb(lab) == before
    assert fault.active(lab) == []


@pytest.mark.parametrize("value", [50, 67, 70000, -1])
def test_mtu_out_of_range_is_refused_up_front(
    lab: LabInfo, value: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fault.main(["add", "mtu", "--node", "n1", "--mtu", str(value)]) == 2
    err = capsys.readouterr().err
    assert f"--mtu {value} is outside the link's allowed range 68..65535" in err
    assert "Invalid argument" not in err
    assert mtu(lab) == 1500 and fault.active(lab) == []


def test_mtu_fault_that_changes_nothing_is_refused(lab: LabInfo) -> None:
    with pytest.raises(fault.FaultError, match="MTU already"):
        fault.inject(lab, "mtu", "n1", mtu=1500)
    fault.inject(lab, "mtu", "n1", mtu=1400)
    assert mtu(lab) == 1400
    fault.remove(lab, "mtu", "n1")
    assert mtu(lab) == 1500


@pytest.mark.parametrize(("value", "why"), [(2**24, "outside"), (-1, "outside"), (4242, "already")])
def test_bad_vni_is_refused(lab: LabInfo, value: int, why: str) -> None:
    with pytest.raises(fault.FaultError, match=why):
        fault.inject(lab, "vni", "n1", vni=value)
    with IPRoute(netns=lab.nodes["n1"]) as ipr:
        link = Kernel(ipr).link("vmo-vx0")
    assert link is not None and link.vxlan is not None and link.vxlan.vni == 4242


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["add", "drop-vxlan", "--node", "n1", "--peer", "n2"], "--peer is only for the fdb"),
        (["add", "vni", "--node", "n1", "--mtu", "1400"], "--mtu is only for the mtu"),
        (["add", "mtu", "--node", "n1", "--vni", "7"], "--vni is only for the vni"),
        (["add", "fdb", "--node", "n1"], "needs --peer"),
        (["add", "fdb", "--node", "n1", "--peer", "n9"], "no node n9"),
        (["remove", "mtu", "--node", "n1"], "no mtu fault recorded on n1"),
    ],
)
def test_mismatched_options_are_refused(
    lab: LabInfo, argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (fdb(lab), mtu(lab))
    assert fault.main(argv) == 2
    err = capsys.readouterr().err
    assert reason in err and "Traceback" not in err
    assert (fdb(lab), mtu(lab)) == before


def nft_tables(netns: RunNamespaces, ns: str) -> str:
    return netns.check(ns, ["nft", "list", "tables"])


def test_drop_vxlan_removes_only_its_own_table(lab: LabInfo, netns: RunNamespaces) -> None:
    ns = lab.nodes["n1"]
    fault.inject(lab, "drop-vxlan", "n1")
    assert "vmo_fault" in nft_tables(netns, ns)
    fault.remove(lab, "drop-vxlan", "n1")
    assert "vmo_fault" not in nft_tables(netns, ns)

    netns.check(ns, ["nft", "add table inet vmo_fault; add chain inet vmo_fault mine"])
    with pytest.raises(fault.FaultError, match="no fault records it"):
        fault.inject(lab, "drop-vxlan", "n1")
    assert fault.active(lab) == []
    listed = netns.check(ns, ["nft", "list", "table", "inet", "vmo_fault"])
    assert "chain mine" in listed and "drop" not in listed


def test_process_state_from_stat() -> None:
    assert fault.parse_stat_state("42 (vxlan (manager)) T 1 42 0") == "T"
    assert fault.parse_stat_state("7 (python3) S 1 7") == "S"
    assert fault.process_state(2**22 + 12345) is None  # no such pid


def test_netlink_failure_says_what_failed_and_what_to_do() -> None:
    exc = NetlinkError(errno.EINVAL)
    text = str(fault.netlink_failure("set", "the MTU of eth0", exc, "check the range"))
    assert text == "failed to set the MTU of eth0: Invalid argument (errno 22); check the range"


def test_pure_refusals() -> None:
    fault.check_arguments("fdb", "n1", peer="n2")
    fault.check_arguments("mtu", "n1", mtu=1400)
    with pytest.raises(fault.FaultError, match="itself"):
        fault.check_arguments("fdb", "n1", peer="n1")
    with pytest.raises(fault.FaultError, match="unknown fault"):
        fault.check_arguments("unplug", "n1")
    assert fault.mtu_problem(1400, current=1500, low=68, high=65535) is None
    assert "68..9000" in (fault.mtu_problem(50, current=1500, low=68, high=9000) or "")
    assert fault.vni_problem(4243, current=4242) is None
    assert "24 bits" in (fault.vni_problem(2**24, current=4242) or "")
